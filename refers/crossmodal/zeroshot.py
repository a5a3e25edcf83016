"""``refers zeroshot``: class scores for a dataset's test list from a dual encoder and text prompts.

No label is used: each class's positive and negative prompt sets (``configs/prompts/*.yaml``) are
embedded by the report encoder, each test image by the image encoder, and the score is
:func:`refers.eval.zeroshot.paired_prompt_probability`. The outputs are test.py's:
``<results_dir>/<Dataset>/zeroshot/<method>/seed0/`` holds one ``<Class>.txt`` per class
(``label probability`` per test image, in list order), ``summary.json`` / ``summary.txt`` (per-class
AUC, mean AUC and its 95% bootstrap interval), ``roc.png`` and ``run_record.json``, so ``refers
results`` tables zero-shot as the task row ``zeroshot`` beside the label fractions.
"""

from __future__ import annotations

import argparse
import json
import logging
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from refers.base.atomic import atomic_write_text, check_output_dir
from refers.base.digest import sha256_file
from refers.base.earlier_runs import check_recorded_inputs
from refers.base.errors import UserError
from refers.base.paths import check_method, results_dir
from refers.base.synthetic import mark_synthetic
from refers.config.engine import ConfigError
from refers.data.lists import find_split_file
from refers.engine.run_info import git_commit, package_versions
from refers.eval.metrics import bootstrap_ci, mean_auc, per_class_auc
from refers.eval.predictions import write_prediction_files
from refers.eval.tree import ZERO_SHOT_FOLDER as GROUP  # the task folder that stands where test.py writes data<volume>
from refers.eval.zeroshot import paired_prompt_probability, prompt_set_embedding
from refers.finetune.data import locate_images, read_targets, resolve_data
from refers.finetune.testing import (BOOTSTRAP_RESAMPLES, OTHER_INPUTS as TESTED_INPUTS, TestOutcome, clear_for_new_results,
                                     finite, summary_text, write_roc)
from refers.text.prompts import default_prompt_file, prompts_digest, read_prompts

logger = logging.getLogger(__name__)

SEED_FOLDER = "seed0"  # nothing is drawn: one run per model, method and prompt file


@dataclass
class ZeroShotOutcome(TestOutcome):
    """test.py's outcome, and whether the data or the model's training data was synthetic."""

    synthetic: bool = False


def model_digest(path: Path) -> str:
    """What identifies a model in the run record: a folder's config checksum, a checkpoint's sha256."""
    if path.is_dir():
        from refers.engine.dual_encoder_folder import read_config

        return read_config(path)["config_sha256"]
    return sha256_file(path)


def run_zeroshot(model: str, dataset: str, prompts: str | None = None, results: str | None = None, method: str = "REFERS",
                 list_dir: str | None = None, data_root: str | None = None, batch_size: int = 64, device: str | None = None,
                 overwrite: bool = False, progress: bool = True) -> ZeroShotOutcome:
    """Score the test list of ``dataset`` and write the prediction files (see the module docstring).

    Raises:
        UserError: a missing model, an empty or missing list, a missing image, a bad prompt file, a
            ``method`` that is not one folder name, a ``device`` that is not there, earlier results of
            another model, prompt file or test list in the output folder (without ``overwrite``).
    """
    from refers.engine.distributed import resolve_device
    from refers.engine.dual_encoder_folder import load_dual_encoder

    check_method(method)
    run_device = resolve_device(device)
    model_path = Path(model)
    if not model_path.exists():
        raise UserError(f"--model {model}: no such dual-encoder folder or checkpoint")
    setup = resolve_data(argparse.Namespace(dataset=dataset, list_dir=list_dir, data_root=data_root, classes=None,
                                            num_classes=None))
    prompt_file = Path(prompts) if prompts else default_prompt_file(setup.dataset)
    if prompt_file is None:
        raise UserError(f"--dataset {dataset} has no default prompt file; pass --prompts FILE (configs/prompts/ has examples)", 2)
    try:
        class_prompts = read_prompts(prompt_file, setup.classes)
    except (ConfigError, FileNotFoundError) as error:
        raise UserError(str(error), 2) from None
    check_output_dir(results or results_dir(), "--results_dir")
    name = setup.dataset if setup.dataset != "custom" else setup.list_dir.resolve().name
    folder = Path(results or results_dir()) / name / GROUP / method / SEED_FOLDER
    check_output_dir(folder, "results folder")
    digest = model_digest(model_path)
    test_file = find_split_file(setup.list_dir, "test")
    # The prompts as read (the file with every _BASE_ it names merged), not the top file's bytes alone.
    inputs = {"prompts": (prompt_file, prompts_digest(class_prompts)), "test_list": (test_file, sha256_file(test_file))}
    check_recorded_inputs(folder / "run_record.json", {"checkpoint": digest, **{k: sha for k, (_, sha) in inputs.items()}},
                          OTHER_INPUTS, results="zero-shot results",
                          instead="write into another --results_dir or --method", overwrite=overwrite)
    targets = read_targets(setup, test_file)
    files, _ = locate_images(targets, setup.image_roots, skip_missing=False)
    encoder = load_dual_encoder(model_path, device=run_device)
    images = encoder.encode_images(files, batch_size=batch_size, progress=progress)
    probs = np.zeros((len(files), len(class_prompts)), dtype=np.float64)
    for column, prompts_of in enumerate(class_prompts):
        positive = prompt_set_embedding(encoder.encode_reports(prompts_of.positive))
        negative = prompt_set_embedding(encoder.encode_reports(prompts_of.negative))
        probs[:, column] = paired_prompt_probability(images, positive, negative, encoder.temperature).numpy()
    labels = targets.labels
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        aucs = per_class_auc(labels, probs, setup.classes)
    for warning in caught:
        logger.warning("%s", warning.message)
    outcome = ZeroShotOutcome(folder, aucs, mean_auc(aucs), bootstrap_ci(labels, probs, n=BOOTSTRAP_RESAMPLES, seed=0),
                              len(files), setup.synthetic or _trained_on_synthetic(encoder))
    record = {
        "synthetic": outcome.synthetic, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "checkpoint": {"path": str(model_path.resolve()), "sha256": digest},
        **{key: {"path": str(path.resolve()), "sha256": sha} for key, (path, sha) in inputs.items()},
        "git_commit": git_commit(), "packages": package_versions(), "device": str(encoder.device),
    }
    record["test_list"]["scored"] = outcome.n_images
    # The record first: a prediction file is never without the record of the run that wrote it (an
    # interrupted run leaves its own record, so only the same inputs, or --overwrite, write here again).
    if overwrite:
        clear_for_new_results(folder, setup.classes)
    atomic_write_text(folder / "run_record.json", json.dumps(record, indent=2) + "\n")
    write_prediction_files(folder, setup.classes, labels, probs)
    if outcome.synthetic:
        mark_synthetic(folder, "Made from SYNTHETIC data or a model trained on it: these numbers say nothing about real X-rays.\n")
    summary = {
        "synthetic": outcome.synthetic, "dataset": setup.dataset, "data_volume": 0, "method": method, "seed": 0,
        "zero_shot": True, "checkpoint": str(model_path.resolve()), "prompts": str(prompt_file.resolve()),
        "test_list": str(test_file.resolve()), "n_images": outcome.n_images, "test_loss": None,
        "temperature": encoder.temperature, "mean_auc": finite(outcome.mean_auc),
        "mean_auc_ci95": [finite(v) for v in outcome.ci], "bootstrap_resamples": BOOTSTRAP_RESAMPLES,
        "per_class_auc": dict(zip(setup.classes, aucs)),
    }
    atomic_write_text(folder / "summary.json", json.dumps(summary, indent=2) + "\n")
    atomic_write_text(folder / "summary.txt", summary_text(summary))
    write_roc(folder, setup, GROUP, method, 0, labels, probs)
    return outcome


# How a refusal names each input that differs from the earlier results' (see check_recorded_inputs).
OTHER_INPUTS = {**TESTED_INPUTS, "prompts": "other prompts"}


def _trained_on_synthetic(encoder) -> bool:
    provenance = getattr(encoder, "provenance", None) or {}
    return bool(provenance.get("synthetic_data"))

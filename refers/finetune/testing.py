"""``test.py``: score a fine-tuned checkpoint on ``test.txt`` and write the published prediction-file layout.

Writes ``<results_dir>/<Dataset>/data<volume>/<method>/seed<seed>/``:

* ``<Class>.txt``: one ``<label> <probability>`` line per test image, in list order (the original's
  format, read by ``refers results``);
* ``summary.txt`` / ``summary.json``: per-class AUC, mean AUC and its 95% bootstrap interval (a
  ``SYNTHETIC`` stamp, and a ``SYNTHETIC.txt`` marker, when the data is synthetic);
* ``roc.png``: ROC curves per class;
* ``run_record.json``: checkpoint and list sha256, the resolved arguments, git commit, package
  versions, device.

Settings not given on the command line (dataset, model type, image size, data volume, seed) come
from the checkpoint's metadata (:mod:`refers.finetune.model`).
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import numpy as np

from refers.base.atomic import atomic_write_text, check_output_dir
from refers.base.earlier_runs import check_recorded_inputs, clear_earlier_results
from refers.data.lists import find_split_file
from refers.engine.distributed import DistInfo
from refers.base.synthetic import SYNTHETIC_MARKER, mark_synthetic
from refers.engine.run_info import device_description, git_commit, package_versions
from refers.eval.metrics import bootstrap_ci, mean_auc, per_class_auc
from refers.eval.predictions import prediction_filename, write_prediction_files
from refers.finetune.config import FinetuneArgs, to_plain, with_checkpoint
from refers.finetune.data import build_dataset, default_workers, resolve_data
from refers.finetune.evaluate import evaluate
from refers.finetune.model import load_finetuned
from refers.engine.precision import make_precision
from refers.base.paths import check_method, results_dir
from refers.base.digest import sha256_file

logger = logging.getLogger(__name__)

BOOTSTRAP_RESAMPLES = 1000


@dataclass
class TestOutcome:
    folder: Path
    aucs: list[float | None]
    mean_auc: float
    ci: tuple[float, float]
    n_images: int


RESULT_FILES = ("run_record.json", "summary.json", "summary.txt", "roc.png")  # beside one prediction file per class


def clear_for_new_results(folder: Path, classes: Sequence[str]) -> None:
    """``--overwrite`` (testing and zero-shot): remove the earlier results before the new record is
    written: this command's files, and every other ``.txt``, which ``refers results`` would read as a
    prediction file of the new run (e.g. a class of another class list); name the rest, which stays."""
    names = {*RESULT_FILES, *(prediction_filename(c) for c in classes)}
    removed, left = clear_earlier_results(folder, lambda path: path.name in names or path.suffix == ".txt")
    if removed:
        logger.info("--overwrite: removed %d file(s) of the earlier results in %s", len(removed), folder)
    foreign = [p.name for p in removed if p.name not in names and p.name != SYNTHETIC_MARKER]
    if foreign:
        logger.warning("--overwrite: removed %s from %s too: refers results reads every .txt there as a prediction file",
                       ", ".join(foreign), folder)
    if left:
        logger.warning("--overwrite: left alone in %s, not written by this command: %s", folder,
                       ", ".join(p.name for p in left))


# How a refusal names each input that differs from the earlier results' (see check_recorded_inputs).
OTHER_INPUTS = {"checkpoint": "another checkpoint", "test_list": "another test list"}


def run_test(args: FinetuneArgs, info: DistInfo) -> TestOutcome:
    """Evaluate ``args.pretrained_dir`` on the test list; rank 0 writes the outputs."""
    check_output_dir(args.results_dir or results_dir(), "--results_dir")
    check_method(args.method)
    model, settings = load_finetuned(args.pretrained_dir, args.model_type, args.img_size, args.num_classes)
    args = with_checkpoint(args, settings)  # the flags left unset, from the checkpoint's metadata
    setup = resolve_data(args)
    name = setup.dataset if setup.dataset != "custom" else setup.list_dir.resolve().name
    folder = Path(args.results_dir or results_dir()) / name / f"data{args.data_volume}" / args.method / f"seed{args.seed}"
    check_output_dir(folder, "results folder")
    test_file = find_split_file(setup.list_dir, "test")
    inputs = {"checkpoint": sha256_file(args.pretrained_dir), "test_list": sha256_file(test_file)}
    check_recorded_inputs(folder / "run_record.json", inputs, OTHER_INPUTS, results="test results",
                          instead="test into another --results_dir or --method", overwrite=args.overwrite)
    dataset, _ = build_dataset(setup, test_file, args.img_size, False, args.skip_bad_images, args.packed_cache)
    model.to(info.device)
    precision = make_precision(args.fp16, args.bf16, args.loss_scale, info.device, say=info.is_main)
    workers = default_workers(info.world_size) if args.num_workers is None else args.num_workers
    batch = max(1, args.eval_batch_size // info.world_size)
    result = evaluate(model, dataset, batch, info, precision, workers, desc="Testing")
    if len(result.indices) != len(dataset):
        logger.warning("%d unreadable test image(s) skipped: the prediction files have %d lines, the list %d",
                       len(dataset) - len(result.indices), len(result.indices), len(dataset))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        aucs = per_class_auc(result.labels, result.probs, setup.classes)
    for warning in caught:
        logger.warning("%s", warning.message)
    mean = mean_auc(aucs)
    ci = bootstrap_ci(result.labels, result.probs, n=BOOTSTRAP_RESAMPLES, seed=0)
    outcome = TestOutcome(folder, aucs, mean, ci, len(result.indices))
    if info.is_main:
        write_outputs(outcome, args, setup, result, test_file, info, inputs)
    return outcome


def write_outputs(outcome: TestOutcome, args: FinetuneArgs, setup, result, test_file: Path, info: DistInfo,
                  inputs: dict[str, str]) -> None:
    """Run record, prediction files, summary and ROC figure (rank 0); ``inputs``: the sha256 of the
    checkpoint and the test list."""
    folder = outcome.folder
    record = {
        "synthetic": setup.synthetic, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "checkpoint": {"path": str(Path(args.pretrained_dir).resolve()), "sha256": inputs["checkpoint"]},
        "test_list": {"path": str(test_file.resolve()), "sha256": inputs["test_list"], "scored": outcome.n_images},
        "config": to_plain(args), "git_commit": git_commit(), "packages": package_versions(),
        "device": device_description(info.device, info.world_size),
    }
    # The record first: prediction files are never beside the record of other inputs (an interrupted
    # run leaves its own record, so only the same inputs, or --overwrite, write here again).
    if args.overwrite:
        clear_for_new_results(folder, setup.classes)
    atomic_write_text(folder / "run_record.json", json.dumps(record, indent=2) + "\n")
    write_prediction_files(folder, setup.classes, result.labels, result.probs)
    if setup.synthetic:
        mark_synthetic(folder, "Made from SYNTHETIC data: these numbers say nothing about real X-rays.\n")
    summary = {
        "synthetic": setup.synthetic, "dataset": setup.dataset, "data_volume": args.data_volume, "method": args.method,
        "seed": args.seed, "checkpoint": str(Path(args.pretrained_dir).resolve()), "test_list": str(test_file.resolve()),
        "n_images": outcome.n_images, "test_loss": result.loss, "mean_auc": finite(outcome.mean_auc),
        "mean_auc_ci95": [finite(v) for v in outcome.ci], "bootstrap_resamples": BOOTSTRAP_RESAMPLES,
        "per_class_auc": dict(zip(setup.classes, outcome.aucs)),
    }
    atomic_write_text(folder / "summary.json", json.dumps(summary, indent=2) + "\n")
    atomic_write_text(folder / "summary.txt", summary_text(summary))
    write_roc(folder, setup, f"data{args.data_volume}", args.method, args.seed, result.labels, result.probs)
    logger.info("wrote %d prediction files, summary and ROC curves to %s", len(setup.classes), folder)


def finite(value: float) -> float | None:
    """``value``, or None when it is NaN (JSON has no NaN; an AUC is undefined with one label value)."""
    return value if np.isfinite(value) else None


def number(value: float | None) -> str:
    return "undefined" if value is None else f"{value:.4f}"


def summary_text(summary: dict) -> str:
    """The human-readable summary (the original's ``result.txt``, with the interval)."""
    lines = []
    if summary["synthetic"]:
        lines.append("SYNTHETIC DATA: these numbers say nothing about real X-rays.")
    low, high = summary["mean_auc_ci95"]
    volume = "zero-shot (no labels)" if summary.get("zero_shot") else f"{summary['data_volume']}%"
    loss = "" if summary["test_loss"] is None else f"  test loss: {summary['test_loss']:.5f}"
    lines += [
        f"dataset: {summary['dataset']}  data volume: {volume}  method: {summary['method']}  seed: {summary['seed']}",
        f"checkpoint: {summary['checkpoint']}",
        *([f"prompts: {summary['prompts']}"] if summary.get("prompts") else []),
        f"test images: {summary['n_images']}{loss}",
        f"mean AUC: {number(summary['mean_auc'])}  (95% bootstrap CI {number(low)} - {number(high)}, "
        f"{summary['bootstrap_resamples']} resamples)",
        "",
    ]
    width = max(len(c) for c in summary["per_class_auc"])
    for name, auc in summary["per_class_auc"].items():
        lines.append(f"{name:<{width}}  {number(auc)}{' (one label value in the test set)' if auc is None else ''}")
    return "\n".join(lines) + "\n"


def write_roc(folder: Path, setup, group: str, method: str, seed: int, labels: np.ndarray, probs: np.ndarray) -> None:
    """ROC curves through the results tool's figure code (one panel per class); ``group`` is the
    run's fraction or task folder (``data10``, ``zeroshot``)."""
    from refers.data.registry import safe_class_filename
    from refers.eval.figures import roc_figure
    from refers.eval.report import evaluate_run, summarise
    from refers.eval.tree import Run

    classes = {safe_class_filename(c): (labels[:, i].astype(np.float64), probs[:, i].astype(np.float64))
               for i, c in enumerate(setup.classes)}
    run = Run(setup.dataset, group, method, seed, folder, classes, setup.synthetic)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        roc_figure(summarise([evaluate_run(run, bootstrap=0, seed=0)]), folder / "roc.png")

"""``refers retrieval``: image-to-report and report-to-image retrieval on a study index.

Each study of the index (``{split}_studies.jsonl`` of ``refers prepare mimic`` / ``iu``, or any list
the study reader takes) gives one image embedding (its views chosen as pre-training's validation
chooses them) and one report embedding (the report text pre-training paired with it). Reported, in
both directions, each with a 95% bootstrap interval over the queries
(:func:`refers.eval.retrieval.retrieval_report`):

* recall@1/5/10 of the exact partner, and its median rank;
* "same findings" recall@K: a hit when one of the K retrieved has the query's set of positive
  CheXpert findings (many reports are near-duplicates: "No acute cardiopulmonary process.");
* the CheXpert 5x200-style protocol: up to ``per_class`` studies for each of five classes with that
  single positive finding, sampled by ``seed``, where a hit is a retrieved study of the same class.

Writes ``retrieval.json`` and ``retrieval.md`` into ``--out`` (default
``Results_of_fine-tuning/retrieval/<dataset>_<split>/<method>/``), where ``refers results`` finds them.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from refers.base.atomic import atomic_write_text, check_output_dir
from refers.base.digest import sha256_file
from refers.base.earlier_runs import check_recorded_inputs, clear_earlier_results
from refers.base.errors import ListFormatError, UserError
from refers.base.paths import results_dir
from refers.base.synthetic import is_synthetic, mark_synthetic
from refers.data.image_roots import image_roots, read_dataset_yaml
from refers.data.mimic_lists import first_listed_path, read_study_index
from refers.data.registry import CHEXPERT_CLASSES, DATASETS
from refers.engine.run_info import git_commit
from refers.eval.retrieval import (CHEXPERT_5, RESULT_JSON, RESULT_MD, RETRIEVAL_FOLDER, retrieval_markdown,
                                   retrieval_report, sample_per_class)

logger = logging.getLogger(__name__)



@dataclass
class RetrievalOutcome:
    folder: Path
    report: dict[str, Any]


def default_out(studies: Path, method: str, results: str | os.PathLike | None = None) -> Path:
    """``<results>/retrieval/<dataset>_<split>/<method>/`` for a study index."""
    info = read_dataset_yaml(studies.parent) if studies.parent.is_dir() else {}
    dataset = str(info.get("dataset") or studies.parent.name)
    split = studies.name.split("_")[0]
    return Path(results or results_dir()) / RETRIEVAL_FOLDER / f"{dataset}_{split}" / method


def read_studies(path: Path, data_root: str | None):
    """The usable studies of an index (images and report text) and the label column names."""
    info = read_dataset_yaml(path.parent) if path.parent.is_dir() else {}
    dataset = info.get("dataset") if info.get("dataset") in DATASETS else None
    root = image_roots(dataset, path.parent, data_root).root_for(first_listed_path(path), f"the images of {path}")
    try:
        studies = read_study_index(path, root)
    except ListFormatError as error:
        raise UserError(str(error)) from None
    usable = [s for s in studies if s.images and s.text.strip()]
    if len(usable) < len(studies):
        logger.warning("%s: %d of %d studies have no image or no report text; left out", path, len(studies) - len(usable), len(studies))
    if len(usable) < 2:
        raise UserError(f"{path}: {len(usable)} usable studies; retrieval needs at least 2")
    classes = list(info.get("classes") or CHEXPERT_CLASSES)
    return usable, classes


def label_matrix(studies, classes: list[str]) -> tuple[np.ndarray | None, str]:
    """[N, C] CheXpert values (NaN blank), or None and why the same-findings metrics cannot be computed."""
    unlabelled = sum(s.labels is None for s in studies)
    if unlabelled:
        return None, f"{unlabelled} of {len(studies)} studies without CheXpert labels"
    matrix = np.asarray(np.stack([s.labels for s in studies]), dtype=np.float64)
    if matrix.shape[1] != len(classes):
        return None, f"the studies have {matrix.shape[1]} labels each, not the {len(classes)} CheXpert classes"
    return matrix, ""


def finding_sets(labels: np.ndarray, classes: list[str]) -> list[frozenset]:
    """Each study's set of positive findings ("No Finding" and devices aside: they are no finding)."""
    kept = [j for j, c in enumerate(classes) if c not in ("No Finding", "Support Devices")]
    return [frozenset(classes[j] for j in kept if row[j] == 1) for row in labels]


def run_retrieval(model: str, studies: str, out: str | None = None, method: str = "REFERS", data_root: str | None = None,
                  bootstrap: int = 1000, per_class: int = 200, seed: int = 0, batch_size: int = 64,
                  device: str | None = None, overwrite: bool = False, progress: bool = True) -> RetrievalOutcome:
    """Embed the studies and reports of an index and write the retrieval metrics (module docstring).

    Raises:
        UserError: a missing model or index, an unreadable index line, a ``method`` that is not one
            folder name, a ``device`` that is not there, earlier results of another model in ``out``
            (without ``overwrite``).
    """
    from refers.base.paths import check_method
    from refers.crossmodal.zeroshot import model_digest
    from refers.engine.distributed import resolve_device
    from refers.engine.dual_encoder_folder import load_dual_encoder

    check_method(method)
    run_device = resolve_device(device)
    model_path, index = Path(model), Path(studies)
    if not model_path.exists():
        raise UserError(f"--model {model}: no such dual-encoder folder or checkpoint")
    if not index.is_file():
        raise UserError(f"--studies {studies}: no such study index")
    folder = Path(out) if out else default_out(index, method)
    check_output_dir(folder, "--out")
    digest, index_sha = model_digest(model_path), sha256_file(index)
    check_recorded_inputs(folder / RESULT_JSON, {"model": digest, "studies": index_sha},
                          {"model": "another model", "studies": "another study index"}, results="retrieval results",
                          instead="write into another --out", overwrite=overwrite)
    usable, classes = read_studies(index, data_root)
    labels, unlabelled = label_matrix(usable, classes)
    if labels is None:
        logger.warning("%s: %s; the same-findings recalls and the 5x200 sample are not computed", index, unlabelled)
    encoder = load_dual_encoder(model_path, device=run_device)
    images = encoder.encode_studies([s.images for s in usable], [s.views for s in usable], batch_size=batch_size,
                                    progress=progress)
    reports = encoder.encode_reports([s.text for s in usable], progress=progress)
    sets = finding_sets(labels, classes) if labels is not None else None
    result: dict[str, Any] = {
        "synthetic": is_synthetic(index) or bool(getattr(encoder, "provenance", {}).get("synthetic_data")),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": {"path": str(model_path.resolve()), "sha256": digest}, "method": method,
        "studies": {"path": str(index.resolve()), "sha256": index_sha, "used": len(usable)},
        "bootstrap_resamples": bootstrap, "seed": seed, "git_commit": git_commit(),
        "all_studies": retrieval_report(images, reports, sets, bootstrap=bootstrap, seed=seed),
    }
    if labels is None:
        result["all_studies"]["same_findings_skipped"] = unlabelled
        result["chexpert_5x200"] = {"skipped": unlabelled}
    else:
        result["chexpert_5x200"] = _five_by_200(images, reports, labels, classes, per_class, bootstrap, seed)
    write_outputs(folder, result, overwrite)
    return RetrievalOutcome(folder, result)


def _five_by_200(images, reports, labels, classes, per_class: int, bootstrap: int, seed: int) -> dict[str, Any]:
    """The 5x200 protocol's sample and metrics, or the reason it could not be drawn."""
    if any(c not in classes for c in CHEXPERT_5):
        return {"skipped": f"the classes lack {', '.join(c for c in CHEXPERT_5 if c not in classes)}"}
    chosen, names = sample_per_class(labels, classes, CHEXPERT_5, per_class, seed)
    counts = {c: names.count(c) for c in CHEXPERT_5}
    if len(chosen) < 2:
        return {"skipped": f"fewer than 2 studies with a single positive finding among {', '.join(CHEXPERT_5)}", "counts": counts}
    if min(counts.values()) < per_class:
        logger.warning("5x200: fewer than %d studies for some classes (%s); all of them are used", per_class,
                       ", ".join(f"{c} {n}" for c, n in counts.items()))
    rows = torch.as_tensor(chosen, dtype=torch.long)
    metrics = retrieval_report(images[rows], reports[rows], [frozenset([n]) for n in names], bootstrap=bootstrap, seed=seed)
    return {"per_class": per_class, "classes": list(CHEXPERT_5), "counts": counts, "seed": seed, **metrics}


def write_outputs(folder: Path, result: dict[str, Any], overwrite: bool = False) -> None:
    """``retrieval.json`` (the record, first), ``retrieval.md`` and the synthetic marker; ``overwrite``
    removes the earlier ones first."""
    if overwrite:
        clear_earlier_results(folder, lambda path: path.name in (RESULT_JSON, RESULT_MD))
    folder.mkdir(parents=True, exist_ok=True)
    # The record first (it says what made the folder's files: see check_recorded_inputs).
    atomic_write_text(folder / RESULT_JSON, json.dumps(result, indent=2) + "\n")
    atomic_write_text(folder / RESULT_MD, retrieval_markdown(result))
    if result["synthetic"]:
        mark_synthetic(folder, "Made from SYNTHETIC data or a model trained on it: these numbers say nothing about real X-rays.\n")

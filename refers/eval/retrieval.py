"""Image-to-report and report-to-image retrieval recall@K on paired embeddings.

Row ``i`` of the image embeddings and row ``i`` of the report embeddings belong to the same study.
Recall@K in one direction is the fraction of queries whose own partner is among the K most
similar candidates (cosine similarity). Ties count against the query: the partner's rank is the
number of candidates scoring at least as high as it, itself excluded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from refers.base.json_files import read_json


def _partner_ranks(queries: torch.Tensor, candidates: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """0-based rank of each query's partner among all candidates: [N] int64."""
    ranks = []
    for start in range(0, queries.shape[0], chunk):
        sim = queries[start : start + chunk] @ candidates.T  # [n, N]
        rows = torch.arange(sim.shape[0], device=sim.device)
        own = sim[rows, rows + start]
        ranks.append((sim >= own[:, None]).sum(dim=1) - 1)
    return torch.cat(ranks)


def retrieval_recall(
    image_embeddings: torch.Tensor, report_embeddings: torch.Tensor, ks: Sequence[int] = (1, 5, 10)
) -> dict[str, float]:
    """Recall@K in both directions.

    Args:
        image_embeddings: [N, D] one row per study.
        report_embeddings: [N, D] the same studies' reports, same order.
        ks: the K values.

    Returns:
        ``{"image_to_report_R@1": ..., "report_to_image_R@1": ..., ...}`` in [0, 1].
    """
    if image_embeddings.shape != report_embeddings.shape or image_embeddings.ndim != 2:
        raise ValueError(f"embeddings must both be [N, D], got {tuple(image_embeddings.shape)} and {tuple(report_embeddings.shape)}")
    images = F.normalize(image_embeddings.float(), dim=-1)
    reports = F.normalize(report_embeddings.float(), dim=-1)
    out: dict[str, float] = {}
    for direction, ranks in (
        ("image_to_report", _partner_ranks(images, reports)),
        ("report_to_image", _partner_ranks(reports, images)),
    ):
        for k in ks:
            out[f"{direction}_R@{k}"] = (ranks < k).float().mean().item()
    return out


# --- the full protocol: ranks, "same findings" hits, bootstrap intervals, the 5x200 sample ----------

DIRECTIONS = ("image_to_report", "report_to_image")
# The CheXpert competition classes of the 5x200 protocol (CheXpert's own five).
CHEXPERT_5 = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")


def partner_ranks(queries: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """1-based rank of each query's own partner (row i of ``candidates``) among all candidates,
    ties counted against it: [N] int64."""
    return _partner_ranks(F.normalize(queries.float(), dim=-1), F.normalize(candidates.float(), dim=-1)) + 1


def same_label_hits(queries: torch.Tensor, candidates: torch.Tensor, label_ids: Sequence[int], ks: Sequence[int],
                    chunk: int = 1024) -> dict[int, torch.Tensor]:
    """Per query, whether one of its K most similar candidates has the query's label set
    (``label_ids[i]``: an id per distinct set of findings). Its own partner counts, so an exact hit
    is a same-findings hit. Ties among candidates are broken by ``torch.topk``.

    Returns:
        ``{K: bool [N]}``.
    """
    queries, candidates = F.normalize(queries.float(), dim=-1), F.normalize(candidates.float(), dim=-1)
    ids = torch.as_tensor(list(label_ids), dtype=torch.long)
    top = min(max(ks), candidates.shape[0])
    hits: dict[int, list[torch.Tensor]] = {k: [] for k in ks}
    for start in range(0, queries.shape[0], chunk):
        nearest = (queries[start:start + chunk] @ candidates.T).topk(top, dim=1).indices  # [n, top]
        same = ids[nearest] == ids[start:start + nearest.shape[0], None]
        for k in ks:
            hits[k].append(same[:, :k].any(dim=1))
    return {k: torch.cat(v) for k, v in hits.items()}


def bootstrap_interval(values: np.ndarray, statistic, n: int, seed: int, alpha: float = 0.05) -> tuple[float, float]:
    """Percentile interval of ``statistic`` over ``n`` resamples (with replacement) of the queries."""
    rng = np.random.default_rng(seed)
    draws = np.array([statistic(values[rng.integers(0, len(values), len(values))]) for _ in range(n)])
    return float(np.quantile(draws, alpha / 2)), float(np.quantile(draws, 1 - alpha / 2))


def retrieval_report(image_embeddings: torch.Tensor, report_embeddings: torch.Tensor,
                     label_sets: Sequence[frozenset] | None = None, ks: Sequence[int] = (1, 5, 10),
                     bootstrap: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Recall@K (exact report / image), median rank and, with ``label_sets``, same-findings recall@K,
    in both directions, each with a 95% bootstrap interval over the queries.

    Returns:
        ``{"n": N, "chance": {"R@K": K/N}, "image_to_report": {"R@1": {"value", "ci95"}, ...,
        "median_rank": {...}, "same_findings_R@1": {...}}, "report_to_image": {...}}``.
    """
    n = image_embeddings.shape[0]
    if report_embeddings.shape != image_embeddings.shape or n == 0:
        raise ValueError(f"embeddings must both be [N, D] with N > 0, got {tuple(image_embeddings.shape)} and "
                         f"{tuple(report_embeddings.shape)}")
    ids = None
    if label_sets is not None:
        table: dict[frozenset, int] = {}
        ids = [table.setdefault(s, len(table)) for s in label_sets]
    out: dict[str, Any] = {"n": n, "chance": {f"R@{k}": min(1.0, k / n) for k in ks}}
    pairs = {"image_to_report": (image_embeddings, report_embeddings), "report_to_image": (report_embeddings, image_embeddings)}
    for offset, (direction, (queries, candidates)) in enumerate(pairs.items()):
        ranks = partner_ranks(queries, candidates).numpy()
        metrics: dict[str, Any] = {}
        for k in ks:
            hit = (ranks <= k).astype(np.float64)
            metrics[f"R@{k}"] = _with_interval(hit, np.mean, bootstrap, seed + offset)
        metrics["median_rank"] = _with_interval(ranks.astype(np.float64), np.median, bootstrap, seed + offset)
        if ids is not None:
            for k, hit in same_label_hits(queries, candidates, ids, ks).items():
                metrics[f"same_findings_R@{k}"] = _with_interval(hit.numpy().astype(np.float64), np.mean, bootstrap, seed + offset)
        out[direction] = metrics
    return out


def _with_interval(values: np.ndarray, statistic, bootstrap: int, seed: int) -> dict[str, Any]:
    ci = bootstrap_interval(values, statistic, bootstrap, seed) if bootstrap > 0 else None
    return {"value": float(statistic(values)), "ci95": list(ci) if ci else None}


def sample_per_class(labels: np.ndarray, classes: Sequence[str], wanted: Sequence[str] = CHEXPERT_5, per_class: int = 200,
                     seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """The CheXpert 5x200-style sample: up to ``per_class`` studies per class of ``wanted`` whose only
    positive finding among ``wanted`` is that class (the others negative, blank or absent, none
    uncertain), drawn without replacement by ``seed``.

    Args:
        labels: [N, C] CheXpert values (1 positive, 0 negative, -1 uncertain, NaN blank).
        classes: the C column names.

    Returns:
        (indices into the N studies, sorted by class then index; the class of each).
    """
    missing = [c for c in wanted if c not in classes]
    if missing:
        raise ValueError(f"the labels have no column(s) {', '.join(missing)}")
    columns = labels[:, [list(classes).index(c) for c in wanted]]
    positive = columns == 1
    single = (positive.sum(axis=1) == 1) & ~(columns == -1).any(axis=1)
    rng = np.random.default_rng(seed)
    chosen, names = [], []
    for j, name in enumerate(wanted):
        pool = np.flatnonzero(single & positive[:, j])
        take = np.sort(rng.choice(pool, size=min(per_class, len(pool)), replace=False)) if len(pool) else pool
        chosen.extend(take.tolist())
        names.extend([name] * len(take))
    return np.asarray(chosen, dtype=np.int64), names


# --- the files of `refers retrieval`, and their tables -----------------------------------------------

RESULT_JSON = "retrieval.json"
RESULT_MD = "retrieval.md"
RETRIEVAL_FOLDER = "retrieval"  # under the results tree: retrieval/<dataset>_<split>/<method>/


METRIC_ROWS = ("R@1", "R@5", "R@10", "median_rank", "same_findings_R@1", "same_findings_R@5", "same_findings_R@10")


def _cell(entry: dict[str, Any] | None, percent: bool) -> str:
    if entry is None:
        return "-"
    value, ci = entry["value"], entry.get("ci95")
    fmt = (lambda v: f"{100 * v:.1f}") if percent else (lambda v: f"{v:.1f}")
    return fmt(value) + (f" ({fmt(ci[0])}-{fmt(ci[1])})" if ci else "")


def retrieval_markdown(result: dict[str, Any]) -> str:
    """The tables of ``retrieval.md`` (recall in %, with 95% intervals; chance beside)."""
    lines = []
    if result["synthetic"]:
        lines += ["**SYNTHETIC DATA: these numbers come from synthetic images and reports, not from real radiographs.**", ""]
    lines += [f"Retrieval of `{result['studies']['path']}` with `{result['model']['path']}` ({result['method']}).", ""]
    for title, key in (("All studies", "all_studies"), ("CheXpert 5x200 (\"same findings\" = the same class)", "chexpert_5x200")):
        part = result.get(key) or {}
        if "skipped" in part:
            lines += [f"### {title}", "", f"Not computed: {part['skipped']}.", ""]
            continue
        counts = part.get("counts")
        lines += [f"### {title}: {part['n']} studies" + (f" ({', '.join(f'{c} {n}' for c, n in counts.items())})" if counts else ""), ""]
        lines += ["| metric | image to report | report to image | chance |", "|---|---|---|---|"]
        for metric in METRIC_ROWS:
            if metric not in part["image_to_report"]:
                continue
            chance = part["chance"].get(metric.removeprefix("same_findings_")) if metric.startswith("R@") else None
            lines.append(f"| {metric.replace('_', ' ')} | {_cell(part['image_to_report'].get(metric), metric != 'median_rank')} | "
                         f"{_cell(part['report_to_image'].get(metric), metric != 'median_rank')} | "
                         f"{'-' if chance is None else f'{100 * chance:.1f}'} |")
        if "same_findings_skipped" in part:
            lines += ["", f"Same-findings recall not computed: {part['same_findings_skipped']}."]
        lines.append("")
    return "\n".join(lines)




def find_retrieval_results(root: str | Path) -> list[tuple[str, dict[str, Any]]]:
    """Every readable ``retrieval.json`` under ``root``: (its folder relative to ``root``, its content)."""
    root = Path(root)
    found = []
    for path in sorted(root.rglob(RESULT_JSON)):
        try:
            result = read_json(path)
            result["all_studies"]["image_to_report"]["R@5"]["value"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        found.append((path.parent.relative_to(root).as_posix(), result))
    return found


def retrieval_table(found: Sequence[tuple[str, dict[str, Any]]]) -> str:
    """One row per retrieval result: recall@1/5/10 (%) both ways, same-findings recall@5, chance."""
    header = "| results | studies | image→report R@1 / R@5 / R@10 | report→image R@1 / R@5 / R@10 | same findings R@5 (i→r) | chance R@5 |"
    lines = [header, "|---|---|---|---|---|---|"]
    for name, result in found:
        part = result["all_studies"]
        ways = [" / ".join(f"{100 * part[d][f'R@{k}']['value']:.1f}" for k in (1, 5, 10)) for d in DIRECTIONS]
        same = part["image_to_report"].get("same_findings_R@5")
        stamp = " (SYNTHETIC)" if result.get("synthetic") else ""
        same_cell = "-" if same is None else f"{100 * same['value']:.1f}"
        lines.append(f"| {name}{stamp} | {part['n']} | {ways[0]} | {ways[1]} | {same_cell} | {100 * part['chance']['R@5']:.1f} |")
    return "\n".join(lines) + "\n"

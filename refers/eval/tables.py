"""Markdown and CSV tables of a :class:`~refers.eval.report.Report`.

Markdown shows AUCs in percent with one decimal, like the paper; CSV files keep fractions with six
decimals for further analysis. Every row made from synthetic data says so (a ``synthetic`` CSV
column, ``(SYNTHETIC)`` after the dataset name, and a banner on top).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Sequence

import numpy as np

from refers.base.atomic import atomic_write_text
from refers.eval.metrics import percentile_interval
from refers.eval.report import MethodSummary, Report, RunResult
from refers.eval.retrieval import retrieval_table
from refers.eval.tree import METHOD_NAMES, dataset_key, group_key, group_label, method_key

SYNTHETIC_BANNER = "**SYNTHETIC DATA: these numbers come from synthetic images and reports, not from real radiographs.**"


def pct(value: float | None, digits: int = 1) -> str:
    """An AUC as a percentage, ``-`` when undefined."""
    return "-" if value is None or not np.isfinite(value) else f"{100 * value:.{digits}f}"


def pvalue(value: float | None) -> str:
    if value is None or not np.isfinite(value):
        return "-"
    return "<0.001" if value < 0.001 else f"{value:.3f}"


def num(value: float | None) -> str:
    """A CSV number: six decimals, empty when undefined."""
    return "" if value is None or not np.isfinite(value) else f"{value:.6f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[object]]) -> Path:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())
    return path


def _dataset_cell(dataset: str, synthetic: bool) -> str:
    return f"{dataset} (SYNTHETIC)" if synthetic else dataset


def _sorted(summaries: list[MethodSummary]) -> list[MethodSummary]:
    return sorted(summaries, key=lambda s: (dataset_key(s.dataset), group_key(s.group), method_key(s.method)))


def methods_of(report: Report) -> list[str]:
    return sorted({s.method for s in report.summaries}, key=method_key)


def _cell(summary: MethodSummary | None) -> str:
    if summary is None:
        return "-"
    mean, sd = summary.mean_sd()
    return pct(mean) if sd is None else f"{pct(mean)} ± {pct(sd)} (n={summary.seeds})"


def pivot_table(report: Report) -> str:
    """Mean AUC (%) with one row per dataset x fraction/task and one column per method (the paper's layout)."""
    methods = methods_of(report)
    rows: dict[tuple[str, str], dict[str, MethodSummary]] = {}
    for summary in _sorted(report.summaries):
        rows.setdefault((summary.dataset, summary.group), {})[summary.method] = summary
    body = []
    for (dataset, group), cells in rows.items():
        synthetic = any(s.synthetic for s in cells.values())
        body.append([_dataset_cell(dataset, synthetic), group_label(group), *(_cell(cells.get(m)) for m in methods)])
    return markdown_table(["dataset", "labels", *methods], body)


def ci_table(report: Report) -> str:
    header = ["dataset", "labels", "method", "seeds", "images", "mean AUC", "95% CI", "mean AUPRC"]
    body = []
    for s in _sorted(report.summaries):
        mean, sd = s.mean_sd()
        auprc, auprc_sd = s.mean_sd("mean_auprc")
        body.append([_dataset_cell(s.dataset, s.synthetic), group_label(s.group), s.method, s.seeds, s.results[0].n_images,
                     pct(mean) + ("" if sd is None else f" ± {pct(sd)}"), f"{pct(s.ci[0])}-{pct(s.ci[1])}" if np.isfinite(s.ci[0]) else "-",
                     pct(auprc) + ("" if auprc_sd is None else f" ± {pct(auprc_sd)}")])
    return markdown_table(header, body)


def class_tables(report: Report) -> str:
    """One table per task folder: rows = classes, columns = methods, cells = ``AUC / AUPRC`` (%)."""
    parts = []
    by_group: dict[tuple[str, str], list[MethodSummary]] = {}
    for summary in _sorted(report.summaries):
        by_group.setdefault((summary.dataset, summary.group), []).append(summary)
    for (dataset, group), summaries in by_group.items():
        classes = list(dict.fromkeys(c for s in summaries for r in s.results for c in r.run.class_names))
        body = [[c, *(f"{pct(s.class_mean(c))} / {pct(s.class_mean(c, 'auprcs'))}" for s in summaries)] for c in classes]
        title = f"### {_dataset_cell(dataset, any(s.synthetic for s in summaries))}, {group_label(group)}: AUC / AUPRC (%) per class"
        parts.append(title + "\n\n" + markdown_table(["class", *(s.method for s in summaries)], body))
    return "\n".join(parts)


def comparison_tables(report: Report) -> str:
    if not report.comparisons:
        return ""
    header = ["dataset", "labels", "method", "seed", f"mean AUC - {report.compare}", "95% CI", "bootstrap p", "classes with Holm p < 0.05"]
    body, detail = [], []
    for c in report.comparisons:
        b = c.bootstrap
        significant = sum(1 for t in c.classes if t.p_holm is not None and t.p_holm < 0.05)
        body.append([_dataset_cell(c.dataset, c.synthetic), group_label(c.group), c.method, "-" if c.seed is None else c.seed,
                     "-" if b is None else f"{100 * b.difference:+.1f}", "-" if b is None else f"{100 * b.low:+.1f} to {100 * b.high:+.1f}",
                     "-" if b is None else pvalue(b.p_value), f"{significant} of {len(c.classes)}"])
        detail += [[_dataset_cell(c.dataset, c.synthetic), group_label(c.group), c.method, t.class_name, pct(t.auc_method), pct(t.auc_baseline), pvalue(t.p_value), pvalue(t.p_holm)] for t in c.classes]
    return (markdown_table(header, body) + "\nPer class (DeLong's test, Holm-adjusted across the classes of each comparison):\n\n"
            + markdown_table(["dataset", "labels", "method", "class", "AUC", report.compare, "DeLong p", "Holm p"], detail))


def render_markdown(report: Report) -> str:
    lines = [f"# Fine-tuning results: {report.tree.root}", ""]
    if report.synthetic:
        lines += [SYNTHETIC_BANNER, ""]
    if report.summaries:
        lines += ["## Mean AUC (%)", "", pivot_table(report)]
        ci_note = (f"95% percentile bootstrap intervals over {report.bootstrap} image-level resamples (seed {report.seed}); "
                   "with several seeds, of the seed-averaged mean AUC." if report.bootstrap else "No bootstrap (--bootstrap 0).")
        lines += ["## Mean AUC and AUPRC with confidence intervals (%)", "", ci_note, "", ci_table(report)]
        lines += ["## Per-class results", "", class_tables(report)]
    if report.retrieval:
        lines += ["## Retrieval (refers retrieval, recall in %)", "",
                  "Each folder's retrieval.md has the intervals, median ranks and the 5x200 protocol.", "",
                  retrieval_table(report.retrieval)]
    if report.compare:
        lines += [f"## Paired comparison with {report.compare}", "", comparison_tables(report) or "No comparable runs.\n"]
    lines += ["## Checks", ""] + ([f"- {m}" for m in report.checks] or ["- no problems found"]) + [""]
    legend = ", ".join(f"{k} = {v}" for k, v in METHOD_NAMES.items())
    lines += ["## Notes", "",
              "- Mean AUC = plain mean of the per-class ROC AUCs (scikit-learn) over the classes with both label values; "
              "several seeds: mean ± sample sd over seeds.",
              "- AUPRC = average precision (scikit-learn); its chance level is the class prevalence.",
              f"- Methods: {legend}.", ""]
    return "\n".join(lines)


def _run_ci(result: RunResult) -> tuple[float, float]:
    return percentile_interval(result.boot_means) if result.boot_means is not None else (float("nan"), float("nan"))


def write_tables(report: Report, out: Path) -> list[Path]:
    """Write ``summary.md`` and the CSV files into ``out``; returns the files written."""
    written = [out / "summary.md"]
    atomic_write_text(written[0], render_markdown(report))
    summaries = _sorted(report.summaries)
    rows = []
    for s in summaries:
        (mean, sd), (auprc, auprc_sd) = s.mean_sd(), s.mean_sd("mean_auprc")
        rows.append([s.dataset, s.group, group_label(s.group), s.method, s.seeds, num(mean), num(sd), num(s.ci[0]), num(s.ci[1]), num(auprc), num(auprc_sd), s.results[0].n_images, int(s.synthetic)])
    written.append(write_csv(out / "mean_auc.csv", ["dataset", "task", "labels", "method", "seeds", "mean_auc", "sd_auc", "ci_low", "ci_high", "mean_auprc", "sd_auprc", "images", "synthetic"], rows))
    runs, classes = [], []
    for s in summaries:
        for r in s.results:
            seed = "" if r.run.seed is None else r.run.seed
            runs.append([s.dataset, s.group, s.method, seed, r.n_images, num(r.mean_auc), *map(num, _run_ci(r)), num(r.mean_auprc), str(r.run.folder), int(r.run.synthetic)])
            for (name, (labels, _)), auc, auprc in zip(r.run.classes.items(), r.aucs, r.auprcs):
                classes.append([s.dataset, s.group, s.method, seed, name, len(labels), int(labels.sum()), num(auc), num(auprc), int(r.run.synthetic)])
    written.append(write_csv(out / "runs.csv", ["dataset", "task", "method", "seed", "images", "mean_auc", "ci_low", "ci_high", "mean_auprc", "folder", "synthetic"], runs))
    written.append(write_csv(out / "per_class.csv", ["dataset", "task", "method", "seed", "class", "images", "positives", "auc", "auprc", "synthetic"], classes))
    if report.compare:
        means, tests = [], []
        for c in report.comparisons:
            seed, b = ("" if c.seed is None else c.seed), c.bootstrap
            significant = sum(1 for t in c.classes if t.p_holm is not None and t.p_holm < 0.05)
            means.append([c.dataset, c.group, c.method, c.baseline, seed, *(["", "", "", "", 0] if b is None else [num(b.difference), num(b.low), num(b.high), num(b.p_value), b.resamples]), significant, len(c.classes), int(c.synthetic)])
            tests += [[c.dataset, c.group, c.method, c.baseline, seed, t.class_name, num(t.auc_method), num(t.auc_baseline), num(t.p_value), num(t.p_holm), int(c.synthetic)] for t in c.classes]
        written.append(write_csv(out / "comparison_mean.csv", ["dataset", "task", "method", "baseline", "seed", "mean_auc_difference", "ci_low", "ci_high", "bootstrap_p", "resamples", "classes_holm_p_below_0.05", "classes", "synthetic"], means))
        written.append(write_csv(out / "comparison_delong.csv", ["dataset", "task", "method", "baseline", "seed", "class", "auc", "auc_baseline", "delong_p", "holm_p", "synthetic"], tests))
    return written


def console_summary(report: Report) -> str:
    """What ``refers results`` prints: the mean AUC table, the comparison summary and the checks."""
    lines = [SYNTHETIC_BANNER, ""] if report.synthetic else []
    if report.summaries:
        lines += ["Mean AUC (%):", "", pivot_table(report)]
    if report.retrieval:
        lines += ["Retrieval (recall %):", "", retrieval_table(report.retrieval)]
    if report.compare and report.comparisons:
        lines += [f"Paired comparison with {report.compare}:", "", comparison_tables(report).split("\nPer class")[0]]
    lines += ["Checks:"] + ([f"  - {m}" for m in report.checks] or ["  no problems found"])
    return "\n".join(lines)

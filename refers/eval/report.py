"""Turn a results tree into numbers: per-run metrics, means over seeds, consistency checks, paired comparisons.

Definitions (the same as the original notebooks, which reproduce the paper's tables):
* a run's mean AUC is the plain mean of its per-class ROC AUCs over the classes that have both
  label values in the test set (all 14 VinBigData/NIH classes; the single class of a binary task);
* with several seeds, a method's value is the mean +- sample sd (ddof 1) of the runs' mean AUCs;
* confidence intervals resample test images (the same resamples for every run of a task folder,
  see :func:`refers.eval.metrics.bootstrap_weights`), so a multi-seed interval is that of the
  seed-averaged mean AUC over test-set sampling.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from refers.eval.metrics import bootstrap_class_aucs, defined_classes, mean_auc, per_class_auc, per_class_auprc, percentile_interval, resample_means
from refers.eval.stats import PairedBootstrap, delong_test, holm, paired_difference
from refers.eval.tree import ZERO_SHOT_FOLDER, ResultsTree, Run


@dataclass
class RunResult:
    """Metrics of one run. ``aucs``/``auprcs`` follow ``run.class_names``; None where undefined."""

    run: Run
    aucs: list[float | None]
    auprcs: list[float | None]
    boot_classes: np.ndarray | None  # [B, C] per-class AUC of each bootstrap resample, None without bootstrap
    boot_means: np.ndarray | None  # [B] mean AUC per resample (NaN = skipped), None without bootstrap

    @property
    def mean_auc(self) -> float:
        return mean_auc(self.aucs)

    @property
    def mean_auprc(self) -> float:
        return mean_auc(self.auprcs)

    @property
    def n_images(self) -> int:
        return len(next(iter(self.run.classes.values()))[0])


@dataclass
class MethodSummary:
    """One method in one task folder, over its seeds."""

    dataset: str
    group: str
    method: str
    results: list[RunResult]
    ci: tuple[float, float] = (float("nan"), float("nan"))

    @property
    def seeds(self) -> int:
        return len(self.results)

    @property
    def synthetic(self) -> bool:
        return any(r.run.synthetic for r in self.results)

    def mean_sd(self, what: str = "mean_auc") -> tuple[float, float | None]:
        values = np.array([getattr(r, what) for r in self.results], dtype=np.float64)
        return float(np.mean(values)), (float(np.std(values, ddof=1)) if len(values) > 1 else None)

    def class_mean(self, class_name: str, what: str = "aucs") -> float | None:
        """Mean over seeds of one class's AUC (or AUPRC); None when undefined in every run."""
        values = [getattr(r, what)[r.run.class_names.index(class_name)] for r in self.results if class_name in r.run.classes]
        values = [v for v in values if v is not None]
        return float(np.mean(values)) if values else None


@dataclass
class ClassTest:
    class_name: str
    auc_method: float
    auc_baseline: float
    p_value: float
    p_holm: float | None


@dataclass
class Comparison:
    """A method against the baseline (``--compare``) on one task folder and seed."""

    dataset: str
    group: str
    method: str
    baseline: str
    seed: int | None
    classes: list[ClassTest]
    bootstrap: PairedBootstrap | None
    synthetic: bool


@dataclass
class Report:
    tree: ResultsTree
    summaries: list[MethodSummary]
    comparisons: list[Comparison] = field(default_factory=list)
    checks: list[str] = field(default_factory=list)
    bootstrap: int = 0
    seed: int = 0
    compare: str | None = None
    # (folder under the tree, content) of each retrieval.json of `refers retrieval` found in the tree
    retrieval: list[tuple[str, dict]] = field(default_factory=list)

    @property
    def synthetic(self) -> bool:
        return self.tree.synthetic or any(bool(result.get("synthetic")) for _, result in self.retrieval)


def _rows_consistent(run: Run) -> bool:
    return len({len(labels) for labels, _ in run.classes.values()}) == 1


def evaluate_run(run: Run, bootstrap: int, seed: int) -> RunResult:
    with warnings.catch_warnings():  # one-label classes are reported by check_tree, once per folder
        warnings.simplefilter("ignore")
        pairs = list(run.classes.values())
        aucs = [per_class_auc(labels, probs)[0] for labels, probs in pairs]
        auprcs = [per_class_auprc(labels, probs)[0] for labels, probs in pairs]
    boot_classes = boot_means = None
    if bootstrap > 0 and _rows_consistent(run):
        labels, probs = run.matrix(run.class_names)
        boot_classes = bootstrap_class_aucs(labels, probs, bootstrap, seed)
        boot_means = resample_means(boot_classes, defined_classes(labels))
    return RunResult(run, aucs, auprcs, boot_classes, boot_means)


def _by_group(runs: list[Run]) -> dict[tuple[str, str], list[Run]]:
    groups: dict[tuple[str, str], list[Run]] = defaultdict(list)
    for run in runs:
        groups[(run.dataset, run.group)].append(run)
    return groups


def _name(run: Run) -> str:
    return run.method if run.seed is None else f"{run.method}/seed{run.seed}"


def check_tree(tree: ResultsTree) -> list[str]:
    """Problems worth reading before trusting the tables; none of them stops the report.

    Per task folder: methods found elsewhere in the dataset but missing here, class files missing
    from a run, files whose number of rows or labels differ from the first run's (same test set
    expected), and classes with a single label value (AUC undefined, left out of the means).
    """
    messages = list(tree.problems)
    methods_of_dataset: dict[str, set[str]] = defaultdict(set)
    for run in tree.runs:
        methods_of_dataset[run.dataset].add(run.method)
    for (dataset, group), runs in _by_group(tree.runs).items():
        where = f"{dataset}/{group}"
        missing = sorted(methods_of_dataset[dataset] - {r.method for r in runs})
        if missing and group.lower() != ZERO_SHOT_FOLDER:  # zero-shot needs a report encoder: scratch has none
            messages.append(f"{where}: no files for method(s) {', '.join(missing)} (present in other folders of {dataset})")
        all_classes = list(dict.fromkeys(c for r in runs for c in r.class_names))
        reference: dict[str, tuple[Run, np.ndarray]] = {}
        seen: dict[tuple[str, int | None], Run] = {}
        for run in runs:
            twin = seen.setdefault((run.method, run.seed), run)
            if twin is not run:
                messages.append(f"{where}: two {_name(run)} runs ({twin.folder} and {run.folder}), counted as separate runs")
            absent = [c for c in all_classes if c not in run.classes]
            if absent:
                messages.append(f"{where}: {_name(run)} has no file for class(es) {', '.join(absent)}")
            if not _rows_consistent(run):
                sizes = ", ".join(f"{c} {len(v[0])}" for c, v in run.classes.items())
                messages.append(f"{where}: {_name(run)} class files have different numbers of rows ({sizes}); no confidence interval or comparison for it")
            for class_name, (labels, _) in run.classes.items():
                if class_name not in reference:
                    reference[class_name] = (run, labels)
                    if len(np.unique(labels)) < 2:
                        messages.append(f"{where}: class {class_name} has only label value {labels[0]:.0f} in {_name(run)}: AUC undefined, left out of the mean")
                    continue
                ref_run, ref_labels = reference[class_name]
                if len(labels) != len(ref_labels):
                    messages.append(f"{where}: {class_name}: {_name(run)} has {len(labels)} rows, {_name(ref_run)} has {len(ref_labels)}")
                elif not np.array_equal(labels, ref_labels):
                    differ = np.flatnonzero(labels != ref_labels)
                    messages.append(f"{where}: {class_name}: labels of {_name(run)} differ from {_name(ref_run)}'s at {len(differ)} of {len(labels)} rows (first at row {differ[0] + 1})")
    return messages


def summarise(results: list[RunResult]) -> list[MethodSummary]:
    """Group run results by (dataset, group, method); CIs from the seed-averaged resampled means."""
    grouped: dict[tuple[str, str, str], list[RunResult]] = defaultdict(list)
    for result in results:
        grouped[(result.run.dataset, result.run.group, result.run.method)].append(result)
    summaries = []
    for (dataset, group, method), members in grouped.items():
        summary = MethodSummary(dataset, group, method, members)
        boots = [r.boot_means for r in members if r.boot_means is not None]
        if boots and len(boots) == len(members) and len({len(b) for b in boots}) == 1 and len({r.n_images for r in members}) == 1:
            summary.ci = percentile_interval(np.mean(np.stack(boots), axis=0))
        summaries.append(summary)
    return summaries


def _pick_baseline(baselines: list[Run], run: Run) -> Run | None:
    same_seed = [b for b in baselines if b.seed == run.seed]
    if same_seed:
        return same_seed[0]
    return baselines[0] if len(baselines) == 1 else None


def compare_runs(result: RunResult, baseline: RunResult) -> Comparison | str:
    """DeLong per shared class (Holm-corrected) and a paired bootstrap of the mean; a message when not comparable."""
    run, base = result.run, baseline.run
    shared = [c for c in base.class_names if c in run.classes]
    for c in shared:
        if not np.array_equal(run.classes[c][0], base.classes[c][0]):
            return f"{run.dataset}/{run.group}: {_name(run)} not compared with {_name(base)}: different test labels for {c}"
    tests = []
    for c in shared:
        if len(np.unique(run.classes[c][0])) == 2:
            auc_m, auc_b, p = delong_test(run.classes[c][0], run.classes[c][1], base.classes[c][1])
            tests.append(ClassTest(c, auc_m, auc_b, p, None))
    for test, adjusted in zip(tests, holm([t.p_value for t in tests])):
        test.p_holm = adjusted
    boot = None
    if result.boot_classes is not None and baseline.boot_classes is not None and shared:
        labels, probs = run.matrix(shared)
        _, base_probs = base.matrix(shared)
        columns = [run.class_names.index(c) for c in shared], [base.class_names.index(c) for c in shared]
        boot = paired_difference(labels, probs, base_probs, result.boot_classes[:, columns[0]], baseline.boot_classes[:, columns[1]])
    return Comparison(run.dataset, run.group, run.method, base.method, run.seed, tests, boot, run.synthetic or base.synthetic)


def build_report(tree: ResultsTree, bootstrap: int = 1000, seed: int = 0, compare: str | None = None, progress=None) -> Report:
    """Evaluate every run, summarise over seeds, check the tree and (with ``compare``) test each method against it.

    Args:
        progress: optional wrapper for the loop over runs (e.g. ``tqdm``).
    """
    runs = tree.runs if progress is None else progress(tree.runs)
    results = [evaluate_run(run, bootstrap, seed) for run in runs]
    report = Report(tree, summarise(results), checks=check_tree(tree), bootstrap=bootstrap, seed=seed, compare=compare)
    if compare is None:
        return report
    by_run = {id(r.run): r for r in results}
    for (dataset, group), members in _by_group(tree.runs).items():
        baselines = [r for r in members if r.method.lower() == compare.lower()]
        if not baselines:
            report.checks.append(f"{dataset}/{group}: no {compare} runs to compare with")
            continue
        for run in members:
            if any(run is b for b in baselines):
                continue
            baseline = _pick_baseline(baselines, run)
            if baseline is None:
                report.checks.append(f"{dataset}/{group}: {_name(run)} not compared: no {compare} run with seed {run.seed}")
                continue
            if not (_rows_consistent(run) and _rows_consistent(baseline)):
                continue  # already reported by check_tree
            outcome = compare_runs(by_run[id(run)], by_run[id(baseline)])
            (report.checks.append if isinstance(outcome, str) else report.comparisons.append)(outcome)
    return report

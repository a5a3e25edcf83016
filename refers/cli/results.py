"""``refers results DIR``: tables, confidence intervals, paired tests and ROC figures from prediction files."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from refers.base.errors import UserError as UserError
from refers.cli.common import command


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="refers results",
        description="Summarise a tree of prediction files <Dataset>/<data1|data10|data100|task>/<METHOD>/[seed<k>/]<Class>.txt "
                    "(what test.py writes, or the published Results_of_fine-tuning/): mean AUC per dataset x fraction x method "
                    "(mean ± sd over seeds), per-class AUC and AUPRC, bootstrap 95%% confidence intervals, paired DeLong tests "
                    "with a Holm correction, ROC curves and bar charts. The tree is only read; everything goes to --out.",
    )
    p.add_argument("dir", nargs="?", default=None, help="results tree (default: the project's Results_of_fine-tuning/)")
    p.add_argument("--out", default=None, help="output folder, outside DIR (default: a new results_summary[_N]/ in the working directory)")
    p.add_argument("--bootstrap", type=int, default=1000, metavar="N", help="bootstrap resamples of the test images; 0 = no intervals (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap resampling (default 0)")
    p.add_argument("--compare", default=None, metavar="METHOD", help="test every method against this one (e.g. REFERS): DeLong per class + Holm, paired bootstrap of the mean")
    p.add_argument("--figures", action=argparse.BooleanOptionalAction, default=True, help="write ROC curves and bar charts as PNG (default on)")
    return p


def default_out(cwd: Path) -> Path:
    """A folder under ``cwd`` that does not exist yet: results_summary, results_summary_2, ..."""
    candidate, k = cwd / "results_summary", 2
    while candidate.exists():
        candidate, k = cwd / f"results_summary_{k}", k + 1
    return candidate


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


@command("refers results")
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.bootstrap < 0:
        raise UserError(f"--bootstrap must be >= 0, got {args.bootstrap}", exit_code=2)
    from tqdm import tqdm

    from refers.base.synthetic import mark_synthetic
    from refers.eval.figures import write_figures
    from refers.eval.report import build_report
    from refers.eval.retrieval import find_retrieval_results
    from refers.eval.tables import console_summary, write_tables
    from refers.eval.tree import discover
    from refers.base.paths import results_dir
    from refers.base.atomic import check_output_dir

    root = Path(args.dir).expanduser().resolve() if args.dir else results_dir()
    out = Path(args.out).expanduser().resolve() if args.out else default_out(Path.cwd().resolve())
    if _inside(out, root):
        raise UserError(f"output folder {out} is inside the results tree {root}; pass --out elsewhere (the tree is never written)", exit_code=2)
    check_output_dir(out, "--out")  # before any work
    tree = discover(root)
    retrieval = find_retrieval_results(root)
    if not tree.runs and not retrieval:
        problems = "".join(f"\n  {p}" for p in tree.problems)
        raise UserError(f"no prediction files under {root} (layout <Dataset>/<fraction or task>/<METHOD>/[seed<k>/]<Class>.txt) "
                        f"and no retrieval.json{problems}")
    compare = None
    if args.compare:  # spelled as in the tree (case-insensitive match)
        compare = next((run.method for run in tree.runs if run.method.lower() == args.compare.lower()), None)
        if compare is None:
            methods = ", ".join(sorted({run.method for run in tree.runs}))
            raise UserError(f"--compare {args.compare}: no such method in {root} (found: {methods})", exit_code=2)

    def progress(items, desc="evaluating runs"):
        return tqdm(items, desc=desc, unit="item", disable=None, leave=False)

    report = build_report(tree, args.bootstrap, args.seed, compare, progress=progress)
    report.retrieval = retrieval
    out.mkdir(parents=True, exist_ok=True)
    written = write_tables(report, out)
    if report.synthetic:  # outputs made from synthetic data carry the marker too
        mark_synthetic(out, "Made from prediction files of SYNTHETIC data: not results on real patients.\n")
    if args.figures:
        written += write_figures(report, out / "figures", progress=lambda jobs: progress(jobs, "figures"))
    print(console_summary(report))
    print(f"\nwrote {len(written)} files to {out} (summary.md, CSV tables{', figures/' if args.figures else ''})")
    return 0

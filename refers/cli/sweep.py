"""``refers sweep CONFIG.yaml``: a grid of fine-tuning and testing runs, as the real commands."""

from __future__ import annotations

import argparse
from typing import Sequence

from refers.base.errors import UserError as UserError
from refers.cli.common import command


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="refers sweep",
        description="Run a grid of datasets x label fractions x data seeds x initialisations (x hyper-parameter "
                    "candidates chosen on validation) with Fine-tune/<Dataset>/train.py and test.py. Finished runs "
                    "and existing test results are skipped; every command goes to <output_dir>/commands.log.",
        epilog="Examples: configs/sweep/paper.yaml (the paper's grid on real data), configs/sweep/demo.yaml (the demo's).",
    )
    p.add_argument("config", help="sweep file (YAML); see configs/sweep/")
    p.add_argument("--dry-run", action="store_true", help="print the commands without running them")
    p.add_argument("--jobs", type=int, default=1, help="commands at a time (subprocess execution)")
    p.add_argument("--devices", default=None, help="comma-separated GPU ids given to the parallel jobs as CUDA_VISIBLE_DEVICES")
    p.add_argument("--output-dir", default=None, help="override the sweep file's output_dir (run folders, command log)")
    p.add_argument("--results-dir", default=None, help="override the sweep file's results_dir (prediction files)")
    p.add_argument("--in-process", action="store_true",
                   help="run the commands inside this process (saves the start-up time of many short CPU runs)")
    return p


@command("refers sweep")
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.jobs < 1:
        raise UserError(f"--jobs must be >= 1, got {args.jobs}", exit_code=2)
    from refers.sweep import load_config
    from refers.sweep_runner import run_sweep

    overrides = {"output_dir": args.output_dir, "results_dir": args.results_dir,
                 "execution": "in-process" if args.in_process else None}
    config = load_config(args.config, overrides)  # checked before anything runs: a ConfigError exits 2
    if config.execution == "in-process" and args.jobs != 1:
        raise UserError("in-process execution runs one command at a time: drop --jobs or --in-process", exit_code=2)
    devices = [d.strip() for d in args.devices.split(",") if d.strip()] if args.devices else None
    outcome = run_sweep(config, jobs=args.jobs, devices=devices, dry_run=args.dry_run)
    if args.dry_run:
        return 0
    for group, choice in outcome.selected.items():
        scores = ", ".join(f"{c}: {'n/a' if m is None else f'{m:.4f}'}" for c, m in choice["mean_val_auc"].items())
        if len(choice["mean_val_auc"]) > 1:
            dataset, percent, arm = group
            print(f"selected for {dataset} {percent}% {arm}: {choice['candidate']} (mean validation AUC {scores})")
    print(f"commands: {config.log_path}; predictions: {config.results_dir}")
    if outcome.failures:
        raise UserError(f"{len(outcome.failures)} run(s) failed:\n  " + "\n  ".join(outcome.failures))
    return 0

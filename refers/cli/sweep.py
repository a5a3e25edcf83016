"""``refers sweep CONFIG.yaml``: a grid of fine-tuning and testing runs, as the real commands."""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING, Sequence

from refers.base.atomic import check_output_dir
from refers.base.errors import UserError as UserError
from refers.cli.common import command

if TYPE_CHECKING:
    from refers.slurm.resources import SlurmResources
    from refers.sweep import SweepConfig

# --slurm-<flag> -> the slurm: key it overrides
SLURM_FLAGS = {"partition": str, "account": str, "time": str, "gpus_per_job": int, "cpus_per_job": int, "mem": str}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="refers sweep",
        description="Run a grid of datasets x label fractions x data seeds x initialisations (x hyper-parameter "
                    "candidates chosen on validation) with Fine-tune/<Dataset>/train.py and test.py. Finished runs "
                    "and existing test results are skipped; every command goes to <output_dir>/commands.log.",
        epilog="Examples: configs/sweep/paper.yaml (the paper's grid on real data), configs/sweep/demo.yaml (the demo's).",
    )
    p.add_argument("config", help="sweep file (YAML); see configs/sweep/")
    p.add_argument("--arms", nargs="+", default=None, metavar="ARM",
                   help="run only these of the file's arms (e.g. --arms scratch); the others' choices in selection.json are kept")
    p.add_argument("--dry-run", action="store_true", help="print the commands without running them")
    p.add_argument("--status", action="store_true",
                   help="say where every command stands (finished, running, submitted, failed, not started) and exit")
    p.add_argument("--executor", choices=["local", "slurm"], default="local",
                   help="local: run the commands here (--jobs at a time); slurm: one Slurm job per command, "
                        "submitted with submitit (resources from the file's slurm: section and --slurm-* flags)")
    p.add_argument("--jobs", type=int, default=1, help="commands at a time (local executor, subprocess execution)")
    p.add_argument("--devices", default=None, help="comma-separated GPU ids given to the parallel jobs as CUDA_VISIBLE_DEVICES")
    p.add_argument("--output-dir", default=None, help="override the sweep file's output_dir (run folders, command log)")
    p.add_argument("--results-dir", default=None, help="override the sweep file's results_dir (prediction files)")
    p.add_argument("--in-process", action="store_true",
                   help="run the commands inside this process (local executor; saves the start-up time of many short CPU runs)")
    p.add_argument("--poll", type=float, default=10.0, metavar="SECONDS",
                   help="how often the Slurm executor reads squeue and the run folders (default 10)")
    slurm = p.add_argument_group("Slurm resources of each job (--executor slurm; override the file's slurm: section)")
    for key, kind in SLURM_FLAGS.items():
        slurm.add_argument(f"--slurm-{key.replace('_', '-')}", dest=f"slurm_{key}", type=kind, default=None,
                           help=f"slurm: {key}")
    slurm.add_argument("--slurm-sbatch-option", dest="slurm_sbatch_options", action="append", default=[],
                       metavar="--KEY[=VALUE]", help="slurm: sbatch_options, e.g. --slurm-sbatch-option=--qos=high (may repeat)")
    return p


def _slurm_resources(args: argparse.Namespace, config: "SweepConfig") -> "SlurmResources":
    from refers.slurm.resources import SlurmResources

    given = {key: getattr(args, f"slurm_{key}") for key in SLURM_FLAGS if getattr(args, f"slurm_{key}") is not None}
    if args.slurm_sbatch_options:
        given["sbatch_options"] = list(args.slurm_sbatch_options)
    return config.slurm.merged(SlurmResources.from_mapping(given, "--slurm-* flags"))


@command("refers sweep")
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.jobs < 1:
        raise UserError(f"--jobs must be >= 1, got {args.jobs}", exit_code=2)
    from refers.sweep import load_config

    # Folders typed on the command line are relative to the working directory (the file's, to the project root).
    typed = {key: os.path.abspath(os.path.expanduser(value)) if value else None
             for key, value in (("output_dir", args.output_dir), ("results_dir", args.results_dir))}
    overrides = {**typed,
                 "execution": "in-process" if args.in_process else None}
    config = load_config(args.config, overrides, arms=args.arms)  # checked before anything runs: a ConfigError exits 2
    resources = _slurm_resources(args, config)
    if not args.dry_run:
        from refers.sweep_runner import read_selection

        read_selection(config)  # a broken selection.json is named before any run starts, not after the training
    if not (args.dry_run or args.status):
        check_output_dir(config.output_dir, "output_dir")
        check_output_dir(config.results_dir, "results_dir")
    if args.status:
        from refers.sweep_status import print_status

        print_status(config)
        return 0
    if args.executor == "slurm":
        return _run_slurm(args, config, resources)
    if config.execution == "in-process" and args.jobs != 1:
        raise UserError("in-process execution runs one command at a time: drop --jobs or --in-process", exit_code=2)
    from refers.sweep_runner import run_sweep

    devices = [d.strip() for d in args.devices.split(",") if d.strip()] if args.devices else None
    outcome = run_sweep(config, jobs=args.jobs, devices=devices, dry_run=args.dry_run)
    return 0 if args.dry_run else _report(config, outcome)


def _run_slurm(args: argparse.Namespace, config, resources) -> int:
    from refers.slurm.submit import check_slurm
    from refers.sweep_slurm import run_sweep_slurm

    if args.jobs != 1 or args.devices:
        raise UserError("--jobs and --devices are for the local executor; Slurm places the jobs (slurm: gpus_per_job)", 2)
    if args.poll <= 0:
        raise UserError(f"--poll must be > 0 seconds, got {args.poll}", 2)
    if not args.dry_run:
        check_slurm()
    outcome = run_sweep_slurm(config, resources, dry_run=args.dry_run, poll_seconds=args.poll)
    if args.dry_run:
        return 0
    if outcome.interrupted:
        return 130
    return _report(config, outcome)


def _report(config, outcome) -> int:
    for group, choice in outcome.selected.items():
        scores = ", ".join(f"{c}: {'n/a' if m is None else f'{m:.4f}'}" for c, m in choice["mean_val_auc"].items())
        if len(choice["mean_val_auc"]) > 1:
            dataset, percent, arm = group
            print(f"selected for {dataset} {percent}% {arm}: {choice['candidate']} (mean validation AUC {scores})")
    print(f"commands: {config.log_path}; predictions: {config.results_dir}")
    if outcome.failures:
        raise UserError(f"{len(outcome.failures)} run(s) failed:\n  " + "\n  ".join(outcome.failures))
    return 0

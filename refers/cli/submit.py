"""``--submit slurm`` for ``refers pretrain`` and ``refers finetune``: the same command, as a Slurm job.

The job (:class:`refers.slurm.jobs.CommandJob`) runs the command line without the submission flags
on the allocation, one task per GPU (``--gpus-per-node``, ranks from Slurm's environment), and
requeues itself after saving on Slurm's pre-timeout signal; the requeued run resumes
(``--resume auto`` for pre-training, ``--resume`` for fine-tuning) and continues exactly.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path
from typing import Sequence

from refers.base.errors import UserError

# flag -> takes a value (every submission flag does)
_FLAGS = ("--submit", "--nodes", "--gpus-per-node", "--slurm-partition", "--slurm-account", "--slurm-time",
          "--slurm-cpus-per-task", "--slurm-mem", "--slurm-option", "--slurm-folder")
_SWITCHES = ("--slurm-dry-run",)  # submission flags without a value


def add_submit_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("running as a Slurm job (through submitit)")
    group.add_argument("--submit", choices=["slurm"], default=None,
                       help="submit this command as a Slurm job instead of running it here; it checkpoints on the "
                            "signal Slurm sends 90 s before the time limit, requeues itself and resumes")
    group.add_argument("--nodes", type=int, default=1, help="with --submit: nodes (default 1)")
    group.add_argument("--gpus-per-node", type=int, default=0,
                       help="with --submit: GPUs per node, one process each (default 0: one CPU process per node)")
    group.add_argument("--slurm-partition", default=None, help="with --submit: sbatch --partition")
    group.add_argument("--slurm-account", default=None, help="with --submit: sbatch --account")
    group.add_argument("--slurm-time", default=None, help="with --submit: sbatch --time, e.g. 24:00:00 (default: the partition's)")
    group.add_argument("--slurm-cpus-per-task", type=int, default=None, help="with --submit: sbatch --cpus-per-task")
    group.add_argument("--slurm-mem", default=None, help="with --submit: sbatch --mem, e.g. 64G")
    group.add_argument("--slurm-option", action="append", default=[], metavar="--KEY[=VALUE]",
                       help="with --submit: any other sbatch option, e.g. --slurm-option=--qos=high (may repeat)")
    group.add_argument("--slurm-folder", default=None,
                       help="with --submit: where the job's files and output go (default: <run folder>/slurm)")
    group.add_argument("--slurm-dry-run", action="store_true",
                       help="with --submit: print the sbatch script and the job's command lines; submit nothing")


def submit_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(add_help=False, usage=argparse.SUPPRESS)
    add_submit_arguments(parser)
    return parser


def without_submit_flags(argv: Sequence[str]) -> list[str]:
    """``argv`` with every submission flag (and its value) removed; the rest in order."""
    out, skip = [], False
    for token in argv:
        if skip:
            skip = False
            continue
        name = token.split("=", 1)[0]
        if name in _FLAGS:
            skip = "=" not in token
            continue
        if token in _SWITCHES:
            continue
        out.append(token)
    return out


def replace_flags(argv: Sequence[str], drop: dict[str, int], add: Sequence[str]) -> list[str]:
    """``argv`` without the flags in ``drop`` (flag -> number of values it takes), then ``add``."""
    out, skip = [], 0
    for token in argv:
        if skip:
            skip -= 1
            continue
        name = token.split("=", 1)[0]
        if name in drop:
            skip = drop[name] if "=" not in token else 0
            continue
        out.append(token)
    return out + list(add)


def submit_command(args: argparse.Namespace, command: str, argv: list[str], restart_argv: list[str],
                   run_folder: Path, name: str) -> int:
    """Submit ``python -m refers <command> <argv>`` (``restart_argv`` after a requeue); print how to follow it."""
    from refers.slurm.jobs import CommandJob
    from refers.slurm.resources import SlurmResources
    from refers.slurm.submit import check_slurm, make_executor, sbatch_script, submit
    from refers.config.engine import ConfigError

    for flag, value, low in (("--nodes", args.nodes, 1), ("--gpus-per-node", args.gpus_per_node, 0)):
        if value < low:
            raise UserError(f"{flag} must be >= {low}, got {value}", 2)
    try:
        resources = SlurmResources(partition=args.slurm_partition, account=args.slurm_account, time=args.slurm_time,
                                   cpus_per_job=args.slurm_cpus_per_task, mem=args.slurm_mem,
                                   sbatch_options=tuple(args.slurm_option))
        resources.check("--slurm-* flags")
    except ConfigError as error:
        raise UserError(str(error), 2) from None
    folder = Path(args.slurm_folder) if args.slurm_folder else run_folder / "slurm"
    folder = folder.resolve()
    tasks = max(1, args.gpus_per_node)
    executor = make_executor(folder, resources, name=name, nodes=args.nodes, tasks_per_node=tasks,
                             gpus_per_node=args.gpus_per_node or None)
    python = [sys.executable, "-m", "refers", command]
    log = folder / f"{command}.log"
    if args.slurm_dry_run:
        print(sbatch_script(executor))
        print(f"# each of the {args.nodes * tasks} task(s) runs, from {os.getcwd()} (RANK, LOCAL_RANK, WORLD_SIZE, "
              "MASTER_ADDR, MASTER_PORT from Slurm's variables when there are several):")
        print(shlex.join(python + argv))
        print("# after a requeue:")
        print(shlex.join(python + restart_argv))
        return 0
    check_slurm()
    job = submit(executor, CommandJob(tuple(python + argv), os.getcwd(), str(log), str(folder / f"{command}.exit.json"),
                                      tuple(python + restart_argv)))
    print(f"submitted Slurm job {job.job_id}: refers {command} on {args.nodes} node(s) x {tasks} task(s); "
          f"output: {log}; follow it with: squeue -j {job.job_id}; tail -f {log}")
    return 0

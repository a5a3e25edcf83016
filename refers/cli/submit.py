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
from typing import Iterable, Sequence

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


def _flag_of(token: str, flags: Sequence[str], own: Iterable[str] = ()) -> str | None:
    """The flag of ``flags`` that ``token`` names: exactly, or as the unique abbreviation argparse
    accepted (``--sub`` for ``--submit``), unless it is one of the command's ``own`` flags (the
    original train.py's ``--gpu`` is not ``--gpus-per-node``); None for any other token."""
    if not token.startswith("--"):
        return None
    name = token.split("=", 1)[0]
    if name in flags:
        return name
    if name in own:
        return None
    matches = [flag for flag in flags if len(name) >= 4 and flag.startswith(name)]
    return matches[0] if len(matches) == 1 else None


def without_submit_flags(argv: Sequence[str], own: Iterable[str] = ()) -> list[str]:
    """``argv`` with every submission flag (and its value) removed; the rest in order."""
    return replace_flags(argv, {**{flag: 1 for flag in _FLAGS}, **{flag: 0 for flag in _SWITCHES}}, [], own)


def replace_flags(argv: Sequence[str], drop: dict[str, int], add: Sequence[str], own: Iterable[str] = ()) -> list[str]:
    """``argv`` without the flags in ``drop`` (flag -> number of values it takes; abbreviations too,
    except the command's ``own`` flags), then ``add``."""
    own = set(own)
    out, skip = [], 0
    for token in argv:
        if skip:
            skip -= 1
            continue
        flag = _flag_of(token, list(drop), own)
        if flag is not None:
            skip = drop[flag] if "=" not in token else 0
            continue
        out.append(token)
    return out + list(add)


def submit_command(args: argparse.Namespace, command: str, argv: list[str], restart_argv: list[str],
                   run_folder: Path, name: str, resume_glob: str, fresh_argv: list[str]) -> int:
    """Submit ``python -m refers <command> <argv>``; print how to follow it.

    After a requeue the job runs ``restart_argv`` when ``resume_glob`` matches a saved state, else
    ``fresh_argv`` (requeued before anything was saved).
    """
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
    stem = name.removeprefix("refers-")  # one log and outcome file per run, also in a shared --slurm-folder
    log = folder / f"{stem}.log"
    if args.slurm_dry_run:
        print(sbatch_script(executor))
        print(f"# each of the {args.nodes * tasks} task(s) runs, from {os.getcwd()} (RANK, LOCAL_RANK, WORLD_SIZE, "
              "MASTER_ADDR, MASTER_PORT from Slurm's variables when there are several):")
        print(shlex.join(python + argv))
        print("# after a requeue:")
        print(shlex.join(python + restart_argv))
        return 0
    check_slurm()
    job = submit(executor, CommandJob(tuple(python + argv), os.getcwd(), str(log), str(folder / f"{stem}.exit.json"),
                                      tuple(python + restart_argv), resume_glob, tuple(python + fresh_argv)))
    print(f"submitted Slurm job {job.job_id}: refers {command} on {args.nodes} node(s) x {tasks} task(s); "
          f"output: {log}; follow it with: squeue -j {job.job_id}; tail -f {log}")
    return 0

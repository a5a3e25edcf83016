"""``refers pretrain`` / ``Pre-train/pretrain_refers.py``: REFERS pre-training with the original flags.

Launch modes:
  * ``--num-gpus-per-machine 0``: one CPU process (gloo);
  * ``--num-gpus-per-machine N``: N processes on this machine (``torch.multiprocessing.spawn``),
    global rank = ``--machine-rank`` * N + local rank, rendezvous at ``--dist-url``;
  * under ``torchrun``: one process per launcher slot (ranks from its environment variables);
  * ``--submit slurm --nodes N --gpus-per-node G``: this command as a Slurm job of N x G tasks
    (:mod:`refers.cli.submit`), ranks from Slurm, requeued and resumed at the time limit.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import urlparse

from refers.base.errors import UserError as UserError
from refers.cli.common import command
from refers.cli.submit import add_submit_arguments, replace_flags, submit_command, without_submit_flags

PROG = "pretrain_refers.py"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="REFERS pre-training: a ViT learns from radiographs and their free-text reports."
    )
    parser.add_argument("--config", default=None, help="YAML preset (default: the published recipe, configs/pretrain/refers_vitb16.yaml)")
    parser.add_argument("--config-override", nargs="*", action="extend", default=[], metavar="KEY VALUE",
                        help="pairs of config keys and values, e.g. OPTIM.NUM_ITERATIONS 20 OPTIM.BATCH_SIZE 4 "
                             "(may be given more than once)")
    parser.add_argument("--serialization-dir", default=None,
                        help="run folder for checkpoints, logs, TensorBoard and the export (default: Pre-train/runs/refers)")
    parser.add_argument("--cpu-workers", type=int, default=0, help="data-loading worker processes per training process")
    parser.add_argument("--num-machines", type=int, default=1)
    parser.add_argument("--num-gpus-per-machine", type=int, default=None,
                        help="GPU processes per machine; 0 = one CPU process (default: 1 if a GPU is visible, else 0)")
    parser.add_argument("--machine-rank", type=int, default=0, help="rank of this machine among --num-machines")
    parser.add_argument("--dist-url", default="tcp://127.0.0.1:23456", help="rendezvous address of machine 0")
    resume = parser.add_mutually_exclusive_group()
    resume.add_argument("--resume-from", default=None, metavar="PATH|auto",
                        help="a checkpoint_{iteration}.pth to continue from, or 'auto' for the latest in --serialization-dir")
    resume.add_argument("--resume", choices=["auto"], default=None, help="same as --resume-from auto")
    resume.add_argument("--overwrite", action="store_true",
                        help="start afresh although --serialization-dir holds an earlier run (its checkpoints, export, "
                             "TensorBoard folder and log are removed first; without it such a run is refused)")
    parser.add_argument("--checkpoint-every", type=int, default=2000, help="iterations between checkpoints and validations")
    parser.add_argument("--log-every", type=int, default=20, help="iterations between log lines")
    parser.add_argument("--keep-checkpoints", type=int, default=None, metavar="K",
                        help="keep the last K checkpoint_{iteration}.pth, 0 = all (default: CHECKPOINT.KEEP_LAST, 3); "
                             "the one resumed from is always kept")
    parser.add_argument("--keep-every", type=int, default=None, metavar="N",
                        help="also keep every checkpoint whose iteration is a multiple of N, 0 = none "
                             "(default: CHECKPOINT.KEEP_EVERY, 0)")
    parser.add_argument("--no-flip", action="store_true", help="no horizontal flip (sets DATA.HORIZONTAL_FLIP false)")
    parser.add_argument("--log-text", action="store_true",
                        help="write a generated and a reference report to the log at each validation (off by default: "
                             "real reports fall under data-use agreements)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--no-export", action="store_true", help="skip the automatic export of the image encoder at the end")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the image encoder (GPU; the first iterations compile)")
    add_submit_arguments(parser)
    return parser


@command(PROG)
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    argv = list(sys.argv[1:] if argv is None else argv)
    for name in ("cpu_workers", "num_machines", "machine_rank"):
        if getattr(args, name) < 0:
            raise UserError(f"--{name.replace('_', '-')} must be >= 0", 2)
    if args.num_machines < 1 or args.machine_rank >= args.num_machines:
        raise UserError(f"--machine-rank must be in 0..{args.num_machines - 1} (--num-machines {args.num_machines})", 2)
    if args.checkpoint_every < 1 or args.log_every < 1:
        raise UserError("--checkpoint-every and --log-every must be >= 1", 2)
    for flag, value in (("--keep-checkpoints", args.keep_checkpoints), ("--keep-every", args.keep_every)):
        if value is not None and value < 0:
            raise UserError(f"{flag} must be a non-negative integer (0 = off), got {value}", 2)
    cfg = _load_config(args)
    if args.submit:
        return _submit(args, cfg, argv)
    torchrun = "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ
    gpus = _check_devices(args.num_gpus_per_machine, torchrun)
    _check_inputs(cfg)
    _check_dist_url(args.dist_url)
    folder = _serialization_dir(args.serialization_dir)
    resume = _resume_path(args.resume_from or args.resume, folder)
    if resume is None:
        _claim(folder, args)
    launch = {"cfg": cfg.to_dict(), "folder": str(folder), "resume": str(resume) if resume else None,
              "gpus": gpus, "args": vars(args), "argv": argv}
    if torchrun:
        return _worker(int(os.environ["LOCAL_RANK"]), launch, from_env=True)
    if gpus <= 1:  # one process on this machine (CPU or one GPU), possibly one of several machines
        return _worker(0, launch)
    import torch.multiprocessing as mp

    try:
        mp.spawn(_spawned, args=(launch,), nprocs=gpus, join=True)
    except mp.ProcessExitedException as error:
        return error.exit_code if error.exit_code and error.exit_code > 0 else 1
    return 0


def _submit(args: argparse.Namespace, cfg: Any, argv: list[str]) -> int:
    """``--submit slurm``: the checks that can fail here, then the same command as a Slurm job.

    Each task runs one process (``--num-gpus-per-machine 1`` on a GPU, ``0`` on a CPU node); the
    requeued run continues with ``--resume auto``.
    """
    _check_inputs(cfg)
    _check_dist_url(args.dist_url)
    folder = _serialization_dir(args.serialization_dir)
    if not (args.resume_from or args.resume or args.overwrite):
        _claim(folder, args)  # refuses an earlier run now rather than in the job
    per_task = ["--num-gpus-per-machine", "1" if args.gpus_per_node else "0"]
    first = replace_flags(without_submit_flags(argv), {"--num-gpus-per-machine": 1, "--serialization-dir": 1},
                          ["--serialization-dir", str(folder), *per_task])
    resume_flags = {"--overwrite": 0, "--resume": 1, "--resume-from": 1}
    restart = replace_flags(first, resume_flags, ["--resume", "auto"])
    fresh = replace_flags(first, resume_flags, ["--overwrite"])  # requeued before the first checkpoint
    for line in (first, restart, fresh):  # the job's command lines parse, and none submits again
        parsed = build_parser().parse_args(line)
        if parsed.submit or parsed.slurm_dry_run:
            raise UserError("write the submission flags in full (--submit, --slurm-...), so that the job's own "
                            "command line leaves them out", 2)
    return submit_command(args, "pretrain", first, restart, folder, name="refers-pretrain",
                          resume_glob=str(folder / "checkpoint_*.pth"), fresh_argv=fresh)


# ----------------------------------------------------------------------------------------------
# Checks that must fail at once, with a message saying what to pass instead.
# ----------------------------------------------------------------------------------------------
def _load_config(args: argparse.Namespace) -> Any:
    from refers.config import ConfigError, load_config

    overrides = list(args.config_override)
    if args.no_flip:
        overrides += ["DATA.HORIZONTAL_FLIP", "false"]
    for flag, key in (("keep_checkpoints", "CHECKPOINT.KEEP_LAST"), ("keep_every", "CHECKPOINT.KEEP_EVERY")):
        if getattr(args, flag) is not None:  # the flag overrides the config's key
            overrides += [key, str(getattr(args, flag))]
    try:
        return load_config(args.config, overrides)
    except ConfigError as error:
        raise UserError(str(error), 2) from None
    except FileNotFoundError as error:
        raise UserError(str(error), 2) from None


def _check_devices(requested: int | None, torchrun: bool) -> int:
    """GPUs per machine to use (0 = CPU); exit 2 when more are asked for than exist."""
    import torch

    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if requested is None:
        return 1 if visible else 0
    if requested < 0:
        raise UserError("--num-gpus-per-machine must be >= 0", 2)
    if requested > visible:
        where = "no GPU is visible (torch.cuda.is_available() is False)" if not visible else f"only {visible} GPU(s) are visible"
        fix = "--num-gpus-per-machine 0 to train on the CPU" if not visible else f"--num-gpus-per-machine {visible} or fewer"
        raise UserError(f"--num-gpus-per-machine {requested} asks for GPUs but {where}; pass {fix}", 2)
    if torchrun and requested > 1:
        raise UserError("under torchrun each process takes one GPU: pass --num-gpus-per-machine 1 (or 0 for CPU)", 2)
    return requested


def _check_inputs(cfg: Any) -> None:
    from refers.config import config_path
    from refers.text.bert import BertNotFoundError, bert_dir

    try:
        bert_dir(cfg)
    except BertNotFoundError as error:
        raise UserError(str(error), 2) from None
    train_list = config_path(cfg.DATA.TRAIN_LIST)
    if train_list is None or not train_list.is_file():
        raise UserError(
            f"DATA.TRAIN_LIST {train_list} does not exist: prepare MIMIC-CXR first ('refers prepare mimic'), or pass "
            "--config-override DATA.TRAIN_LIST <list> DATA.IMAGE_ROOT <folder>"
        )


def _check_dist_url(value: str) -> None:
    url = urlparse(value)
    if url.scheme not in ("tcp", "env") or (url.scheme == "tcp" and not (url.hostname and url.port)):
        raise UserError(f"--dist-url must look like tcp://HOST:PORT (or env:// to use MASTER_ADDR/MASTER_PORT), got {value!r}", 2)


def _serialization_dir(value: str | None) -> Path:
    from refers.base.atomic import check_output_dir
    from refers.base.paths import project_root

    folder = check_output_dir(Path(value) if value else project_root() / "Pre-train" / "runs" / "refers",
                              "--serialization-dir")
    folder.mkdir(parents=True, exist_ok=True)
    return folder.resolve()


def _claim(folder: Path, args: argparse.Namespace) -> None:
    """A fresh start must not mix into an earlier run's folder: refused, or (``--overwrite``) that run removed."""
    from refers.base.earlier_runs import claim_run_folder
    from refers.engine.pretrain_loop import run_leftovers, run_outputs

    instead = ("it has no checkpoint to continue from; choose another --serialization-dir" if args.resume
               else "continue it with --resume auto")
    # Every process checks (before the rendezvous, so before any writes); one removes.
    first = args.machine_rank == 0 and os.environ.get("RANK", "0") == "0"
    removed = claim_run_folder(run_outputs(folder), where=f"--serialization-dir {folder}", instead=instead,
                               overwrite=args.overwrite, remove=first, leftovers=run_leftovers(folder))
    if removed and first:
        print(f"{PROG}: --overwrite: removed {len(removed)} file(s) and folder(s) of the earlier run in {folder}", file=sys.stderr)


def _resume_path(value: str | None, folder: Path) -> Path | None:
    from refers.engine.train_state import resolve_resume

    path = resolve_resume(value, folder)  # FileNotFoundError -> one-line error, exit 1
    if value == "auto" and path is None:
        print(f"{PROG}: --resume auto: no checkpoint in {folder} yet, starting from iteration 0", file=sys.stderr)
    return path


# ----------------------------------------------------------------------------------------------
# Preparation on rank 0.
# ----------------------------------------------------------------------------------------------
def _ensure_tokenizers(cfg: Any) -> None:
    """Train the report tokenizers from the training reports when the configured files are missing."""
    from refers.text.training import ensure_tokenizers

    try:
        ensure_tokenizers(cfg, log=lambda message: print(f"{PROG}: {message}", file=sys.stderr))
    except ValueError as error:
        raise UserError(str(error)) from None


def _write_run_info(folder: Path, argv: list[str], cfg: Any, gpus: int, world: int) -> None:
    import yaml

    from refers.config import config_path
    from refers.data.pretrain_dataset import resolve_image_root
    from refers.base.synthetic import is_synthetic
    from refers.engine.run_info import write_run_info

    train_list = config_path(cfg.DATA.TRAIN_LIST)
    synthetic = is_synthetic(resolve_image_root(cfg, train_list), train_list)
    device = f"cuda x {gpus} per machine" if gpus else "cpu"
    write_run_info(folder, argv, yaml.safe_dump(cfg.to_dict(), sort_keys=False), device, world, synthetic)


# ----------------------------------------------------------------------------------------------
# One training process.
# ----------------------------------------------------------------------------------------------
def _spawned(local_rank: int, launch: dict[str, Any]) -> None:
    try:
        code = _worker(local_rank, launch)
    except UserError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        code = error.exit_code
    if code:
        sys.exit(code)


def _worker(local_rank: int, launch: dict[str, Any], from_env: bool = False) -> int:
    """One training process: join the process group (several processes), train, leave it."""
    from refers.engine.distributed import cleanup, init_distributed

    args = launch["args"]
    gpus = launch["gpus"]
    if not from_env:
        world = args["num_machines"] * max(gpus, 1)
        if world > 1:
            url = urlparse(args["dist_url"])
            if url.scheme == "tcp":
                os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = url.hostname, str(url.port)
            os.environ.update(RANK=str(args["machine_rank"] * max(gpus, 1) + local_rank), WORLD_SIZE=str(world),
                              LOCAL_RANK=str(local_rank))
    info = init_distributed(device="cuda" if gpus else "cpu")
    try:
        return _train_process(launch, info)
    finally:
        cleanup(info)


def _train_process(launch: dict[str, Any], info: Any) -> int:
    args = launch["args"]
    folder = Path(launch["folder"])
    _setup_logging(folder, info.rank)
    try:
        return _train(launch, info, folder, args)
    finally:
        _close_logging()  # a caller in the same process (tests, notebooks) logs nothing more into this run's log.txt


def _train(launch: dict[str, Any], info: Any, folder: Path, args: dict[str, Any]) -> int:
    from refers.config import Config
    from refers.engine.distributed import barrier
    from refers.engine.pretrain_loop import LoopOptions, run_pretraining
    from refers.engine.pretrain_parts import build_refers_parts

    cfg = Config.from_dict(launch["cfg"])
    if info.is_main:  # the others wait at the barrier until the tokenizers exist
        _ensure_tokenizers(cfg)
        _write_run_info(folder, launch["argv"], cfg, launch["gpus"], info.world_size)
    barrier(info)
    options = LoopOptions(
        serialization_dir=folder,
        checkpoint_every=args["checkpoint_every"],
        log_every=args["log_every"],
        cpu_workers=args["cpu_workers"],
        resume_from=Path(launch["resume"]) if launch["resume"] else None,
        log_text=args["log_text"],
        progress=not args["no_progress"],
        export_at_end=not args["no_export"],
        compile=args["compile"],
        argv=launch["argv"],
    )
    return run_pretraining(cfg, options, info, build_refers_parts)


class _TqdmHandler(logging.StreamHandler):
    """Log lines that do not break the progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        try:
            tqdm.write(self.format(record), file=sys.stdout)
        except Exception:  # noqa: BLE001 - logging must never crash training
            self.handleError(record)


def _close_logging() -> None:
    """Remove the handlers :func:`_setup_logging` added (closing the log file)."""
    logger = logging.getLogger("refers")
    for handler in [h for h in logger.handlers if getattr(h, "_refers_pretrain", False)]:
        logger.removeHandler(handler)
        handler.close()
    logger.propagate = True


def _setup_logging(folder: Path, rank: int) -> None:
    """Rank 0 logs INFO to stdout and ``{folder}/log.txt``; other ranks log warnings only."""
    _close_logging()
    logger = logging.getLogger("refers")
    formatter = logging.Formatter(f"%(asctime)s {'' if rank == 0 else f'[rank {rank}] '}%(levelname)s %(message)s", "%H:%M:%S")
    handlers: list[logging.Handler] = [_TqdmHandler()]
    if rank == 0:
        from refers.engine.pretrain_loop import LOG_NAME

        handlers.append(logging.FileHandler(folder / LOG_NAME, encoding="utf-8"))
    for handler in handlers:
        handler.setFormatter(formatter)
        handler._refers_pretrain = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    logger.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    logger.propagate = False

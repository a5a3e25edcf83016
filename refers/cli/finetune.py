"""``refers finetune`` (= ``Fine-tune/train.py``): fine-tune on a downstream dataset, or test with ``--stage test``.

Runs as one process or under ``torchrun`` / ``python -m torch.distributed.launch`` (gloo on a CPU),
with the original ``train.py``'s flags; see :mod:`refers.finetune.config`. The work itself is
:func:`refers.finetune.stages.run`. ``--submit slurm`` (:mod:`refers.cli.submit`) runs the same
command as a Slurm job that resumes (``--resume``) after a requeue at its time limit.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

from refers.base.errors import UserError as UserError
from refers.cli.common import command
from refers.cli.submit import replace_flags, submit_command, submit_parser, without_submit_flags
from refers.finetune.stages import run, setup_logging

__all__ = ["main", "run", "setup_logging"]

PROG = "refers finetune"


@command(PROG)
def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        print(submit_parser().format_help().strip("\n"), end="\n\n")  # the cluster flags, then train.py's
    from refers.finetune.config import build_parser

    own = [flag for action in build_parser(PROG)._actions for flag in action.option_strings]
    submit, _ = submit_parser().parse_known_args(without_own_flags(argv, own))
    if not submit.submit:
        return run(argv, PROG, stage="train")
    return _submit(submit, without_submit_flags(argv, own))


def without_own_flags(argv: list[str], own: list[str]) -> list[str]:
    """``argv`` without train.py's own flags, so that an abbreviation such as ``--gpu`` (an original
    flag) is not read as ``--gpus-per-node`` when looking for the submission flags."""
    return [token for token in argv if token.split("=", 1)[0] not in own]


def _submit(submit, argv: list[str]) -> int:
    """The flags are checked here (as the job will parse them), then the command goes to Slurm."""
    from refers.finetune.config import parse_args

    from refers.engine.distributed import DistInfo
    from refers.finetune.train import check_outputs
    from refers.finetune.run_files import checkpoint_paths

    args = parse_args(argv, PROG, "train")
    if args.stage != "train":
        raise UserError("--submit slurm runs fine-tuning (--stage train); run testing directly", 2)
    if not (args.resume or args.overwrite):
        check_outputs(args, DistInfo())  # an earlier run in the folders is refused now, not in the job
    restart = replace_flags(argv, {"--overwrite": 0, "--resume": 0}, ["--resume"])
    fresh = replace_flags(argv, {"--overwrite": 0, "--resume": 0}, ["--overwrite"])  # requeued before any save
    for line in (restart, fresh):
        parse_args(line, PROG, "train")
    state = checkpoint_paths(args.output_dir, args.name)["state"]
    return submit_command(submit, "finetune", argv, restart, Path(args.output_dir).resolve(),
                          name=f"refers-finetune-{args.name}", resume_glob=str(Path(state).resolve()), fresh_argv=fresh)

"""Running a fine-tuning stage from its command-line arguments: what ``refers finetune`` / ``refers test`` do.

The commands (:mod:`refers.cli.finetune`, :mod:`refers.cli.test`) and the sweep's in-process runs
(:mod:`refers.sweep_runner`) both come here, so that a run gives the same output and exit code
either way.
"""

from __future__ import annotations

import logging
import sys
from typing import Sequence

from refers.base.errors import UnreadableImageError, UserError, reporting_errors

# command name -> (prog, stage)
COMMANDS: dict[str, tuple[str, str]] = {"finetune": ("refers finetune", "train"), "test": ("refers test", "test")}


def setup_logging(is_main: bool) -> None:
    """INFO on rank 0, warnings only on the other ranks (the original's choice)."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S",
                        level=logging.INFO if is_main else logging.WARNING)
    logging.getLogger("refers").setLevel(logging.INFO if is_main else logging.WARNING)


def run(argv: Sequence[str] | None, prog: str, stage: str) -> int:
    """Parse, start the process group, train or test, and always leave the group."""
    from refers.finetune.config import parse_args

    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv, prog, stage)

    from refers.engine.distributed import cleanup, init_distributed

    code = 0
    info = init_distributed(args.local_rank if args.local_rank >= 0 else None, args.device)
    setup_logging(info.is_main)
    try:
        if args.stage == "train":
            from refers.finetune.train import train

            code = train(args, info, argv).exit_code  # 128 + signal when SIGTERM/SIGINT/SIGUSR2 stopped it
        else:
            from refers.finetune.testing import run_test

            outcome = run_test(args, info)
            if info.is_main:
                low, high = outcome.ci
                print(f"mean AUC {outcome.mean_auc:.4f} (95% CI {low:.4f}-{high:.4f}) on {outcome.n_images} test images; "
                      f"predictions in {outcome.folder}")
    except UnreadableImageError as error:
        raise UserError(str(error).strip().splitlines()[-1].split("UnreadableImageError: ", 1)[-1]) from None
    finally:
        cleanup(info)
    return code


def run_command(argv: Sequence[str]) -> int:
    """``["finetune" | "test", *flags]`` as the command runs it: expected errors as one line and an exit code."""
    prog, stage = COMMANDS[argv[0]]
    return reporting_errors(prog)(lambda rest: run(rest, prog, stage))(list(argv[1:]))

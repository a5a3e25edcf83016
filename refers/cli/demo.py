"""``refers demo``: the whole REFERS pipeline on built-in synthetic data (what ``make demo`` runs)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from refers.base.errors import UserError as UserError
from refers.cli.common import command


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="refers demo",
        description="Synthetic data -> preparation -> REFERS pre-training -> fine-tuning from the pre-trained "
                    "encoder and from scratch -> test -> results table, on the CPU. Every command is logged in "
                    "<out>/commands.sh so that any stage can be repeated by hand.",
    )
    p.add_argument("--out", default="demo_output", help="output folder (emptied first if it holds an earlier demo)")
    p.add_argument("--full", action="store_true",
                   help="add the ablation: pre-training arms caption_only, contrast_only, shuffled (image-report pairs "
                        "shuffled) and two_view, fine-tuned on the NIH-format set (several times as long)")
    p.add_argument("--quick", action="store_true", help="a reduced pipeline in about a minute (for tests; numbers meaningless)")
    p.add_argument("--studies", type=int, default=None, help="pre-training studies to synthesise (default: from the profile)")
    p.add_argument("--quiet", action="store_true", help="do not stream the stages' own output (it still goes to <out>/logs)")
    return p


@command("refers demo")
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.full and args.quick:
        raise UserError("--full and --quick exclude each other", exit_code=2)
    from refers.demo import DemoError, load_profile, run_demo

    # checked before any stage runs (--studies, the profile, its presets and sweep): a ConfigError exits 2
    profile = load_profile("quick" if args.quick else "full" if args.full else "default", args.studies)
    try:
        run_demo(Path(args.out), profile, stream=not args.quiet)
    except DemoError as error:
        raise UserError(str(error)) from None
    return 0

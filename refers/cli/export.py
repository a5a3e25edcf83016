"""``refers export``: the image encoder of a pre-training checkpoint, for fine-tuning; or, with
``--dual-encoder``, both encoders for zero-shot classification and retrieval.

By default it writes a flat state dict in the original REFERS key naming (``transformer.embeddings...``,
separate q/k/v), like the released ``refers_checkpoint.pth``, so this project's ``Fine-tune/`` scripts
and the original fine-tuning code both load it. Pre-training does this by itself at the end of a run
(``{serialization-dir}/refers_checkpoint.pth``).

``--dual-encoder --out DIR`` writes a folder instead: the image encoder, the report encoder (BERT and
its projection into the contrast space) as safetensors, the report tokenizer, a config.json with
the sha256 of every file, and a MODEL_CARD.md; load it with ``refers.load_dual_encoder(DIR)``.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import Sequence

from refers.base.atomic import atomic_output, check_output_dir, check_output_file
from refers.base.errors import UserError as UserError
from refers.cli.common import command

PROG = "refers export"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="a pre-training checkpoint_{iteration}.pth")
    parser.add_argument("--out", default=None, help="output file (default: refers_checkpoint.<format> beside the checkpoint)")
    parser.add_argument("--to", default=None, metavar="DIR",
                        help="also copy it into DIR as refers_checkpoint.<format> (e.g. Fine-tune/checkpoint/, where the "
                             "original README expects it)")
    parser.add_argument("--format", choices=["pth", "safetensors"], default="pth", help="file format (default pth)")
    parser.add_argument("--dual-encoder", action="store_true",
                        help="export both encoders, the projection and the tokenizer into the folder --out (safetensors)")
    return parser


@command(PROG)
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from refers.base.checkpoints import UnsafeCheckpointError
    from refers.engine.export import export_checkpoint

    checkpoint = Path(args.checkpoint)
    if args.dual_encoder:
        return _export_dual_encoder(args, checkpoint)
    out = Path(args.out) if args.out else checkpoint.parent / f"refers_checkpoint.{args.format}"
    if out.resolve() == checkpoint.resolve():
        raise UserError(f"--out {out} would overwrite the checkpoint it reads", 2)
    check_output_file(out, "--out")  # before any work
    if args.to:
        check_output_dir(args.to, "--to")
    try:
        written = export_checkpoint(checkpoint, out, args.format)
    except (UnsafeCheckpointError, ValueError) as error:
        raise UserError(str(error)) from None
    print(f"wrote {written} (image encoder, original key naming)")
    if args.to:
        folder = Path(args.to)
        folder.mkdir(parents=True, exist_ok=True)
        for source in (written, written.with_name(written.name + ".json")):
            target = folder / ("refers_checkpoint." + args.format + (".json" if source.suffix == ".json" else ""))
            if source.is_file() and source.resolve() != target.resolve():
                with atomic_output(target) as tmp:
                    shutil.copyfile(source, tmp)
        print(f"copied to {folder / ('refers_checkpoint.' + args.format)}")
    return 0


def _export_dual_encoder(args: argparse.Namespace, checkpoint: Path) -> int:
    from refers.base.checkpoints import UnsafeCheckpointError
    from refers.engine.export import export_dual_encoder

    if not args.out:
        raise UserError("--dual-encoder needs --out DIR (the folder to write)", 2)
    if args.to or args.format != "pth":
        raise UserError("--to and --format are for the image-encoder export; --dual-encoder writes safetensors into --out", 2)
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"--out {out} exists and is not an empty folder; choose another", 2)
    check_output_dir(out, "--out")
    if not checkpoint.is_file():
        raise UserError(f"{checkpoint}: no such checkpoint file")
    try:
        written = export_dual_encoder(checkpoint, out)
    except (UnsafeCheckpointError, ValueError, FileNotFoundError) as error:
        raise UserError(str(error)) from None
    print(f"wrote {written}/ (dual encoder: image and report encoders, tokenizer, config.json, MODEL_CARD.md); "
          "load it with refers.load_dual_encoder")
    return 0

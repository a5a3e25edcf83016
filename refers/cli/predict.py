"""``refers predict``: score PNG/JPEG/DICOM images with a fine-tuned checkpoint, as a CSV of probabilities."""

from __future__ import annotations

import argparse
from typing import Sequence

from refers.base.errors import UserError as UserError
from refers.cli.common import command


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="refers predict", description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a fine-tuned checkpoint ({name}_bestauc_checkpoint.bin)")
    p.add_argument("--images", nargs="+", required=True, help="image files and/or folders (searched recursively)")
    p.add_argument("--out", default="preds.csv", help="CSV to write: image, then one probability column per class")
    p.add_argument("--model_type", default=None, help="only for checkpoints without metadata whose shapes do not tell it")
    p.add_argument("--img_size", type=int, default=None, help="default: the checkpoint's")
    p.add_argument("--dataset", default=None, help="names the classes of a checkpoint without metadata")
    p.add_argument("--batch_size", type=int, default=32, help="images per forward pass")
    p.add_argument("--skip_bad_images", action="store_true", help="skip unreadable images instead of stopping")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda when available")
    return p


@command("refers predict")
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.batch_size < 1:
        raise UserError("--batch_size must be >= 1", exit_code=2)

    import logging

    from refers.base.atomic import check_output_file
    from refers.base.errors import UnreadableImageError
    from refers.engine.distributed import DistInfo, resolve_device
    from refers.finetune.predict import predict

    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.INFO)
    device = resolve_device(args.device)
    check_output_file(args.out, "--out")  # before the model loads
    try:
        out = predict(args.checkpoint, args.images, args.out, args.model_type, args.img_size, args.dataset,
                      args.batch_size, args.skip_bad_images, DistInfo(device=device))
    except UnreadableImageError as error:
        raise UserError(f"{str(error).strip().splitlines()[-1]} (--skip_bad_images skips it)") from None
    except KeyError as error:  # an unknown --dataset
        raise UserError(str(error).strip("'\""), exit_code=2) from None
    print(out)
    return 0

"""``refers generate``: write a report for a study folder with a pre-trained REFERS model.

As in training, up to ``DATA.NUM_VIEWS`` images of the folder (repeated when it has fewer) go
through the shared encoder, their patch tokens are gated across views into one memory, and the
report decoder writes from it: greedy (``--beam-size 1``) or beam search. (The original's unused
beam search decoded from view 1 only, for 30 steps.)
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from refers.base.errors import UserError as UserError
from refers.cli.common import command

PROG = "refers generate"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a pre-training checkpoint_{iteration}.pth")
    parser.add_argument("--study", required=True, nargs="+", help="study folder(s) holding the views (PNG/JPEG)")
    parser.add_argument("--beam-size", type=int, default=1, help="1 = greedy decoding (default)")
    parser.add_argument("--max-length", type=int, default=None, help="tokens to generate at most (default DATA.MAX_CAPTION_LENGTH)")
    parser.add_argument("--out", default=None, help="also write the reports to this file (study<TAB>report per line)")
    return parser


@command(PROG)
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.beam_size < 1 or (args.max_length is not None and args.max_length < 1):
        raise UserError("--beam-size and --max-length must be >= 1", 2)
    import torch

    from refers.config import Config, config_path
    from refers.base.atomic import atomic_write_text
    from refers.base.synthetic import is_synthetic
    from refers.engine.train_state import load_state
    from refers.models.refers_model import build_refers_model
    from refers.text.report_tokenizer import ReportTokenizer

    checkpoint = Path(args.checkpoint)
    try:
        state = load_state(checkpoint)
    except ValueError as error:
        raise UserError(str(error)) from None
    saved = state["config"]
    saved["MODEL"]["VISUAL"]["PRETRAINED"] = ""  # the checkpoint holds the weights
    cfg = Config.from_dict(saved)
    model = build_refers_model(cfg)
    model.load_state_dict(state["model"])
    model.eval()
    tokenizer = ReportTokenizer(config_path(cfg.DATA.TOKENIZER_MODEL))
    images = torch.stack([_study_views(cfg, Path(folder)) for folder in args.study])
    ids = model.generate(images, max_length=args.max_length or cfg.DATA.MAX_CAPTION_LENGTH, beam_size=args.beam_size)
    reports = [tokenizer.decode(row) for row in ids]
    stamp = "[SYNTHETIC model] " if is_synthetic(checkpoint.parent) else ""
    for folder, report in zip(args.study, reports):
        print(f"{stamp}{folder}\t{report}")
    if args.out:
        atomic_write_text(args.out, "".join(f"{stamp}{f}\t{r}\n" for f, r in zip(args.study, reports)))
    return 0


def _study_views(cfg, folder: Path):
    """The study's views as the model takes them in validation: float [V, 3, S, S]."""
    import torch

    from refers.data.images import open_grey
    from refers.data.mimic_lists import list_study_images
    from refers.data.pretrain_dataset import OTHER, choose_views
    from refers.data.device_transforms import build_view_transform, to_model_input

    files = list_study_images(folder)
    if not files:
        raise UserError(f"{folder}: no PNG/JPEG images in this study folder")
    transform = build_view_transform(cfg, train=False)
    chosen = choose_views([OTHER] * len(files), cfg.DATA.NUM_VIEWS)  # view names unknown: file order
    views = torch.stack([transform(open_grey(files[i], min_side=cfg.DATA.IMAGE_MIN_SIDE or None)) for i in chosen])
    return to_model_input(views, "cpu")

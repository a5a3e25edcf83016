"""``refers zeroshot``: classify a dataset's test images without labels, from text prompts.

For each class, its positive prompts ("There is a right pleural effusion.") and negative prompts
("No pleural effusion.") are embedded by the report encoder and averaged; each test image is
embedded by the image encoder, and its score is softmax([s+, s-] / tau)[0] with the model's contrast
temperature. Default prompts: configs/prompts/<dataset>.yaml (editable; --prompts FILE for others).

Writes test.py's prediction files under <results_dir>/<Dataset>/zeroshot/<method>/seed0/, which
`refers results` tables as the row "zeroshot" beside the label fractions, with the same intervals
and DeLong tests.
"""

from __future__ import annotations

import argparse
from typing import Sequence

from refers.cli.common import command

PROG = "refers zeroshot"


def build_parser() -> argparse.ArgumentParser:
    from refers.finetune.config import DATASET_CHOICES

    parser = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, metavar="DIR_OR_CHECKPOINT",
                        help="a folder of refers export --dual-encoder, or a pre-training checkpoint_<n>.pth")
    parser.add_argument("--dataset", required=True, choices=DATASET_CHOICES, help="whose test list to score")
    parser.add_argument("--prompts", default=None, metavar="FILE", help="prompt file (default configs/prompts/<dataset>.yaml)")
    parser.add_argument("--results_dir", "--results-dir", default=None,
                        help="where the prediction files go (default the project's Results_of_fine-tuning/)")
    parser.add_argument("--method", default="REFERS", help="method folder name (default REFERS)")
    parser.add_argument("--list_dir", "--list-dir", default=None, help="folder of test.txt (default DataProcessed/<Dataset>/)")
    parser.add_argument("--data_root", "--data-root", default=None, help="image folder (default as fine-tuning finds it)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default 64)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: the GPU when there is one)")
    parser.add_argument("--overwrite", action="store_true", help="replace earlier results of another model or prompt file")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


@command(PROG)
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from refers.base.errors import UserError

    if args.batch_size < 1:
        raise UserError("--batch-size must be >= 1", 2)
    from refers.crossmodal.zeroshot import run_zeroshot

    outcome = run_zeroshot(args.model, args.dataset, args.prompts, args.results_dir, args.method, args.list_dir,
                           args.data_root, args.batch_size, args.device, args.overwrite, progress=not args.no_progress)
    stamp = "SYNTHETIC " if outcome.synthetic else ""
    low, high = outcome.ci
    print(f"{stamp}zero-shot mean AUC {outcome.mean_auc:.4f} (95% CI {low:.4f}-{high:.4f}) on {outcome.n_images} test "
          f"images; prediction files in {outcome.folder}")
    return 0

"""``refers synth``: write synthetic datasets in the official on-disk layouts of the real ones.

Example::

    refers synth --out Data --studies 2000            # all five datasets under Data/
    refers synth --out /tmp/d --datasets nih vinbig --image-size 1024
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from refers.base.errors import UserError as UserError
from refers.cli.common import command
from refers.data.registry import get_dataset

PROG = "refers synth"
DATASET_ORDER = ("MIMIC-CXR", "NIH_ChestX-ray", "Shenzhen_Tuberculosis", "COVID-19_Image_Data_Collection",
                 "VinBigData_Chest_X-ray", "IU_X-ray")
DEFAULT_DATASETS = DATASET_ORDER[:5]  # the paper's; IU X-ray only with --datasets iu


def _positive(minimum: int, maximum: int | None = None):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum or (maximum is not None and value > maximum):
            bound = f"between {minimum} and {maximum}" if maximum is not None else f"at least {minimum}"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {value}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Generate synthetic chest X-ray datasets (images, reports, labels) in the official on-disk "
                    "layouts of MIMIC-CXR-JPG, NIH ChestX-ray14, Shenzhen, COVID-19 Image Data Collection, "
                    "VinBigData and (with --datasets iu) IU X-ray. Every dataset folder gets a SYNTHETIC.txt marker.")
    parser.add_argument("--out", required=True, help="parent folder; datasets go to OUT/<dataset name>/")
    parser.add_argument("--studies", type=_positive(10), default=2000,
                        help="MIMIC pre-training studies; the other datasets scale with it (default 2000: NIH and "
                             "VinBigData test sets of >= 1,000 images)")
    parser.add_argument("--seed", type=_positive(0), default=0, help="random seed; same seed, same bytes (default 0)")
    parser.add_argument("--image-size", type=_positive(32, 4096), default=128,
                        help="side of the square images in pixels (default 128)")
    parser.add_argument("--datasets", nargs="+", default=None, metavar="NAME",
                        help="subset to write: folder names or aliases (mimic nih shenzhen covid vinbig iu); default the first five "
                             "(IU X-ray, the Open-i layout, only when named)")
    parser.add_argument("--workers", type=_positive(1, 64), default=None,
                        help="rendering processes (default: up to 2)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def _resolve(names: Sequence[str] | None, parser: argparse.ArgumentParser) -> list[str]:
    if not names:
        return list(DEFAULT_DATASETS)
    chosen = []
    for name in names:
        try:
            spec = get_dataset(name)
        except KeyError as error:
            parser.error(str(error.args[0]))
        if spec.name not in chosen:
            chosen.append(spec.name)
    return [name for name in DATASET_ORDER if name in chosen]


@command(PROG)
def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    datasets = _resolve(args.datasets, parser)
    from refers.data.synth.generate import synthesise

    synthesise(args.out, studies=args.studies, seed=args.seed, image_size=args.image_size, datasets=datasets,
               workers=args.workers, progress=not args.no_progress)
    return 0


if __name__ == "__main__":
    sys.exit(main())

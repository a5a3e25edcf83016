"""``refers retrieval``: image-to-report and report-to-image retrieval on a study index.

Recall@1/5/10 and median rank of the exact partner, "same findings" recall@K (a hit when a retrieved
report has the query's set of positive CheXpert findings), and the CheXpert 5x200-style protocol
(--per-class studies of each of five classes with that single finding, sampled by --seed), each with
a 95% bootstrap interval. Writes retrieval.json and retrieval.md (default:
Results_of_fine-tuning/retrieval/<dataset>_<split>/<method>/), which `refers results` shows.
"""

from __future__ import annotations

import argparse
from typing import Sequence

from refers.cli.common import command

PROG = "refers retrieval"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, metavar="DIR_OR_CHECKPOINT",
                        help="a folder of refers export --dual-encoder, or a pre-training checkpoint_<n>.pth")
    parser.add_argument("--studies", required=True, metavar="INDEX",
                        help="a study index, e.g. DataProcessed/MIMIC/test_studies.jsonl or DataProcessed/IU_X-ray/test_studies.jsonl")
    parser.add_argument("--out", default=None, help="output folder (default Results_of_fine-tuning/retrieval/<dataset>_<split>/<method>/)")
    parser.add_argument("--method", default="REFERS", help="method name of the output folder (default REFERS)")
    parser.add_argument("--data_root", "--data-root", default=None, help="image folder (default: the index's dataset.yaml image_root)")
    parser.add_argument("--bootstrap", type=int, default=1000, metavar="N", help="bootstrap resamples of the queries; 0 = no intervals")
    parser.add_argument("--per-class", type=int, default=200, help="studies per class of the 5x200 protocol (default 200)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the 5x200 sample and of the bootstrap (default 0)")
    parser.add_argument("--batch-size", type=int, default=64, help="studies per forward pass (default 64)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: the GPU when there is one)")
    parser.add_argument("--overwrite", action="store_true", help="replace another model's results in --out")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


@command(PROG)
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from refers.base.errors import UserError

    if args.batch_size < 1 or args.per_class < 1 or args.bootstrap < 0:
        raise UserError("--batch-size and --per-class must be >= 1, --bootstrap >= 0", 2)
    from refers.crossmodal.retrieval import RESULT_MD, run_retrieval

    outcome = run_retrieval(args.model, args.studies, args.out, args.method, args.data_root, args.bootstrap,
                            args.per_class, args.seed, args.batch_size, args.device, args.overwrite,
                            progress=not args.no_progress)
    part = outcome.report["all_studies"]
    stamp = "SYNTHETIC " if outcome.report["synthetic"] else ""
    r5 = part["image_to_report"]["R@5"]["value"]
    print(f"{stamp}image-to-report recall@5 {r5:.3f} on {part['n']} studies (chance {part['chance']['R@5']:.3f}); "
          f"tables in {outcome.folder / RESULT_MD}")
    return 0

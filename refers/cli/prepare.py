"""``refers prepare``: build the lists, labels and prepared images every later step reads.

  refers prepare mimic     [--root Data/MIMIC-CXR] [--out DataProcessed/MIMIC] [--short-side 320] ...
  refers prepare nih       --split original --lists DIR | official | patient  [--metadata FILE]
  refers prepare shenzhen  [--split patient | original --lists DIR]
  refers prepare covid     [--views all|frontal] [--split patient | original --lists DIR]
  refers prepare vinbig    [--scale 0.25 | --max-size N] [--label-rule union|majority] [--split patient | original --lists DIR]
  refers prepare iu        [--root Data/IU_X-ray] [--out DataProcessed/IU_X-ray] [--projections indiana_projections.csv]

--split original writes the published lists line for line; where the metadata's labels differ, the
published ones are kept (--labels metadata takes the metadata's) and label_differences.tsv says where.
  refers prepare fractions --dataset D --percent 1 10 --seeds 0 1 2 [--val-percent 10]
  refers prepare pack      --dataset D [--size 256] [--out DIR]      (optional memory-mapped image cache)
  refers prepare check     --dataset D [--lists DIR] [--images DIR]

Defaults resolve from the project root: raw data in Data/<Dataset>/, lists in
DataProcessed/<Dataset>/, prepared images in Data/<Dataset>/prepared/. Existing lists are never
overwritten without --force.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from refers.base.errors import UserError as UserError
from refers.cli.common import command
from refers.prepare.run import DATASET_COMMANDS, NIH_SHORT_SIDE, prepare_dataset

PROG = "refers prepare"


def _common(parser: argparse.ArgumentParser, images: bool = False, split: bool = False, skip: bool = True) -> None:
    parser.add_argument("--root", type=Path, help="the dataset's download folder (default Data/<Dataset>/)")
    parser.add_argument("--out", type=Path, help="where the lists go (default DataProcessed/<Dataset>/)")
    parser.add_argument("--force", action="store_true", help="overwrite existing lists")
    if skip:  # (shenzhen lists what is on disk, so it has nothing to skip)
        parser.add_argument("--skip-bad-images", action="store_true",
                            help="leave missing or unreadable images out of the lists instead of stopping")
    parser.add_argument("--workers", type=int,
                        help="processes for image work (mimic, vinbig; default: CPU cores, at most 8); "
                             "the list-only commands accept it so that scripts can pass it to all")
    if images:
        parser.add_argument("--images-out", type=Path, help="prepared images (default <root>/prepared/)")
    if split:
        parser.add_argument("--seed", type=int, default=0, help="split seed (default 0)")
        parser.add_argument("--ratios", type=float, nargs=3, default=(0.7, 0.1, 0.2), metavar=("TRAIN", "VAL", "TEST"),
                            help="split shares (default 0.7 0.1 0.2)")


def _labels_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--labels", choices=("published", "metadata"), default="published",
                        help="with --split original, where a published line's labels differ from the metadata's: keep the "
                             "published ones (default; they define the benchmark) or take the metadata's")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="action", required=True, metavar="{mimic,nih,shenzhen,covid,vinbig,iu,fractions,pack,check}")

    mimic = sub.add_parser("mimic", help="MIMIC-CXR-JPG + reports: resized images, caption/study lists, study index")
    _common(mimic, images=True)
    mimic.add_argument("--reports", type=Path, help="report folder (files/pXX/pSUBJECT/sSTUDY.txt) or mimic-cxr-reports.zip (default --root)")
    mimic.add_argument("--short-side", type=int, default=320, help="shorter side of the resized images (default 320, the original's)")
    mimic.add_argument("--sections", nargs="+", default=["findings", "impression"],
                       help="report sections used as text, in order (default findings impression)")

    nih = sub.add_parser("nih", help="NIH ChestX-ray14: train/val/test lists from Data_Entry_2017_v2020.csv (or Data_Entry_2017.csv)")
    _common(nih, images=True, split=True)
    nih.add_argument("--short-side", type=int, default=NIH_SHORT_SIDE,
                     help="copy the images at this shorter side into --images-out, 4x faster to decode than the "
                          f"1024x1024 originals (default {NIH_SHORT_SIDE}; 0 keeps the originals)")
    nih.add_argument("--split", choices=("original", "official", "patient"), default="patient",
                     help="original: the published val/test lists (--lists) and every other image as train; "
                          "official: test_list.txt + validation by patient; patient: seeded patient split (default)")
    nih.add_argument("--lists", type=Path, help="folder with the original's val.txt and test.txt (for --split original)")
    nih.add_argument("--metadata", type=Path,
                     help="the metadata file to read (default: Data_Entry_2017_v2020.csv, else Data_Entry_2017.csv, "
                          "plain or .gz, in --root)")
    _labels_flag(nih)

    for name, text in (("shenzhen", "Shenzhen TB: lists from the file names"), ("covid", "COVID-19 collection: COVID vs others, X-ray only")):
        parser_ = sub.add_parser(name, help=text)
        _common(parser_, split=True, skip=name == "covid")
        parser_.add_argument("--split", choices=("patient", "original"), default="patient",
                             help="patient: seeded, stratified (default); original: the splits of the lists in --lists")
        parser_.add_argument("--lists", type=Path, help="folder with train.txt, val.txt (or valid.txt), test.txt")
        _labels_flag(parser_)
        if name == "covid":
            parser_.add_argument("--views", choices=("all", "frontal"), default="all",
                                 help="all views like the original's lists (default), or PA/AP only")

    vinbig = sub.add_parser("vinbig", help="VinBigData: DICOM -> PNG, union-of-radiologists labels, lists")
    _common(vinbig, images=True, split=True)
    size = vinbig.add_mutually_exclusive_group()
    size.add_argument("--scale", type=float, default=0.25, help="downscale factor (default 0.25)")
    size.add_argument("--max-size", type=int, help="longer side in pixels instead of --scale")
    vinbig.add_argument("--label-rule", choices=("union", "majority"), default="union",
                        help="union: positive if any radiologist boxed the class (default); majority: more than half")
    vinbig.add_argument("--split", choices=("patient", "original"), default="patient",
                        help="patient: seeded (each image its own group; default); original: the published lists in --lists, "
                             "line for line (only their images are converted)")
    vinbig.add_argument("--lists", type=Path, help="folder with the original's train.txt, val.txt, test.txt (for --split original)")
    _labels_flag(vinbig)

    iu = sub.add_parser("iu", help="IU X-ray (Open-i): reports from the XML, MeSH terms as CheXpert labels, study index")
    _common(iu, images=True, split=True)
    iu.add_argument("--projections", type=Path,
                    help="indiana_projections.csv (uid, filename, projection): the images' views; without it they are unknown")
    iu.add_argument("--short-side", type=int, default=320, help="shorter side of the copied images (default 320)")

    fractions = sub.add_parser("fractions", help="label-efficient subsets train_<pct>_seed<k>.txt of train.txt")
    fractions.add_argument("--dataset", required=True, help="nih, vinbig, shenzhen, covid (or a folder name)")
    fractions.add_argument("--lists", type=Path, help="list folder (default DataProcessed/<Dataset>/)")
    fractions.add_argument("--percent", type=float, nargs="+", default=[1.0, 10.0], help="percentages of train.txt (default 1 10)")
    fractions.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="one subset per seed (default 0 1 2)")
    fractions.add_argument("--val-percent", type=float, nargs="*", default=[], help="also subsets of val.txt")
    fractions.add_argument("--force", action="store_true", help="overwrite existing subset files")

    pack = sub.add_parser("pack", help="optional: one memory-mapped file of the resized images of a dataset's lists "
                                       "(no decoding while training; fine-tuning reads it with --packed_cache)")
    pack.add_argument("--dataset", required=True, help="nih, vinbig, shenzhen, covid (or a folder name)")
    pack.add_argument("--lists", type=Path, help="list folder (default DataProcessed/<Dataset>/); all its .txt lists are packed")
    pack.add_argument("--images", type=Path, help="image root (default: dataset.yaml's image_root, else Data/<Dataset>/...)")
    pack.add_argument("--size", type=int, default=256, help="shorter side of the stored images (default 256)")
    pack.add_argument("--out", type=Path, help="pack folder (default Data/<Dataset>/packed_<size>/)")
    pack.add_argument("--workers", type=int, help="decoding processes (default: CPU cores, at most 8)")

    check = sub.add_parser("check", help="check a list folder against its images")
    check.add_argument("--dataset", required=True, help="mimic, nih, vinbig, shenzhen, covid (or a folder name)")
    check.add_argument("--lists", type=Path, help="list folder (default DataProcessed/<Dataset>/)")
    check.add_argument("--images", type=Path, help="image root (default: dataset.yaml's image_root, else Data/<Dataset>/...)")
    check.add_argument("--quick", action="store_true", help="only check that images exist; do not decode them")
    check.add_argument("--workers", type=int, help="processes for decoding (default: CPU cores, at most 8)")
    return parser


def _spec(name: str):
    from refers.data.registry import get_dataset

    try:
        return get_dataset(name)
    except KeyError as error:
        raise UserError(str(error.args[0]), exit_code=2) from None


def _validate(args: argparse.Namespace) -> None:
    """Usage errors (exit 2) before any file is touched."""
    if getattr(args, "ratios", None) is not None:
        from refers.prepare.splits import normalise_ratios

        try:
            normalise_ratios(args.ratios)
        except ValueError as error:
            raise UserError(str(error), exit_code=2) from None
    if getattr(args, "workers", None) is not None and args.workers < 1:
        raise UserError("--workers must be at least 1", exit_code=2)
    if args.action == "mimic":
        from refers.prepare.reports import SECTION_NAMES

        if args.short_side < 8:
            raise UserError("--short-side must be at least 8", exit_code=2)
        unknown = [s for s in args.sections if s.lower() not in SECTION_NAMES]
        if unknown:
            raise UserError(f"unknown --sections {' '.join(unknown)} (known: {' '.join(SECTION_NAMES)})", exit_code=2)
    if args.action == "iu" and args.short_side < 8:
        raise UserError("--short-side must be at least 8", exit_code=2)
    if args.action == "nih" and 0 < args.short_side < 8:
        raise UserError("--short-side must be 0 (keep the originals) or at least 8", exit_code=2)
    if args.action == "fractions":
        if not all(0 < p <= 100 for p in [*args.percent, *args.val_percent]) or any(k < 0 for k in args.seeds):
            raise UserError("--percent / --val-percent must be in (0, 100] and --seeds non-negative", exit_code=2)
    if getattr(args, "split", None) == "original" and args.lists is None:
        raise UserError("--split original needs --lists DIR (the original's published lists)", exit_code=2)
    if getattr(args, "labels", "published") != "published" and getattr(args, "split", None) != "original":
        raise UserError("--labels metadata is for --split original (the other splits always take the metadata's labels)", exit_code=2)
    if args.action == "vinbig" and ((args.max_size is not None and args.max_size < 8) or not 0 < args.scale <= 1):
        raise UserError("--scale must be in (0, 1] and --max-size at least 8", exit_code=2)


def _dataset_options(args: argparse.Namespace) -> dict:
    """The flags of a dataset command as the keywords of its ``prepare_<dataset>`` function."""
    action = args.action
    options: dict = {}
    if action != "shenzhen":  # (shenzhen lists what is on disk, so it has nothing to skip)
        options["skip_bad"] = args.skip_bad_images
    if action == "mimic":
        options.update(reports=args.reports, short_side=args.short_side, sections=[s.lower() for s in args.sections])
    else:
        options.update(ratios=args.ratios, seed=args.seed)
    if action in ("nih", "shenzhen", "covid", "vinbig"):
        options.update(split=args.split, lists=args.lists, labels_from=args.labels)
    if action == "nih":
        options.update(short_side=args.short_side, metadata=args.metadata)
    elif action == "covid":
        options["views"] = args.views
    elif action == "iu":
        options.update(projections=args.projections, short_side=args.short_side)
    elif action == "vinbig":
        options.update(scale=args.scale, max_size=args.max_size, label_rule=args.label_rule)
    return options


def _prepare_dataset(args: argparse.Namespace, cmd: str) -> int:
    """``refers prepare mimic|nih|shenzhen|covid|vinbig``."""
    summary = prepare_dataset(args.action, root=args.root, out=args.out, force=args.force, command=cmd,
                              workers=getattr(args, "workers", None), images_out=getattr(args, "images_out", None),
                              **_dataset_options(args))
    summary.print()
    return 0


def _fractions(args: argparse.Namespace, spec, lists: Path, cmd: str) -> int:
    """``refers prepare fractions``: the label-efficient subsets of a list folder."""
    from refers.prepare.fractions import write_fractions

    if spec.alias == "mimic":
        raise UserError("fractions are for the fine-tuning datasets (nih, vinbig, shenzhen, covid)", exit_code=2)
    write_fractions(lists, args.percent, args.seeds, args.val_percent, spec.label_columns, args.force, cmd).print()
    return 0


def _pack(args: argparse.Namespace, spec, lists: Path) -> int:
    """``refers prepare pack``: one memory-mapped file of the resized images of the lists."""
    from refers.data.packed_cache import PackError, build_packed_cache
    from refers.prepare import layout
    from refers.prepare.common import default_workers

    if args.size < 8:
        raise UserError("--size must be at least 8", exit_code=2)
    images = args.images if args.images is not None else layout.image_root_for(spec, lists)
    out = args.out if args.out is not None else layout.raw_dir(spec) / f"packed_{args.size}"
    try:
        files = sorted(p for p in lists.glob("*.txt") if p.name.split("_")[0].split(".")[0] in ("train", "val", "valid", "test"))
        build_packed_cache(files, images, out, args.size, args.workers or default_workers())
    except PackError as error:
        raise UserError(str(error)) from None
    print(f"packed the images of {lists} into {out} (use it with train.py --packed_cache {out})")
    return 0


def _check(args: argparse.Namespace, spec, lists: Path) -> int:
    """``refers prepare check``: exit 1 when a list and its images disagree."""
    from refers.prepare import layout
    from refers.prepare.check import check_lists
    from refers.prepare.common import default_workers

    images = args.images if args.images is not None else layout.image_root_for(spec, lists)
    if not images.is_dir():
        raise FileNotFoundError(f"image folder {images} not found (pass --images)")
    ok = check_lists(spec, lists, images, args.workers or default_workers(), decode=not args.quick)
    return 0 if ok else 1


def _run(args: argparse.Namespace, argv: Sequence[str] | None) -> int:
    from refers.prepare import layout
    from refers.prepare.common import command_line

    _validate(args)
    cmd = command_line(argv)
    if args.action in DATASET_COMMANDS:
        return _prepare_dataset(args, cmd)
    spec = _spec(args.dataset)
    lists = args.lists if args.lists is not None else layout.lists_dir(spec)
    if not lists.is_dir():
        raise FileNotFoundError(f"list folder {lists} not found")
    if args.action == "fractions":
        return _fractions(args, spec, lists, cmd)
    if args.action == "pack":
        return _pack(args, spec, lists)
    return _check(args, spec, lists)


@command(PROG)
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from refers.data.dicom import MissingDicomDecoder
    from refers.prepare.common import PrepareError

    try:
        return _run(args, argv)
    except (PrepareError, MissingDicomDecoder) as error:
        raise UserError(str(error)) from None

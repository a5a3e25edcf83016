"""The flags of fine-tuning and testing: the original ``train.py``'s, then ours, and YAML presets.

Every flag of the original is accepted under its original name and default (``--img_size`` excepted:
224 as every README command passes, not 384). Precedence, lowest first: the defaults below, a YAML
preset (``--config``; its ``by_data_volume`` section for the chosen ``--data_volume``), then the
command line. A preset's keys are the flag names (``learning_rate``, ``num_steps`` ...); an unknown
key is an error that names it. The resolved arguments are saved with every run as plain data.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Sequence

from refers.base.errors import UserError as UserError
from refers.data.registry import FINETUNE_DATASETS
from refers.base.paths import project_root

DATASET_CHOICES = (*FINETUNE_DATASETS, "custom")
DATA_VOLUMES = (1, 10, 50, 100)

# Early-stopping patience of the original per dataset (the counter must exceed it to stop).
PATIENCE = {"NIH_ChestX-ray": 10, "VinBigData_Chest_X-ray": 10, "Shenzhen_Tuberculosis": 20, "COVID-19_Image_Data_Collection": 20}

# What test.py evaluates when given no arguments (the original's test.py did the same).
DEFAULT_TEST_CHECKPOINT = "./output/caption_100_bestauc_checkpoint.bin"


def presets_dir() -> Path:
    return project_root() / "configs" / "finetune"


def build_parser(prog: str, stage: str = "train") -> argparse.ArgumentParser:
    """The fine-tuning parser; ``stage="test"`` gives test.py's defaults (no ``--name`` needed)."""
    testing = stage == "test"
    p = argparse.ArgumentParser(
        prog=prog,
        description="Fine-tune an image encoder on a downstream dataset, or test a fine-tuned checkpoint (--stage test). "
                    "Flags of the original train.py first, then this project's.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    o = p.add_argument_group("flags of the original train.py")
    o.add_argument("--name", required=not testing, default="caption_100" if testing else None,
                   help="name of the run: checkpoint file names and the default log folder logs/<name>")
    o.add_argument("--stage", choices=("train", "test"), default=stage,
                   help="train, or test the checkpoint given by --pretrained_dir on test.txt")
    o.add_argument("--model_type", default=None,
                   help="default ViT-B_16 (train), the checkpoint's (test); ViT-B_16 (original), ViT-B_32, ViT-L_16, ViT-S_16, "
                        "ViT-Ti_16, ViT-micro_8, ViT-nano_8, Resnet50/18/101, Densenet121, or any timm model name")
    o.add_argument("--num_classes", type=int, default=None,
                   help="outputs of the head; must match the dataset (14 for NIH/VinBig, 1 for the binary datasets)")
    o.add_argument("--pretrained_dir", default=DEFAULT_TEST_CHECKPOINT if testing else None,
                   help="weights file: original REFERS checkpoint, pre-training checkpoint or export, Google .npz, "
                        "timm state dict (train); the fine-tuned checkpoint to evaluate (test)")
    o.add_argument("--output_dir", default="output", help="where checkpoints are written (relative to the working folder)")
    o.add_argument("--img_size", type=int, default=None, help="input resolution (default 224, or the checkpoint's when testing)")
    o.add_argument("--train_batch_size", type=int, default=512, help="total training batch size over all processes")
    o.add_argument("--eval_batch_size", type=int, default=64, help="total evaluation batch size over all processes")
    o.add_argument("--eval_every", type=int, default=None,
                   help="validate every so many optimiser steps (default: once per epoch) and at the end")
    o.add_argument("--learning_rate", type=float, default=3e-2, help="peak learning rate of SGD (momentum 0.9)")
    o.add_argument("--weight_decay", type=float, default=0.0, help="SGD weight decay")
    o.add_argument("--num_steps", type=int, default=10000, help="optimiser steps to train for")
    o.add_argument("--data_volume", type=int, choices=DATA_VOLUMES, default=None,
                   help="percentage of the training labels: 1, 10, 50 or 100 (default 100)")
    o.add_argument("--decay_type", choices=("cosine", "linear"), default="cosine", help="learning-rate decay after warm-up")
    o.add_argument("--warmup_steps", type=int, default=500, help="linear warm-up steps")
    o.add_argument("--max_grad_norm", type=float, default=1.0, help="gradient clipping norm")
    o.add_argument("--local_rank", "--local-rank", dest="local_rank", type=int, default=-1,
                   help="set by torch.distributed.launch (LOCAL_RANK wins when both exist)")
    o.add_argument("--seed", type=int, default=None, help="random seed (default 42)")
    o.add_argument("--gradient_accumulation_steps", type=int, default=1, help="micro-batches per optimiser step")
    o.add_argument("--fp16", action="store_true", help="mixed precision with torch.amp (fp16 + gradient scaler) on a GPU; fp32 on a CPU")
    o.add_argument("--fp16_opt_level", default="O2",
                   help="accepted for compatibility and recorded; torch.amp has no apex opt levels (autocast is O1-like)")
    o.add_argument("--loss_scale", type=float, default=0.0,
                   help="with --fp16: 0 = dynamic loss scaling, > 0 = the gradient scaler's fixed initial scale")
    o.add_argument("--gpu", default=None, help="ignored, as in the original; choose GPUs with CUDA_VISIBLE_DEVICES")

    n = p.add_argument_group("flags of this project")
    n.add_argument("--config", default=None, help="YAML preset: a file, or a name in configs/finetune/ (e.g. nih)")
    n.add_argument("--dataset", choices=DATASET_CHOICES, default=None,
                   help="dataset (fixed by Fine-tune/<Dataset>/train.py); custom needs --list_dir, --data_root and --classes")
    n.add_argument("--classes", default=None, help="comma-separated class names of a custom dataset (list-column order)")
    n.add_argument("--data_root", default=None,
                   help="image root (default: dataset.yaml's image_root, Data/<Dataset>/prepared, Data/<Dataset>)")
    n.add_argument("--list_dir", default=None, help="folder of the list files (default DataProcessed/<Dataset>)")
    n.add_argument("--data_seed", type=int, default=None, help="which random draw of a fraction: train_<pct>_seed<k>.txt")
    n.add_argument("--val_volume", type=int, choices=DATA_VOLUMES, default=100, help="percentage of the validation list")
    n.add_argument("--init", choices=("pretrained", "scratch"), default="pretrained",
                   help="scratch trains from random weights (explicitly; a missing checkpoint is an error)")
    n.add_argument("--freeze_backbone", action="store_true", help="train the head only (linear probe)")
    # = refers.data.device_transforms.ORIGINAL_MIN_CROP_AREA, not imported: the parser stays torch-free
    n.add_argument("--min_crop_area", type=float, default=0.08,
                   help="smallest random training crop, as a fraction of the image area (original: 0.08)")
    n.add_argument("--global_pool", choices=("token", "avg"), default="token",
                   help="what a ViT's head reads: the CLS token (original) or the mean patch token (for encoders "
                        "pre-trained with MODEL.VISUAL.CONTRAST_POOLING mean)")
    n.add_argument("--patience", type=int, default=None, help="early-stopping patience (default: 10 NIH/VinBig, 20 COVID/Shenzhen)")
    n.add_argument("--resume", action="store_true", help="continue the interrupted run <output_dir>/<name>_last.pth")
    n.add_argument("--skip_bad_images", action="store_true", help="skip (and count) missing or unreadable images instead of stopping")
    n.add_argument("--bf16", action="store_true", help="bfloat16 autocast on a GPU (no scaler); fp32 on a CPU")
    n.add_argument("--fp32", action="store_true",
                   help="train in full fp32 on a GPU (default there: bfloat16 autocast where supported, or --fp16)")
    n.add_argument("--compile", action="store_true",
                   help="torch.compile the model for training (GPU; the first steps compile, checkpoints are unchanged)")
    n.add_argument("--results_dir", default=None, help="test outputs (default: the project's Results_of_fine-tuning/)")
    n.add_argument("--method", default="REFERS", help="method folder name of the test outputs")
    n.add_argument("--log_dir", default=None, help="TensorBoard and metrics CSV folder (default logs/<name>)")
    n.add_argument("--packed_cache", default=None,
                   help="read the images from a pack of 'refers prepare pack' instead of the image files")
    n.add_argument("--num_workers", type=int, default=None, help="data-loading processes per rank (default: from the CPU count)")
    n.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda when available")
    return p


def find_preset(value: str) -> Path:
    """A preset file: ``value`` itself, or ``configs/finetune/<value>.yaml``."""
    path = Path(value)
    if path.is_file():
        return path
    candidate = presets_dir() / f"{value}.yaml"
    if candidate.is_file():
        return candidate
    known = ", ".join(sorted(p.stem for p in presets_dir().glob("*.yaml")))
    raise UserError(f"--config {value}: no such file or preset (presets: {known or 'none'})", exit_code=2)


def read_preset(path: Path, data_volume: int | None, known: set[str]) -> dict[str, Any]:
    """The flag defaults a preset sets, its ``by_data_volume`` section for ``data_volume`` applied.

    Raises:
        UserError: for a malformed file or an unknown key (exit code 2).
    """
    import yaml

    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        raise UserError(f"{path}: not valid YAML: {error}", exit_code=2) from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: a preset is a mapping of flag names to values", exit_code=2)
    by_volume = raw.pop("by_data_volume", {}) or {}
    volume = data_volume if data_volume is not None else raw.get("data_volume", 100)
    values = {**raw, **(by_volume.get(int(volume), {}) or {})}
    unknown = sorted(set(values) - known)
    if unknown:
        raise UserError(f"{path}: unknown key(s) {', '.join(unknown)} (keys are flag names without --)", exit_code=2)
    return values


def parse_args(argv: Sequence[str] | None, prog: str, stage: str = "train") -> argparse.Namespace:
    """Parse the command line on top of the preset named by ``--config`` (if any)."""
    parser = build_parser(prog, stage)
    first = argparse.ArgumentParser(add_help=False)
    first.add_argument("--config")
    first.add_argument("--data_volume", type=int)
    early, _ = first.parse_known_args(argv)
    if early.config:
        known = {action.dest for action in parser._actions} - {"help", "config"}
        parser.set_defaults(**read_preset(find_preset(early.config), early.data_volume, known))
    args = parser.parse_args(argv)
    fill_defaults(args)
    check_numbers(args)
    return args


def fill_defaults(args: argparse.Namespace) -> None:
    """Defaults that depend on other flags. Testing leaves unset what the checkpoint's metadata may tell."""
    if args.stage == "train":
        args.model_type = args.model_type or "ViT-B_16"
        args.data_volume = 100 if args.data_volume is None else args.data_volume
        args.seed = 42 if args.seed is None else args.seed
    if args.log_dir is None and args.name:
        args.log_dir = str(Path("logs") / args.name)
    if args.patience is None:
        args.patience = PATIENCE.get(args.dataset or "", 10)


def check_numbers(args: argparse.Namespace) -> None:
    """Reject values that cannot work, with the flag's name (exit code 2)."""
    positive = ("train_batch_size", "eval_batch_size", "num_steps", "gradient_accumulation_steps")
    for name in positive:
        if getattr(args, name) < 1:
            raise UserError(f"--{name} must be >= 1, got {getattr(args, name)}", exit_code=2)
    if args.eval_every is not None and args.eval_every < 1:
        raise UserError(f"--eval_every must be >= 1, got {args.eval_every}", exit_code=2)
    if args.img_size is not None and args.img_size < 8:
        raise UserError(f"--img_size must be >= 8, got {args.img_size}", exit_code=2)
    if not 0.0 < args.min_crop_area <= 1.0:
        raise UserError(f"--min_crop_area must be in (0, 1], got {args.min_crop_area}", exit_code=2)
    if args.warmup_steps < 0 or args.learning_rate <= 0 or args.max_grad_norm <= 0 or args.loss_scale < 0:
        raise UserError("--warmup_steps and --loss_scale must be >= 0, --learning_rate and --max_grad_norm > 0", exit_code=2)
    if args.fp16 and args.bf16:
        raise UserError("--fp16 and --bf16 exclude each other", exit_code=2)
    if args.num_workers is not None and args.num_workers < 0:
        raise UserError("--num_workers must be >= 0", exit_code=2)


def to_plain(args: argparse.Namespace) -> dict[str, Any]:
    """The resolved arguments as plain data (saved with runs and inside checkpoints' metadata)."""
    return {key: value for key, value in sorted(vars(args).items()) if isinstance(value, (str, int, float, bool, type(None)))}

"""The flags of fine-tuning and testing: the original ``train.py``'s, then ours, and YAML presets.

Every flag is declared once, as a field of :class:`FinetuneArgs` (type, default, help, allowed
values, range); the command-line parser, the preset reader and the sweep's check are built from
those fields. Every flag of the original is accepted under its original name and default
(``--img_size`` excepted: 224 as every README command passes, not 384). Precedence, lowest first:
the defaults below, a YAML preset (``--config``; its ``by_data_volume`` section for the chosen
``--data_volume``), then the command line. A preset's keys are the flag names (``learning_rate``,
``num_steps`` ...); an unknown key, a wrong type or an out-of-range value is an error (exit code 2)
that names the key. The result is a frozen :class:`FinetuneArgs` with every default that depends
on other flags filled in (:func:`resolve`); training and testing only read it. The resolved
arguments are saved with every run as plain data (:func:`to_plain`).
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from refers.base.paths import project_root
from refers.config.choices import OPTIMIZERS
from refers.config.engine import ConfigError, Spec, check_keys, dataclass_specs, did_you_mean, mapping, read_yaml, unknown_key
from refers.data.registry import FINETUNE_DATASETS

DATASET_CHOICES = (*FINETUNE_DATASETS, "custom")
DATA_VOLUMES = (1, 10, 50, 100)

# Early-stopping patience of the original per dataset (the counter must exceed it to stop).
PATIENCE = {"NIH_ChestX-ray": 10, "VinBigData_Chest_X-ray": 10, "Shenzhen_Tuberculosis": 20, "COVID-19_Image_Data_Collection": 20}

# What test.py evaluates when given no arguments (the original's test.py did the same).
DEFAULT_TEST_CHECKPOINT = "./output/caption_100_bestauc_checkpoint.bin"

ORIGINAL, OURS = "flags of the original train.py", "flags of this project"
_AT_LEAST_1 = {"low": 1}
_NON_NEGATIVE = {"low": 0}


def _flag(default: Any, help: str, group: str = ORIGINAL, *, names: tuple[str, ...] = (), test_default: Any = None,
          **spec: Any) -> Any:
    """A field of :class:`FinetuneArgs`: its default, ``--help`` text and rules (``choices``, ``low`` ...)."""
    meta = {"help": help, "group": group, "names": names, "spec": spec}
    if test_default is not None:
        meta["test_default"] = test_default
    return field(default=default, metadata=meta)


def _ours(default: Any, help: str, **rules: Any) -> Any:
    return _flag(default, help, OURS, **rules)


@dataclass(frozen=True)
class FinetuneArgs:
    """The resolved flags of one fine-tuning or testing run (attribute = flag name without ``--``)."""

    name: str | None = _flag(None, "name of the run: checkpoint file names and the default log folder logs/<name>",
                             test_default="caption_100")
    stage: str = _flag("train", "train, or test the checkpoint given by --pretrained_dir on test.txt",
                       choices=("train", "test"), test_default="test")
    model_type: str | None = _flag(None, "default ViT-B_16 (train), the checkpoint's (test); ViT-B_16 (original), ViT-B_32, "
                                   "ViT-L_16, ViT-S_16, ViT-Ti_16, ViT-micro_8, ViT-nano_8, Resnet50/18/101, Densenet121, "
                                   "or any timm model name")
    num_classes: int | None = _flag(None, "outputs of the head; must match the dataset (14 for NIH/VinBig, 1 for the binary "
                                    "datasets)", **_AT_LEAST_1)
    pretrained_dir: str | None = _flag(None, "weights file: original REFERS checkpoint, pre-training checkpoint or export, Google "
                                       ".npz, timm state dict (train); the fine-tuned checkpoint to evaluate (test)",
                                       test_default=DEFAULT_TEST_CHECKPOINT)
    output_dir: str = _flag("output", "where checkpoints are written (relative to the working folder)")
    img_size: int | None = _flag(None, "input resolution (default 224, or the checkpoint's when testing)", low=8)
    train_batch_size: int = _flag(512, "total training batch size over all processes", **_AT_LEAST_1)
    eval_batch_size: int = _flag(64, "total evaluation batch size over all processes", **_AT_LEAST_1)
    eval_every: int | None = _flag(None, "validate every so many optimiser steps (default: once per epoch) and at the end",
                                   **_AT_LEAST_1)
    learning_rate: float = _flag(3e-2, "peak learning rate of SGD (momentum 0.9)", low=0, open_low=True)
    weight_decay: float = _flag(0.0, "SGD weight decay", **_NON_NEGATIVE)
    num_steps: int = _flag(10000, "optimiser steps to train for", **_AT_LEAST_1)
    data_volume: int | None = _flag(None, "percentage of the training labels: 1, 10, 50 or 100 (default 100)", choices=DATA_VOLUMES)
    decay_type: str = _flag("cosine", "learning-rate decay after warm-up", choices=("cosine", "linear"))
    warmup_steps: int = _flag(500, "linear warm-up steps", **_NON_NEGATIVE)
    max_grad_norm: float = _flag(1.0, "gradient clipping norm", low=0, open_low=True)
    local_rank: int = _flag(-1, "set by torch.distributed.launch (LOCAL_RANK wins when both exist)",
                            names=("--local_rank", "--local-rank"), low=-1)
    seed: int | None = _flag(None, "random seed (default 42)", **_NON_NEGATIVE)
    gradient_accumulation_steps: int = _flag(1, "micro-batches per optimiser step", **_AT_LEAST_1)
    fp16: bool = _flag(False, "mixed precision with torch.amp (fp16 + gradient scaler) on a GPU; fp32 on a CPU")
    fp16_opt_level: str = _flag("O2", "accepted for compatibility and recorded; torch.amp has no apex opt levels "
                                "(autocast is O1-like)")
    loss_scale: float = _flag(0.0, "with --fp16: 0 = dynamic loss scaling, > 0 = the gradient scaler's fixed initial scale",
                              **_NON_NEGATIVE)
    gpu: str | None = _flag(None, "ignored, as in the original; choose GPUs with CUDA_VISIBLE_DEVICES")

    config: str | None = _ours(None, "YAML preset: a file, or a name in configs/finetune/ (e.g. nih)")
    dataset: str | None = _ours(None, "dataset (fixed by Fine-tune/<Dataset>/train.py); custom needs --list_dir, --data_root "
                                "and --classes", choices=DATASET_CHOICES)
    classes: str | None = _ours(None, "comma-separated class names of a custom dataset (list-column order)")
    data_root: str | None = _ours(None, "image root (default: dataset.yaml's image_root, Data/<Dataset>/prepared, Data/<Dataset>)")
    list_dir: str | None = _ours(None, "folder of the list files (default DataProcessed/<Dataset>)")
    data_seed: int | None = _ours(None, "which random draw of a fraction: train_<pct>_seed<k>.txt", **_NON_NEGATIVE)
    val_volume: int = _ours(100, "percentage of the validation list", choices=DATA_VOLUMES)
    init: str = _ours("pretrained", "scratch trains from random weights (explicitly; a missing checkpoint is an error)",
                      choices=("pretrained", "scratch"))
    freeze_backbone: bool = _ours(False, "train the head only (linear probe)")
    optimizer: str = _ours("sgd", "sgd: momentum 0.9 (original); adamw: betas (0.9, 0.999), the usual choice for ViTs "
                           "trained from random weights (timm, DeiT); --learning_rate and --weight_decay then set AdamW's",
                           choices=OPTIMIZERS)
    # = refers.data.device_transforms.ORIGINAL_MIN_CROP_AREA, not imported: the parser stays torch-free
    min_crop_area: float = _ours(0.08, "smallest random training crop, as a fraction of the image area (original: 0.08)",
                                 low=0, open_low=True, high=1)
    global_pool: str = _ours("token", "what a ViT's head reads: the CLS token (original) or the mean patch token (for encoders "
                             "pre-trained with MODEL.VISUAL.CONTRAST_POOLING mean)", choices=("token", "avg"))
    patience: int | None = _ours(None, "early-stopping patience (default: 10 NIH/VinBig, 20 COVID/Shenzhen)", **_NON_NEGATIVE)
    resume: bool = _ours(False, "continue the interrupted run <output_dir>/<name>_last.pth")
    overwrite: bool = _ours(False, "replace an earlier run instead of refusing: training over the checkpoints and metrics "
                            "of this --name in --output_dir/--log_dir (removed first), testing over the results of "
                            "another checkpoint or test list in the same results folder")
    skip_bad_images: bool = _ours(False, "skip (and count) missing or unreadable images instead of stopping")
    bf16: bool = _ours(False, "bfloat16 autocast on a GPU (no scaler); fp32 on a CPU")
    fp32: bool = _ours(False, "train in full fp32 on a GPU (default there: bfloat16 autocast where supported, or --fp16)")
    compile: bool = _ours(False, "torch.compile the model for training (GPU; the first steps compile, checkpoints are unchanged)")
    results_dir: str | None = _ours(None, "test outputs (default: the project's Results_of_fine-tuning/)")
    method: str = _ours("REFERS", "method folder name of the test outputs")
    log_dir: str | None = _ours(None, "TensorBoard and metrics CSV folder (default logs/<name>)")
    packed_cache: str | None = _ours(None, "read the images from a pack of 'refers prepare pack' instead of the image files")
    num_workers: int | None = _ours(None, "data-loading processes per rank (default: from the CPU count)", **_NON_NEGATIVE)
    device: str | None = _ours(None, "default: cuda when available", choices=("cpu", "cuda"))


FIELDS = {f.name: f for f in dataclasses.fields(FinetuneArgs)}
SPECS: dict[str, Spec] = dataclass_specs(FinetuneArgs)
PRESET_KEYS = set(FIELDS) - {"config"}  # a preset cannot name another preset


def presets_dir() -> Path:
    return project_root() / "configs" / "finetune"


class _Parser(argparse.ArgumentParser):
    """argparse that raises a ConfigError instead of exiting when ``exit_on_error`` is off (the sweep's check)."""

    def error(self, message: str):  # type: ignore[override]
        if message.startswith("unrecognized arguments: "):  # a misspelt flag: name the nearest one
            names = [name for action in self._actions for name in action.option_strings]
            hints = (did_you_mean(token.split("=")[0], names) for token in message.split()[2:] if token.startswith("--"))
            message += next((hint for hint in hints if hint), "")
        if self.exit_on_error:
            super().error(message)
        raise ConfigError(message)


def build_parser(prog: str, stage: str = "train", exit_on_error: bool = True) -> argparse.ArgumentParser:
    """The fine-tuning parser; ``stage="test"`` gives test.py's defaults (no ``--name`` needed)."""
    testing = stage == "test"
    p = _Parser(
        prog=prog,
        description="Fine-tune an image encoder on a downstream dataset, or test a fine-tuned checkpoint (--stage test). "
                    "Flags of the original train.py first, then this project's.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        exit_on_error=exit_on_error,
    )
    groups = {ORIGINAL: p.add_argument_group(ORIGINAL), OURS: p.add_argument_group(OURS)}
    for name in SPECS:
        meta = FIELDS[name].metadata
        groups[meta["group"]].add_argument(*(meta["names"] or (f"--{name}",)), dest=name, **_argument(name, testing))
    return p


def _argument(name: str, testing: bool) -> dict[str, Any]:
    """``add_argument`` keywords of a field: default (test.py's for the test stage), help, type or switch, choices."""
    spec, meta = SPECS[name], FIELDS[name].metadata
    default = meta.get("test_default", FIELDS[name].default) if testing else FIELDS[name].default
    kwargs: dict[str, Any] = {"default": default, "help": meta["help"]}
    if spec.kind is bool:
        kwargs["action"] = "store_true"
    elif spec.kind in (int, float):
        kwargs["type"] = spec.kind
    if spec.choices:
        kwargs["choices"] = spec.choices
    if name == "name":
        kwargs["required"] = not testing
    return kwargs


def find_preset(value: str, workdir: Path | None = None) -> Path:
    """A preset file: ``value`` itself (relative to ``workdir``, default the working folder), or
    ``configs/finetune/<value>.yaml``."""
    path = Path(value)
    if workdir is not None and not path.is_absolute():
        path = workdir / path
    if path.is_file():
        return path
    candidate = presets_dir() / f"{value}.yaml"
    if candidate.is_file():
        return candidate
    known = ", ".join(sorted(p.stem for p in presets_dir().glob("*.yaml")))
    raise ConfigError(f"--config {value}: no such file or preset (presets: {known or 'none'})")


def preset_value(name: str, value: Any, where: str) -> Any:
    """A preset's value for flag ``name``, checked; a number may be written as text (``3e-2``), as on
    the command line."""
    spec = SPECS[name]
    if isinstance(value, str) and spec.kind in (int, float):
        value = _from_text(name, value, where)
    return spec.check(name, value, where)


def read_preset(path: Path, data_volume: int | None) -> dict[str, Any]:
    """The flag defaults a preset sets, its ``by_data_volume`` section for ``data_volume`` applied.

    Every section is checked, not only the one applied: unknown keys (with the nearest flag name),
    types, allowed values and ranges.

    Raises:
        ConfigError: for a malformed file, an unknown key or a bad value (exit code 2).
    """
    raw = read_yaml(path, "preset")
    sections = mapping(raw.pop("by_data_volume", None), f"{path}: by_data_volume")
    check_keys(sections, DATA_VOLUMES, f"{path}: by_data_volume", noun="data volume")
    checked = {}
    for where, section in [(str(path), raw)] + [(f"{path}: by_data_volume.{v}", mapping(s, f"{path}: by_data_volume.{v}"))
                                                for v, s in sections.items()]:
        check_keys(section, PRESET_KEYS, where, noun="fine-tuning flag")
        checked[where] = {key: preset_value(key, value, where) for key, value in section.items()}
    base = checked.pop(str(path))
    volume = data_volume if data_volume is not None else base.get("data_volume", 100)
    return {**base, **checked.get(f"{path}: by_data_volume.{volume}", {})}


def parse_args(argv: Sequence[str] | None, prog: str, stage: str = "train", workdir: Path | None = None,
               exit_on_error: bool = True) -> FinetuneArgs:
    """Parse the command line on top of the preset named by ``--config`` (if any), and resolve it.

    Args:
        workdir: the folder a relative ``--config`` path is relative to (default: the working folder).
        exit_on_error: False raises a ConfigError for a bad command line instead of argparse's exit.
    """
    parser = build_parser(prog, stage, exit_on_error)
    first = _Parser(add_help=False, exit_on_error=exit_on_error)
    first.add_argument("--config")
    first.add_argument("--data_volume", type=int)
    try:
        early, _ = first.parse_known_args(argv)
        if early.config:
            parser.set_defaults(**read_preset(find_preset(early.config, workdir), early.data_volume))
        values = vars(parser.parse_args(argv))
    except argparse.ArgumentError as error:  # what exit_on_error=False leaves to the caller
        raise ConfigError(str(error)) from None
    return resolve(values)


def resolve(values: Mapping[str, Any]) -> FinetuneArgs:
    """The frozen arguments of a run: ``values`` (every flag) with the defaults that depend on other
    flags filled in and every value checked. Testing leaves unset what the checkpoint's metadata may
    tell (see :func:`with_checkpoint`)."""
    v = dict(values)
    if v["stage"] == "train":
        v["model_type"] = v["model_type"] or "ViT-B_16"
        v["data_volume"] = 100 if v["data_volume"] is None else v["data_volume"]
        v["seed"] = 42 if v["seed"] is None else v["seed"]
        v["img_size"] = 224 if v["img_size"] is None else v["img_size"]
        for key in ("list_dir", "data_root"):  # recorded absolute, so that test.py finds them from anywhere
            if v[key]:
                v[key] = str(Path(v[key]).resolve())
    if v["log_dir"] is None and v["name"]:
        v["log_dir"] = str(Path("logs") / v["name"])
    if v["patience"] is None:
        v["patience"] = PATIENCE.get(v["dataset"] or "", 10)
    for name, spec in SPECS.items():
        v[name] = spec.check(f"--{name}", v[name])
    if v["fp16"] and v["bf16"]:
        raise ConfigError("--fp16 and --bf16 exclude each other")
    if v["resume"] and v["overwrite"]:
        raise ConfigError("--resume and --overwrite exclude each other (continue the earlier run, or replace it)")
    return FinetuneArgs(**v)


def with_checkpoint(args: FinetuneArgs, settings: Mapping[str, Any]) -> FinetuneArgs:
    """The arguments of a test, completed from the checkpoint (``refers.finetune.model.load_finetuned``'s
    settings: its model type, image size, classes and metadata); flags the user gave win, then the
    metadata, then the defaults."""
    meta = settings.get("metadata") or {}
    config = meta.get("config") if isinstance(meta.get("config"), dict) else {}
    dataset = args.dataset if args.dataset is not None else meta.get("dataset")
    changes: dict[str, Any] = {
        "dataset": dataset,
        # Folders given at training time (stored absolute) are the test's too, unless given again.
        "list_dir": args.list_dir or config.get("list_dir"),
        "data_root": args.data_root or config.get("data_root"),
        "data_volume": args.data_volume or meta.get("data_volume") or 100,
        "seed": args.seed if args.seed is not None else meta.get("seed", 42),
        "data_seed": args.data_seed if args.data_seed is not None else meta.get("data_seed"),
        "model_type": settings["model_type"],
        "img_size": int(settings["img_size"]),
        "num_classes": args.num_classes if args.num_classes is not None else int(settings["num_classes"]),
    }
    if dataset == "custom":
        changes["classes"] = args.classes or ",".join(meta.get("classes", []))
    return dataclasses.replace(args, **changes)


def check_flag_values(values: Any, where: str) -> None:
    """Flags written as a mapping, as a sweep file writes them (``train:``, ``test:``, a search
    candidate), checked against the schema: ``true`` is a bare switch, ``false``/``null`` leaves the
    flag out, anything else is the flag's value as text.

    Raises:
        ConfigError: naming ``where``, the key and, for a misspelt one, the nearest flag name.
    """
    for name, value in mapping(values, where).items():
        if name not in FIELDS:
            raise unknown_key(where, name, FIELDS, noun="fine-tuning flag")
        spec = SPECS[name]
        if value is None or value is False or (spec.kind is bool and value is True):
            continue
        if spec.kind is bool:
            raise ConfigError(f"{where}: {name} is a switch: true (pass --{name}) or false (leave it out), got {value!r}")
        if value is True or isinstance(value, (list, tuple, dict)):
            raise ConfigError(f"{where}: {name} takes one value ({spec.describe()}), got {value!r}")
        spec.check(name, _from_text(name, str(value), where) if spec.kind in (int, float) else str(value), where)


def _from_text(name: str, text: str, where: str) -> Any:
    """A number written as text, converted as argparse converts the flag (``int("10")``, ``float("3e-2")``)."""
    kind = SPECS[name].kind
    try:
        return kind(text)
    except ValueError:
        raise ConfigError(f"{where}: {name} must be {kind.__name__}, got {text!r}") from None


def to_plain(args: FinetuneArgs | argparse.Namespace) -> dict[str, Any]:
    """The resolved arguments as plain data (saved with runs and inside checkpoints' metadata)."""
    items = vars(args) if isinstance(args, argparse.Namespace) else dataclasses.asdict(args)
    return {key: value for key, value in sorted(items.items()) if isinstance(value, (str, int, float, bool, type(None)))}

"""The exported dual-encoder folder: written by ``refers export --dual-encoder``, read by
:func:`load_dual_encoder` (``refers.load_dual_encoder``).

Contents (no pickles anywhere)::

    config.json                  format, the encoders' shapes and pooling, the image preprocessing,
                                 the sha256 of every other file, provenance; its own checksum
    image_encoder.safetensors    the ViT (timm key names)
    report_encoder.safetensors   BERT (``bert.*``) and the projection into the contrast space (``text_projection.*``)
    tokenizer/                   the report tokenizer (transformers files)
    MODEL_CARD.md                what it was trained on (synthetic or not), how long, by which command and commit

Loading reads this folder only (no network); a missing, altered or unlisted file is refused with
one line that names it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path, PurePosixPath
from typing import Any

import torch

from refers.base.atomic import atomic_folder
from refers.base.digest import sha256_file
from refers.base.errors import UserError
from refers.base.json_files import read_json
from refers.models.dual_encoder import DualEncoder, DualEncoderSpec, build_dual_encoder, dual_encoder_from_checkpoint, load_weights

FORMAT = "refers-dual-encoder"
FORMAT_VERSION = 1
CONFIG = "config.json"
IMAGE_WEIGHTS = "image_encoder.safetensors"
REPORT_WEIGHTS = "report_encoder.safetensors"
TOKENIZER = "tokenizer"
MODEL_CARD = "MODEL_CARD.md"
REPORT_PREFIXES = ("bert.", "text_projection.")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


class DualEncoderFolderError(UserError):
    """A dual-encoder folder that cannot be trusted or read; the message names the file."""


def _config_digest(config: dict[str, Any]) -> str:
    body = {k: v for k, v in config.items() if k != "config_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode("utf-8")).hexdigest()


def preprocessing(spec: DualEncoderSpec) -> dict[str, Any]:
    """How images reach the model, for users who prepare tensors themselves."""
    from refers.data.device_transforms import IMAGENET_MEAN, IMAGENET_STD

    return {
        "read_as": "8-bit grey (PNG, JPEG, DICOM)", "resize": [spec.image_size, spec.image_size],
        "keep_aspect": False, "channels": 3, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
        "views": f"{spec.num_views} per study; a single image is repeated across them, a study's images are chosen "
                 "one of each kind (frontal, lateral, other) first, then repeated",
    }


def save_dual_encoder(encoder: DualEncoder, out: str | os.PathLike, provenance: dict[str, Any], card: str) -> Path:
    """Write the folder ``out`` (which must not exist or be empty) all at once: it is assembled
    beside ``out`` and renamed into place, so an interrupted export leaves no half folder.

    Args:
        provenance: where it came from (``config.json``'s ``provenance``).
        card: the text of ``MODEL_CARD.md``.
    """
    from safetensors.torch import save_file

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DualEncoderFolderError(f"{out} exists and is not an empty folder; choose another --out", 2)
    with atomic_folder(out) as staging:
        state = {k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}
        image = {k[len("image_encoder."):]: v for k, v in state.items() if k.startswith("image_encoder.")}
        report = {k: v for k, v in state.items() if k.startswith(REPORT_PREFIXES)}
        save_file(image, str(staging / IMAGE_WEIGHTS), metadata={"format": FORMAT})
        save_file(report, str(staging / REPORT_WEIGHTS), metadata={"format": FORMAT})
        encoder.tokenizer.save_pretrained(str(staging / TOKENIZER))
        (staging / MODEL_CARD).write_text(card, encoding="utf-8")
        files = {path.relative_to(staging).as_posix(): sha256_file(path)
                 for path in sorted(staging.rglob("*")) if path.is_file()}
        config = {"format": FORMAT, "format_version": FORMAT_VERSION, "model": encoder.spec.to_dict(),
                  "image_preprocessing": preprocessing(encoder.spec), "files": files, "provenance": provenance}
        config["config_sha256"] = _config_digest(config)
        (staging / CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return out


def read_config(folder: str | os.PathLike) -> dict[str, Any]:
    """``config.json`` of a dual-encoder folder, with every file it lists checked against its sha256.

    Raises:
        DualEncoderFolderError: no such folder, no or a damaged ``config.json`` (also one whose
            ``files`` or ``model`` fields are unusable, checksum or not: the message names the field),
            a missing, altered or unlisted file.
    """
    folder = Path(folder)
    path = folder / CONFIG
    if not folder.is_dir():
        raise DualEncoderFolderError(f"{folder}: no such folder (export one with refers export CHECKPOINT --dual-encoder --out DIR)")
    if not path.is_file():
        raise DualEncoderFolderError(f"{folder} is not a dual-encoder folder: {CONFIG} is missing (export one with "
                                     "refers export CHECKPOINT --dual-encoder --out DIR)")
    try:
        config = read_json(path)
    except ValueError as error:  # also not UTF-8, or nested too deeply
        raise DualEncoderFolderError(f"{path} is not valid JSON ({error}); export the folder again") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise DualEncoderFolderError(f"{path} is not a {FORMAT} configuration")
    if config.get("format_version") != FORMAT_VERSION:
        raise DualEncoderFolderError(f"{path} has format_version {config.get('format_version')!r}; this version of refers "
                                     f"reads {FORMAT_VERSION}")
    if config.get("config_sha256") != _config_digest(config):
        raise DualEncoderFolderError(f"{path} was altered after export (its checksum does not match); export the folder again")
    listed = _listed_files(config.get("files"), path)
    model_spec(config, path)
    if not isinstance(config.get("provenance", {}), dict):
        raise DualEncoderFolderError(f"{path}: provenance must be a mapping")
    for name, digest in listed.items():
        file = folder / name
        if not file.is_file():
            raise DualEncoderFolderError(f"{file} is missing from the dual-encoder folder; copy or export it again")
        if sha256_file(file) != digest:
            raise DualEncoderFolderError(f"{file} was altered or damaged (sha256 differs from {CONFIG}); copy or export it again")
    for file in sorted(folder.rglob("*")):
        name = file.relative_to(folder).as_posix()
        if file.is_file() and name != CONFIG and name not in listed and name.split("/")[0] in (TOKENIZER, IMAGE_WEIGHTS, REPORT_WEIGHTS):
            raise DualEncoderFolderError(f"{file} is not one of the exported files (not in {CONFIG}); remove it")
    return config


def _listed_files(files: Any, path: Path) -> dict[str, str]:
    """``config.json``'s ``files``: relative names inside the folder, each with a sha256, the weights and tokenizer among them."""
    if not isinstance(files, dict):
        raise DualEncoderFolderError(f"{path}: files must map file names to their sha256, got {type(files).__name__}")
    for name, digest in files.items():
        parts = PurePosixPath(name).parts
        if not name or "\\" in name or PurePosixPath(name).is_absolute() or ".." in parts or name == CONFIG:
            raise DualEncoderFolderError(f"{path}: files: {name!r} is not a file name inside the folder")
        if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise DualEncoderFolderError(f"{path}: files: {name!r} has no sha256 ({digest!r})")
    required = [IMAGE_WEIGHTS, REPORT_WEIGHTS, f"{TOKENIZER}/"]
    missing = [need for need in required if not any(n == need or (need.endswith("/") and n.startswith(need)) for n in files)]
    if missing:
        raise DualEncoderFolderError(f"{path}: files lists no {missing[0]}; export the folder again")
    return files


def model_spec(config: dict[str, Any], path: Path) -> DualEncoderSpec:
    """``config.json``'s ``model`` as a checked spec."""
    model = config.get("model")
    if not isinstance(model, dict):
        raise DualEncoderFolderError(f"{path}: model must be a mapping, got {type(model).__name__}")
    try:
        return DualEncoderSpec(**model)
    except TypeError as error:
        raise DualEncoderFolderError(f"{path}: the model description does not fit this version ({error})") from None
    except ValueError as error:
        raise DualEncoderFolderError(f"{path}: model.{error}") from None


def load_dual_encoder(path: str | os.PathLike, device: torch.device | str | None = None,
                      precision: str = "auto") -> DualEncoder:
    """Load an exported dual encoder (or a pre-training checkpoint) for inference.

    Args:
        path: a folder of ``refers export --dual-encoder``, or a pre-training ``checkpoint_<n>.pth``.
        device: where to run (default: the GPU when there is one, else the CPU).
        precision: ``auto`` (bfloat16 on a GPU that supports it, else float32), ``fp32``, ``bf16``, ``fp16``
            (on a GPU; a CPU runs float32).

    Returns:
        A :class:`~refers.models.dual_encoder.DualEncoder` in eval mode; ``encode_images(paths or
        tensor)`` and ``encode_reports(texts)`` give float32, L2-normalised [N, D] tensors.

    Raises:
        DualEncoderFolderError: a missing, altered or unlisted file (one line naming it).
    """
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    from refers.base.checkpoints import reading_checkpoint

    from refers.engine.distributed import resolve_device
    from refers.engine.precision import make_precision

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    device = resolve_device(str(device) if device is not None else None)
    # auto: bfloat16 where the GPU has it; a CPU runs float32 (make_precision's rule for every command)
    autocast = make_precision(precision == "fp16", precision == "bf16", 0.0, device, say=False,
                              default="bf16" if precision == "auto" else "fp32").autocast
    path = Path(path)
    if path.is_file():
        try:
            encoder = dual_encoder_from_checkpoint(path)
        except (ValueError, FileNotFoundError) as error:
            raise DualEncoderFolderError(str(error)) from None
        encoder.autocast = autocast
        return encoder.to(device)
    config = read_config(path)
    spec = model_spec(config, path / CONFIG)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path / TOKENIZER), local_files_only=True)
    except Exception as error:  # noqa: BLE001 (the tokenizers library raises plain Exception for a damaged file)
        raise DualEncoderFolderError(f"{path / TOKENIZER} cannot be read as a tokenizer ({' '.join(str(error).split())}); "
                                     "export the folder again") from None
    try:
        encoder = build_dual_encoder(spec, tokenizer)
    except ValueError as error:
        raise DualEncoderFolderError(f"{path / CONFIG}: model.{error}") from None
    encoder.autocast = autocast
    state: dict[str, torch.Tensor] = {}
    for name, prefix in ((IMAGE_WEIGHTS, "image_encoder."), (REPORT_WEIGHTS, "")):
        with reading_checkpoint(path / name):
            state.update({prefix + k: v for k, v in load_file(str(path / name)).items()})
    try:
        load_weights(encoder, state, f"{path / CONFIG} and its weight files")
    except ValueError as error:
        raise DualEncoderFolderError(f"{error}; export the folder again") from None
    encoder.provenance = config.get("provenance", {})  # type: ignore[attr-defined]
    return encoder.to(device)

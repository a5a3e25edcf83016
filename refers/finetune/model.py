"""The fine-tuning classifier, its initial weights, and fine-tuned checkpoints with their metadata.

A fine-tuned checkpoint (``{name}_bestauc_checkpoint.bin``) is what the original wrote: a flat state
dict of tensors (timm key names + ``head.*``), loadable with ``weights_only=True`` and by the
weights loader of any format. What a later ``test.py`` / ``refers predict`` needs to rebuild the model
(classes, ``img_size``, ``model_type``, the run's arguments) is kept beside it as plain JSON,
``<checkpoint>.json``. Without that file (e.g. the released checkpoints), the architecture is read
off the tensors' shapes (:func:`infer_architecture`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from refers.base.errors import UserError as UserError
from refers.base.atomic import atomic_write_text
from refers.base.checkpoints import UnsafeCheckpointError, atomic_torch_save
from refers.base.json_files import read_json
from refers.models.vit import VIT_SHAPES, build_vit, is_original_vit
from refers.models.weights import EncoderWeightsNotFound, load_encoder_weights, read_state_dict

logger = logging.getLogger(__name__)

METADATA_FORMAT = "refers-finetuned"


def build_classifier(model_type: str, img_size: int, num_classes: int, global_pool: str = "token") -> nn.Module:
    """An encoder with a linear head of ``num_classes`` outputs.

    The head of a ViT reads the CLS token (``global_pool="token"``) or the mean patch token
    (``"avg"``); that of a CNN, its pooled features.
    """
    try:
        if global_pool != "token" and not is_original_vit(model_type):
            raise ValueError(f"--global_pool {global_pool} applies to the ViTs of refers.models.vit, not {model_type}")
        return build_vit(model_type, img_size=img_size, num_classes=num_classes, global_pool=global_pool)
    except ValueError as error:
        raise UserError(str(error), exit_code=2) from None


def initialise(model: nn.Module, init: str, pretrained_dir: str | None) -> str:
    """Load the initial encoder weights (``init="pretrained"``) or keep the random ones (``"scratch"``).

    Returns:
        A one-line report of what was loaded.

    Raises:
        UserError: no ``--pretrained_dir``, a missing file, a file without encoder weights or
            with Python objects (never falls back to random weights silently).
    """
    if init == "scratch":
        return "training from random weights (--init scratch)"
    if not pretrained_dir:
        raise UserError("--pretrained_dir is required (a pre-trained checkpoint), or pass --init scratch", exit_code=2)
    try:
        report = load_encoder_weights(model, pretrained_dir)
    except (EncoderWeightsNotFound, UnsafeCheckpointError) as error:
        raise UserError(str(error)) from None
    return f"{pretrained_dir}: {report.summary()}"


def head_module(model: nn.Module) -> nn.Module:
    """The classification head (timm's ``get_classifier``)."""
    return model.get_classifier()


def freeze_backbone(model: nn.Module) -> int:
    """Train the head only (linear probe); returns the number of trainable parameters left."""
    for param in model.parameters():
        param.requires_grad_(False)
    for param in head_module(model).parameters():
        param.requires_grad_(True)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def metadata_path(checkpoint: str | os.PathLike) -> Path:
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(checkpoint.name + ".json")


def save_finetuned(model: nn.Module, path: str | os.PathLike, metadata: dict[str, Any]) -> Path:
    """Write the weights (flat state dict) and then their metadata, both atomically."""
    path = Path(path)
    state = {key: value.detach().cpu().clone() for key, value in model.state_dict().items()}
    atomic_torch_save(state, path)
    atomic_write_text(metadata_path(path), json.dumps({"format": METADATA_FORMAT, **metadata}, indent=2, default=str) + "\n")
    return path


def read_metadata(checkpoint: str | os.PathLike) -> dict[str, Any]:
    """The metadata written beside a fine-tuned checkpoint, or ``{}``."""
    path = metadata_path(checkpoint)
    if not path.is_file():
        return {}
    try:
        data = read_json(path)
    except ValueError as error:  # also not UTF-8, or nested too deeply
        raise UserError(f"{path}: not valid JSON ({error})") from None
    return data if isinstance(data, dict) and data.get("format") == METADATA_FORMAT else {}


def infer_architecture(state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """``model_type``, ``img_size`` and ``num_classes`` of a ViT state dict (timm names), from shapes.

    Returns only what it can tell: ``{}`` for a non-ViT. ``model_type`` is a known name with the same
    patch size, width and depth (the number of heads leaves no trace in the shapes).
    """
    found: dict[str, Any] = {}
    head = state.get("head.weight")
    if head is not None and head.ndim == 2:
        found["num_classes"] = int(head.shape[0])
    patch = state.get("patch_embed.proj.weight")
    if patch is None:
        return found
    depth = len({m.group(1) for k in state if (m := re.match(r"^blocks\.(\d+)\.", k))})
    width, size = int(patch.shape[0]), int(patch.shape[-1])
    for name, shape in VIT_SHAPES.items():
        if (shape.patch_size, shape.embed_dim, shape.depth) == (size, width, depth):
            found["model_type"] = name
            break
    pos = state.get("pos_embed")
    if pos is not None:
        grid = math.isqrt(int(pos.shape[1]) - 1)
        if grid * grid == int(pos.shape[1]) - 1:
            found["img_size"] = grid * size
    return found


def load_finetuned(checkpoint: str | os.PathLike, model_type: str | None, img_size: int | None,
                   num_classes: int | None) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a fine-tuned classifier from its checkpoint, head included.

    Values not given are taken from the metadata file, else from the tensors' shapes.

    Returns:
        (model in eval mode, settings used: model_type, img_size, num_classes, metadata).

    Raises:
        UserError: missing file, unsafe pickle, no head, or an architecture that cannot be told.
    """
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise UserError(f"checkpoint not found: {checkpoint} (train first, or pass --pretrained_dir / --checkpoint)")
    meta = read_metadata(checkpoint)
    try:
        state, _ = read_state_dict(checkpoint)
    except (EncoderWeightsNotFound, UnsafeCheckpointError) as error:
        raise UserError(str(error)) from None
    shapes = infer_architecture(state)
    settings = {
        "model_type": model_type or meta.get("model_type") or shapes.get("model_type"),
        "img_size": img_size or meta.get("img_size") or shapes.get("img_size") or 224,
        "num_classes": num_classes or meta.get("num_classes") or shapes.get("num_classes"),
    }
    if not settings["model_type"] or not settings["num_classes"]:
        raise UserError(f"cannot tell the architecture of {checkpoint}; pass --model_type and --num_classes")
    if "num_classes" in shapes and shapes["num_classes"] != settings["num_classes"]:
        raise UserError(f"{checkpoint} has a head of {shapes['num_classes']} outputs, not {settings['num_classes']}")
    model = build_classifier(settings["model_type"], int(settings["img_size"]), int(settings["num_classes"]),
                             meta.get("global_pool", "token"))
    try:
        report = load_encoder_weights(model, checkpoint, load_head=True)
    except EncoderWeightsNotFound as error:
        raise UserError(str(error)) from None
    head_keys = [k for k, _ in head_module(model).named_parameters()]
    prefix = next((p for p in ("head.", "fc.", "classifier.") if any(k.startswith(p) for k in state)), None)
    if prefix is None or any(f"{prefix}{k}" not in state for k in head_keys):
        raise UserError(f"{checkpoint} holds no classification head for {settings['num_classes']} classes (a pre-training checkpoint?)")
    logger.info("%s: %s", checkpoint, report.summary())
    return model.eval(), {**settings, "metadata": meta}

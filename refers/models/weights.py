"""Load image-encoder weights from any of the formats users have, into a timm ViT.

Formats (detected, never guessed silently):
  (a) the original REFERS fine-tuning format: flat ``transformer.*`` keys, separate q/k/v,
      possibly fp16 (the released ``refers_checkpoint.pth``, ``*_bestauc_checkpoint.bin``);
  (b) the original pre-training checkpoint: ``{"model": {"visual.vit.transformer...": ...}}``;
  (c) this project's pre-training export (format (a)) and full checkpoints (``{"model": ...}``
      with the encoder under ``image_encoder.``) and fine-tuning checkpoints (timm keys);
  (d) Google's ViT ``.npz`` (through timm's own loader);
  (e) timm state dicts (``.pth`` or ``.safetensors``).
This is the timm ``checkpoint_filter_fn`` idea: convert foreign keys in one place.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from refers.base.checkpoints import reading_checkpoint, safe_load

# Prefixes under which an image encoder is found in the known checkpoint layouts.
ENCODER_PREFIXES = ("module.", "visual.vit.", "image_encoder.", "encoder.", "backbone.")

# The one table of key renames between the original ViT-pytorch naming (REFERS, Google's ViT) and
# timm's, read in both directions. ``{n}`` stands for a block number; a name ending in "." is a
# prefix (weight, bias follow), any other is a whole key. Attention q/k/v are the one exception
# (three original tensors, one fused timm ``qkv``): see :data:`_ORIGINAL_QKV`.
KEY_RENAMES: tuple[tuple[str, str], ...] = (
    ("transformer.embeddings.patch_embeddings.", "patch_embed.proj."),
    ("transformer.embeddings.position_embeddings", "pos_embed"),
    ("transformer.embeddings.cls_token", "cls_token"),
    ("transformer.encoder.encoder_norm.", "norm."),
    ("transformer.encoder.layer.{n}.attention_norm.", "blocks.{n}.norm1."),
    ("transformer.encoder.layer.{n}.ffn_norm.", "blocks.{n}.norm2."),
    ("transformer.encoder.layer.{n}.attn.out.", "blocks.{n}.attn.proj."),
    ("transformer.encoder.layer.{n}.ffn.fc1.", "blocks.{n}.mlp.fc1."),
    ("transformer.encoder.layer.{n}.ffn.fc2.", "blocks.{n}.mlp.fc2."),
)
_ORIGINAL_QKV = ("query", "key", "value")  # their order in timm's fused qkv
_QKV = re.compile(r"^transformer\.encoder\.layer\.(\d+)\.attn\.(query|key|value)\.(weight|bias)$")
_FUSED_QKV = re.compile(r"^blocks\.(\d+)\.attn\.qkv\.(weight|bias)$")


def _compile(source: str, target: str) -> tuple[re.Pattern, str]:
    """A ``KEY_RENAMES`` pair as (pattern on ``source`` names, ``re.sub`` replacement)."""
    pattern = "^" + re.escape(source).replace(r"\{n\}", r"(\d+)") + ("" if source.endswith(".") else "$")
    return re.compile(pattern), target.replace("\\", "\\\\").replace("{n}", r"\1")


_TO_TIMM = [_compile(original, timm) for original, timm in KEY_RENAMES]
_TO_ORIGINAL = [_compile(timm, original) for original, timm in KEY_RENAMES]


def _rename(key: str, rules: list[tuple[re.Pattern, str]]) -> str:
    """``key`` renamed by the first rule that matches it; unchanged when none does (e.g. ``head.*``)."""
    for pattern, replacement in rules:
        if pattern.match(key):
            return pattern.sub(replacement, key, count=1)
    return key


def original_to_timm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename the original ViT-pytorch keys to timm's (:data:`KEY_RENAMES`), fusing q/k/v into ``qkv``."""
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        match = _QKV.match(key)
        if match:
            layer, part, kind = match.groups()
            qkv.setdefault((layer, kind), {})[part] = value
            continue
        out[_rename(key, _TO_TIMM)] = value
    for (layer, kind), parts in qkv.items():
        missing = set(_ORIGINAL_QKV) - set(parts)
        if missing:
            raise ValueError(f"layer {layer}: attention {kind} lacks {sorted(missing)}")
        out[f"blocks.{layer}.attn.qkv.{kind}"] = torch.cat([parts[name] for name in _ORIGINAL_QKV], dim=0)
    return out


def timm_to_original(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of :func:`original_to_timm` (the same table read backwards), splitting ``qkv``."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        match = _FUSED_QKV.match(key)
        if match:
            layer, kind = match.groups()
            for name, part in zip(_ORIGINAL_QKV, value.chunk(3, dim=0)):
                out[f"transformer.encoder.layer.{layer}.attn.{name}.{kind}"] = part.clone()
            continue
        out[_rename(key, _TO_ORIGINAL)] = value
    return out


@dataclass
class LoadReport:
    """What :func:`load_encoder_weights` did."""

    source_format: str
    loaded: int
    total: int
    skipped: list[str]

    def summary(self) -> str:
        return f"loaded {self.loaded} of {self.total} tensors ({self.source_format})" + (
            f"; not loaded: {', '.join(self.skipped[:6])}{' ...' if len(self.skipped) > 6 else ''}" if self.skipped else ""
        )


class EncoderWeightsNotFound(ValueError):
    """The checkpoint holds no image-encoder weights this model can take."""


def read_state_dict(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], str]:
    """Read a checkpoint file into a flat timm-named state dict, and name the format found."""
    path = Path(path)
    raw = safe_load(path)
    fmt = "state dict"
    if isinstance(raw, dict) and "model" in raw and isinstance(raw["model"], dict):
        raw, fmt = raw["model"], "checkpoint['model']"
    elif isinstance(raw, dict) and "state_dict" in raw and isinstance(raw["state_dict"], dict):
        raw, fmt = raw["state_dict"], "checkpoint['state_dict']"
    if not isinstance(raw, dict) or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise EncoderWeightsNotFound(f"{path} does not hold a state dict of tensors")
    state = dict(raw)
    # Strip a wrapper prefix only when every encoder key carries it (keep other modules' keys out).
    for prefix in ENCODER_PREFIXES:
        if any(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            fmt += f", prefix {prefix!r}"
    if any(k.startswith("transformer.") for k in state):
        state = original_to_timm(state)
        fmt = "original REFERS/ViT-pytorch naming, " + fmt
    else:
        fmt = "timm naming, " + fmt
    return state, fmt


def load_encoder_weights(model: nn.Module, path: str | os.PathLike, load_head: bool = False) -> LoadReport:
    """Load image-encoder weights from ``path`` into a timm model, whatever the format.

    Position embeddings are resampled to the model's grid; the classification head is loaded only
    with ``load_head`` and matching shapes. Values are cast to the model's dtype (fp16 files load).

    Raises:
        FileNotFoundError: no such file.
        EncoderWeightsNotFound: nothing in the file matches the encoder (never trains from scratch
            silently; pass ``--init scratch`` for that).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pre-trained weights not found: {path} (use --init scratch to train from random weights)")
    target = model.state_dict()
    if path.suffix == ".npz":
        from timm.models.vision_transformer import _load_weights

        before = {k: v.clone() for k, v in target.items()}
        with reading_checkpoint(path):  # NumPy refuses pickled object arrays; a damaged file is one line
            _load_weights(model, str(path))
        after = model.state_dict()
        changed = [k for k in after if not torch.equal(after[k], before[k])]
        return LoadReport("Google ViT .npz", len(changed), len(target), [])
    state, fmt = read_state_dict(path)
    wanted: dict[str, torch.Tensor] = {}
    skipped: list[str] = []
    for key, value in state.items():
        if key.startswith(("head.", "fc.", "classifier.")) and not load_head:
            continue
        if key not in target:
            skipped.append(key)
            continue
        if key == "pos_embed" and value.shape != target[key].shape:
            from timm.layers import resample_abs_pos_embed

            prefix = 0 if getattr(model, "no_embed_class", False) else getattr(model, "num_prefix_tokens", 1)
            grid = model.patch_embed.grid_size
            value = resample_abs_pos_embed(value.float(), new_size=list(grid), num_prefix_tokens=prefix)
        if value.shape != target[key].shape:
            skipped.append(f"{key} {tuple(value.shape)} vs {tuple(target[key].shape)}")
            continue
        wanted[key] = value.to(target[key].dtype)
    encoder_keys = [k for k in target if not k.startswith(("head.", "fc.", "classifier."))]
    if not any(k in wanted for k in encoder_keys):
        raise EncoderWeightsNotFound(
            f"no image-encoder weights for this model in {path} ({fmt}); "
            "check --model_type and --img_size, or pass --init scratch to train from random weights"
        )
    missing = [k for k in encoder_keys if k not in wanted]
    if missing:
        raise EncoderWeightsNotFound(f"{path} ({fmt}) lacks {len(missing)} encoder tensors, e.g. {missing[:3]}")
    model.load_state_dict(wanted, strict=False)
    return LoadReport(fmt, len(wanted), len(target), skipped)

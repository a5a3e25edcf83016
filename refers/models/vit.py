"""The ViT image encoder of REFERS, built from timm.

The original ViT (from ViT-pytorch) places dropout differently from timm's defaults: 0.1 after
the position embeddings and inside the MLP (after GELU and after fc2), but none on the attention
weights, on the attention output projection or before the head. :func:`build_vit` sets exactly
that placement on a timm ``VisionTransformer``.

``model_type`` takes the original names (``ViT-B_16``, ``ViT-B_32``, ``ViT-L_16``, ``ViT-L_32``,
``ViT-H_14``), small ViTs for CPU work (``ViT-S_16``, ``ViT-Ti_16``, ``ViT-micro_8``,
``ViT-micro_16``, ``ViT-nano_8``) and any other timm model name (e.g. ``densenet121``, ``resnet50`` baselines).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class VitShape:
    patch_size: int
    embed_dim: int
    depth: int
    num_heads: int
    mlp_ratio: float = 4.0


VIT_SHAPES: dict[str, VitShape] = {
    "ViT-B_16": VitShape(16, 768, 12, 12),
    "ViT-B_32": VitShape(32, 768, 12, 12),
    "ViT-L_16": VitShape(16, 1024, 24, 16),
    "ViT-L_32": VitShape(32, 1024, 24, 16),
    "ViT-H_14": VitShape(14, 1280, 32, 16),
    # Smaller encoders for CPU work and tests (not in the original).
    "ViT-S_16": VitShape(16, 384, 12, 6),
    "ViT-Ti_16": VitShape(16, 192, 12, 3),
    "ViT-micro_8": VitShape(8, 128, 4, 4),
    "ViT-micro_16": VitShape(16, 128, 4, 4),  # ViT-B/16's patch: 16 tokens at 64 px
    "ViT-nano_8": VitShape(8, 64, 2, 2),
}

# The original's model-type choices that name a CNN baseline, mapped to timm names.
CNN_ALIASES = {"Resnet50": "resnet50", "Resnet18": "resnet18", "Resnet101": "resnet101", "Densenet121": "densenet121"}

ORIGINAL_DROPOUT = 0.1


def is_original_vit(model_type: str) -> bool:
    return model_type in VIT_SHAPES


def build_vit(
    model_type: str = "ViT-B_16",
    img_size: int = 224,
    num_classes: int = 0,
    dropout: float = ORIGINAL_DROPOUT,
    device: torch.device | str | None = None,
    global_pool: str = "token",
) -> nn.Module:
    """Build an image encoder (``num_classes=0``: no head, CLS features) or a classifier.

    Args:
        model_type: an original ViT name, a small ViT name above, or any timm model name.
        img_size: input resolution (square).
        num_classes: outputs of the linear head on the CLS token; 0 for no head.
        dropout: the original's dropout rate, placed as the original does (see module doc).
        device: e.g. ``"meta"`` to build the full-size model without allocating memory.
        global_pool: what a ViT's head reads: ``"token"`` (the CLS token, the original) or
            ``"avg"`` (the mean of the normalised patch tokens; same weights, no extra norm).
    """
    import timm
    from timm.models.vision_transformer import VisionTransformer

    model_type = CNN_ALIASES.get(model_type, model_type)
    if model_type not in VIT_SHAPES:
        with torch.device(device) if device is not None else contextlib.nullcontext():
            try:
                return timm.create_model(model_type, pretrained=False, num_classes=num_classes, img_size=img_size)
            except TypeError:  # CNNs take no img_size
                return timm.create_model(model_type, pretrained=False, num_classes=num_classes)
            except RuntimeError as error:
                raise ValueError(f"unknown --model_type {model_type!r}: {error}") from None
    shape = VIT_SHAPES[model_type]
    with torch.device(device) if device is not None else contextlib.nullcontext():
        model = VisionTransformer(
            img_size=img_size,
            patch_size=shape.patch_size,
            embed_dim=shape.embed_dim,
            depth=shape.depth,
            num_heads=shape.num_heads,
            mlp_ratio=shape.mlp_ratio,
            qkv_bias=True,
            num_classes=num_classes,
            global_pool=global_pool,
            fc_norm=False,  # keep the final norm on all tokens, so "avg" changes no weight names
            class_token=True,
            pos_drop_rate=dropout,
            proj_drop_rate=dropout,  # the MLP's two dropouts; attention's is removed below
            attn_drop_rate=0.0,
            drop_rate=0.0,  # no dropout before the head
        )
    for block in model.blocks:
        block.attn.proj_drop = nn.Identity()
    return model


def vit_tokens(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """All output tokens of a timm ViT after the final norm: [B, 1 + num_patches, D] (CLS first)."""
    return model.forward_features(images)

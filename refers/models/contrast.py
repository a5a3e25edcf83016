"""The two sides of the report contrast, as pure functions of encoder outputs.

Pre-training (:class:`~refers.models.refers_model.RefersModel`) and the exported dual encoder
(:class:`~refers.models.dual_encoder.DualEncoder`) both call these, so the vectors an exported
model gives are the ones the contrast trained.
"""

from __future__ import annotations

import torch
from torch import nn

VISUAL_POOLINGS = ("cls", "mean")
REPORT_POOLINGS = ("pooler", "mean")


def image_contrast_vectors(tokens: torch.Tensor, pooling: str) -> torch.Tensor:
    """The image side from ViT tokens [B, V, 1 + P, D]: each view's CLS token (``cls``) or mean
    patch token (``mean``), views concatenated: [B, V*D]."""
    pooled = tokens[:, :, 0] if pooling == "cls" else tokens[:, :, 1:].mean(dim=2)
    return pooled.flatten(1)


def report_contrast_vectors(bert: nn.Module, projection: nn.Module, input_ids: torch.Tensor,
                            attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """The report side: BERT's pooler output (``pooler``) or its mean token state over the
    attention mask (``mean``), through the projection: [B, V*D]."""
    output = bert(input_ids=input_ids, attention_mask=attention_mask)
    if pooling == "pooler":
        return projection(output.pooler_output)
    mask = attention_mask.unsqueeze(-1).to(output.last_hidden_state.dtype)
    return projection((output.last_hidden_state * mask).sum(1) / mask.sum(1).clamp(min=1))

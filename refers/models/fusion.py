"""Gated fusion of the views of a study into one memory for the report decoder."""

from __future__ import annotations

import torch
from torch import nn


class ViewFusion(nn.Module):
    """One sigmoid gate per view position, computed from all views' tokens at a grid position.

    For views ``P_1..P_V`` (patch tokens plus their view's CLS token), the gate of view ``k`` is
    ``w_k = sigmoid(fc_k([P_1; ...; P_V]))`` at every grid position, ``P_k <- w_k * P_k``, and the
    memory is ``concat(P_1, ..., P_V)`` along tokens. The gates are independent (the released
    original weights came from a version where all of them used ``fc_1``).
    """

    def __init__(self, dim: int, num_views: int = 3):
        super().__init__()
        self.num_views = num_views
        self.gates = nn.ModuleList(nn.Linear(num_views * dim, 1) for _ in range(num_views))

    def forward(self, patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Gate and concatenate the views.

        Args:
            patches: [B, V, P, D] per-view tokens.

        Returns:
            memory [B, V * P, D] (view 1's tokens first) and the gate values [B, V, P].
        """
        batch, views, positions, dim = patches.shape
        if views != self.num_views:
            raise ValueError(f"expected {self.num_views} views, got {views}")
        same_position = patches.permute(0, 2, 1, 3).reshape(batch, positions, views * dim)
        weights = torch.cat([gate(same_position) for gate in self.gates], dim=-1).sigmoid()  # [B, P, V]
        weights = weights.permute(0, 2, 1)
        memory = patches * weights.unsqueeze(-1)
        return memory.reshape(batch, views * positions, dim), weights

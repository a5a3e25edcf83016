"""Image-to-report and report-to-image retrieval recall@K on paired embeddings.

Row ``i`` of the image embeddings and row ``i`` of the report embeddings belong to the same study.
Recall@K in one direction is the fraction of queries whose own partner is among the K most
similar candidates (cosine similarity). Ties count against the query: the partner's rank is the
number of candidates scoring at least as high as it, itself excluded.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F


def _partner_ranks(queries: torch.Tensor, candidates: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """0-based rank of each query's partner among all candidates: [N] int64."""
    ranks = []
    for start in range(0, queries.shape[0], chunk):
        sim = queries[start : start + chunk] @ candidates.T  # [n, N]
        rows = torch.arange(sim.shape[0], device=sim.device)
        own = sim[rows, rows + start]
        ranks.append((sim >= own[:, None]).sum(dim=1) - 1)
    return torch.cat(ranks)


def retrieval_recall(
    image_embeddings: torch.Tensor, report_embeddings: torch.Tensor, ks: Sequence[int] = (1, 5, 10)
) -> dict[str, float]:
    """Recall@K in both directions.

    Args:
        image_embeddings: [N, D] one row per study.
        report_embeddings: [N, D] the same studies' reports, same order.
        ks: the K values.

    Returns:
        ``{"image_to_report_R@1": ..., "report_to_image_R@1": ..., ...}`` in [0, 1].
    """
    if image_embeddings.shape != report_embeddings.shape or image_embeddings.ndim != 2:
        raise ValueError(f"embeddings must both be [N, D], got {tuple(image_embeddings.shape)} and {tuple(report_embeddings.shape)}")
    images = F.normalize(image_embeddings.float(), dim=-1)
    reports = F.normalize(report_embeddings.float(), dim=-1)
    out: dict[str, float] = {}
    for direction, ranks in (
        ("image_to_report", _partner_ranks(images, reports)),
        ("report_to_image", _partner_ranks(reports, images)),
    ):
        for k in ks:
            out[f"{direction}_R@{k}"] = (ranks < k).float().mean().item()
    return out

"""Sharded evaluation for both stages: every item scored exactly once, the results in dataset order.

Each rank scores a share of the items and keeps each item's dataset index beside its results;
:func:`gather_in_order` collects every rank's share (rank order), sorts by index (stable) and drops
repeats of an index (the first one stays), so padding that made ranks run equal numbers of batches
is not counted twice. Fine-tuning scores contiguous, unpadded shards (:func:`shard_range`);
pre-training's validation pads its last batch (the model's collectives need equal batches per
rank) and relies on the repeat dropping.
"""

from __future__ import annotations

import numpy as np
import torch.distributed as dist

from refers.engine.distributed import DistInfo


def shard_range(size: int, world_size: int, rank: int) -> range:
    """Contiguous share of ``range(size)`` for ``rank``: every index on exactly one rank, no padding.

    Concatenating the shards of ranks 0..W-1 gives back the list order.
    """
    base, extra = divmod(size, world_size)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (1 if rank < extra else 0))


def gather_in_order(indices: np.ndarray, columns: dict[str, np.ndarray], info: DistInfo,
                    sums: dict[str, float] | None = None) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, float]]:
    """Every rank's rows, one per index, in index order (the same on every rank).

    Args:
        indices: [N] dataset indices of this rank's rows (N may differ between ranks, or be 0).
        columns: {name: [N, ...]} this rank's results, row i belonging to ``indices[i]``.
        sums: {name: value} per-rank totals to add up over ranks (e.g. a loss sum).

    Returns:
        (indices [M] increasing and unique, {name: [M, ...]}, {name: total}).
    """
    part = (indices, columns, dict(sums or {}))
    parts = [part]
    if info.distributed:
        parts = [None] * info.world_size
        dist.all_gather_object(parts, part)
    all_indices = np.concatenate([p[0] for p in parts])
    order = np.argsort(all_indices, kind="stable")
    ordered = all_indices[order]
    keep = order[np.concatenate([[True], ordered[1:] != ordered[:-1]])] if len(order) else order
    gathered = {name: np.concatenate([p[1][name] for p in parts])[keep] for name in columns}
    totals = {name: float(sum(p[2][name] for p in parts)) for name in (sums or {})}
    return all_indices[keep], gathered, totals

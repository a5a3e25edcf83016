"""Scoring a list under DDP: every image exactly once, results in list order on every rank.

A ``DistributedSampler`` pads the last batch with repeated images so that ranks have equal shares,
which counts those images twice in the AUC. Here each rank scores a contiguous shard (no padding,
shards may differ by one image) and :func:`refers.engine.sharded.gather_in_order` gathers them in
list order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from refers.data.device_transforms import to_model_input
from refers.engine.distributed import DistInfo
from refers.engine.precision import Precision
from refers.engine.sharded import gather_in_order, shard_range
from refers.finetune.data import collate_dropping_none


@dataclass
class EvalResult:
    """Scores of one list.

    Attributes:
        indices: [N] positions in the dataset of the images scored (all, unless unreadable ones
            were skipped), increasing.
        labels: [N, C] targets.
        probs: [N, C] sigmoid probabilities.
        loss: mean binary cross-entropy over all N x C outputs.
    """

    indices: np.ndarray
    labels: np.ndarray
    probs: np.ndarray
    loss: float


@torch.no_grad()
def evaluate(model: nn.Module, dataset: Dataset, batch_size: int, info: DistInfo, precision: Precision,
             num_workers: int = 0, progress: bool = True, desc: str = "Validating") -> EvalResult:
    """Score ``dataset`` with ``model`` (unwrapped, not DDP) across all ranks.

    Args:
        dataset: a :class:`~refers.finetune.data.ListDataset` (items: image, labels [C], index).
        batch_size: images per forward pass on this rank.

    Returns:
        The same :class:`EvalResult` on every rank.
    """
    from tqdm import tqdm

    was_training = model.training
    model.eval()
    shard = Subset(dataset, list(shard_range(len(dataset), info.world_size, info.rank)))
    loader = DataLoader(shard, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=collate_dropping_none, pin_memory=info.device.type == "cuda",
                        generator=torch.Generator())  # leaves the global RNG (training's dropout) alone
    indices, labels, probs = [], [], []
    loss_sum = 0.0
    for batch in tqdm(loader, desc=desc, disable=not (progress and info.is_main), dynamic_ncols=True, leave=False):
        if batch is None:
            continue
        images, targets, index = batch
        with precision.autocast():
            logits = model(to_model_input(images, info.device))
        logits = logits.float().reshape(len(targets), -1).cpu()
        loss_sum += float(nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="sum"))
        indices.append(index.numpy())
        labels.append(targets.numpy())
        probs.append(torch.sigmoid(logits).numpy())
    model.train(was_training)
    part = _concat(indices, labels, probs, width=int(dataset.labels.shape[1]))
    all_indices, columns, sums = gather_in_order(part[0], {"labels": part[1], "probs": part[2]}, info, {"loss": loss_sum})
    return EvalResult(all_indices, columns["labels"], columns["probs"], sums["loss"] / max(1, columns["labels"].size))


def _concat(indices: list, labels: list, probs: list, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if not indices:  # an empty shard (fewer images than ranks, or all skipped)
        return np.zeros(0, np.int64), np.zeros((0, width), np.float32), np.zeros((0, width), np.float32)
    return np.concatenate(indices).astype(np.int64), np.concatenate(labels), np.concatenate(probs)

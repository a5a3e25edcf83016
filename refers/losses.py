"""The two pre-training objectives: report generation (captioning) and report contrast (ConVIRT)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def caption_loss(logits: torch.Tensor, targets: torch.Tensor, pad_id: int) -> torch.Tensor:
    """Teacher-forced cross-entropy, averaged over the non-padding target tokens.

    Args:
        logits: [B, T, V] next-token scores.
        targets: [B, T] next-token ids; ``pad_id`` positions are ignored.
        pad_id: the padding id.
    """
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=pad_id)


def _gather_with_grad(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """All processes' rows (gradients flow back to their owners) and the offset of ours.

    Every process must hold the same number of rows.
    """
    import torch.distributed as dist
    import torch.distributed.nn.functional as dist_fn

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x, 0
    return torch.cat(dist_fn.all_gather(x), dim=0), dist.get_rank() * x.shape[0]


def convirt_loss(
    image_vec: torch.Tensor,
    text_vec: torch.Tensor,
    tau: float = 0.1,
    lam: float = 0.75,
    gather: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ConVIRT image-report contrastive loss, with gradients through both directions.

    ``i2t`` is the InfoNCE loss of each image against all reports (its own is the positive),
    ``t2i`` of each report against all images; similarities are cosines divided by ``tau``. The
    original detached ``t2i`` (``.item()``); here both terms train the model.

    Args:
        image_vec: [B, E] image vectors (any scale; normalised here).
        text_vec: [B, E] report vectors.
        tau: temperature.
        lam: weight of ``i2t``; ``t2i`` gets ``1 - lam``.
        gather: take negatives from all processes (``torch.distributed.nn`` all-gather, so gradients
            flow to the process that computed them): N processes with batch B/N give the loss and
            gradients of one process with batch B. Needs the same B on every process.

    Returns:
        ``(lam * i2t + (1 - lam) * t2i, i2t, t2i)``, each a scalar averaged over the local rows.
    """
    image = F.normalize(image_vec.float(), dim=-1)
    text = F.normalize(text_vec.float(), dim=-1)
    if gather:
        all_image, offset = _gather_with_grad(image)
        all_text, _ = _gather_with_grad(text)
    else:
        all_image, all_text, offset = image, text, 0
    labels = torch.arange(image.shape[0], device=image.device) + offset
    i2t = F.cross_entropy(image @ all_text.t() / tau, labels)
    t2i = F.cross_entropy(text @ all_image.t() / tau, labels)
    return lam * i2t + (1.0 - lam) * t2i, i2t, t2i

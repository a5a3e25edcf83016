"""Validation of a pre-training run: mean losses and image/report retrieval on the val studies.

Every rank evaluates its shard of the validation set (padded so all ranks run the same number of
batches, which keeps collectives inside the model matched); losses are averaged across ranks, and
the embeddings are gathered in study order with the padding repeats dropped
(:func:`refers.engine.sharded.gather_in_order`, as fine-tuning's evaluation) before retrieval.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import nn

from refers.engine.distributed import DistInfo
from refers.engine.precision import Precision
from refers.engine.sampling import ResumableBatchSampler
from refers.engine.sharded import gather_in_order
from refers.eval.retrieval import retrieval_recall


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Move a batch's tensors to ``device`` (other values, e.g. study ids, stay as they are); its
    uint8 images are normalised there (:func:`refers.data.device_transforms.study_batch_to_device`)."""
    from refers.data.device_transforms import study_batch_to_device

    return study_batch_to_device(batch, device)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Any,
    sampler: ResumableBatchSampler,
    info: DistInfo,
    precision: Precision,
    decode: Callable[[list[int]], str] | None = None,
    max_length: int = 100,
) -> tuple[dict[str, float], tuple[str, str] | None]:
    """Mean validation losses and retrieval recall@1/5/10 in both directions.

    Args:
        model: the unwrapped model (``forward``, ``encode_images``, ``encode_reports``).
        loader, sampler: the validation loader and its (unshuffled, padded) batch sampler.
        precision: the autocast used in training.
        decode: when given (``--log-text``), also return (generated, reference) text of the first
            validation study.

    Returns:
        ``({"loss": .., "<component>": .., "image_to_report_R@1": .., ...}, sample or None)``;
        the same metrics on every rank.
    """
    was_training = model.training
    model.eval()
    device = info.device
    sums: dict[str, torch.Tensor] = {}
    batches = 0
    images, reports, indices = [], [], []
    sample = None
    sampler.set_position(0, 0)
    index_batches = [[index for index, _ in batch] for batch in sampler]
    for batch_indices, batch in zip(index_batches, loader):
        batch = to_device(batch, device)
        with precision.autocast():
            output = model(batch)
            image_vec = model.encode_images(batch["images"])
            report_vec = model.encode_reports(batch["bert_input_ids"], batch["bert_attention_mask"])
        for name, value in {"loss": output["loss"], **output.get("components", {})}.items():
            sums[name] = sums.get(name, torch.zeros((), device=device)) + value.detach().float()
        batches += 1
        images.append(image_vec.float())
        reports.append(report_vec.float())
        indices.append(torch.tensor(batch_indices, device=device))
        if decode is not None and sample is None and info.is_main:
            generated = model.generate(batch["images"][:1], max_length=max_length, beam_size=1)
            reference = batch["caption_ids"][0][batch["caption_mask"][0].bool()].tolist()
            sample = (decode(list(generated[0])), decode(reference))
    names = sorted(sums)
    totals = torch.stack([sums[k] for k in names] + [torch.tensor(float(batches), device=device)])
    if info.distributed:
        dist.all_reduce(totals)
    metrics = {name: (totals[i] / totals[-1]).item() for i, name in enumerate(names)}

    columns = {"images": torch.cat(images).cpu().numpy(), "reports": torch.cat(reports).cpu().numpy()}
    _, gathered, _ = gather_in_order(torch.cat(indices).cpu().numpy(), columns, info)
    all_images, all_reports = (torch.from_numpy(gathered[k]).to(device) for k in ("images", "reports"))
    metrics.update(retrieval_recall(all_images, all_reports))
    model.train(was_training)
    return metrics, sample

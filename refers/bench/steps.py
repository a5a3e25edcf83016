"""Training-step benchmarks: throughput, model FLOPs, MFU, and our step's overhead over a bare loop.

Both stages are timed through the training engine's own step (:class:`refers.engine.step.OptimStep`,
what :class:`refers.engine.trainer.Trainer` runs), with each stage's loss: fine-tuning's
:func:`refers.finetune.train.classification_loss` and pre-training's
:func:`refers.engine.pretrain_loop.study_loss` (forward of
:class:`refers.models.refers_model.RefersModel`, backward, clipping, Lookahead SGD, scheduler).

The bare loop beside the fine-tuning step (:class:`BareLoop`, the only other place in the library
that calls ``.backward()``) is what anyone would write by hand with the same timm model, batch, loss
(BCE with logits), optimiser (SGD, momentum 0.9), clipping, scheduler and precision, and nothing
else. Both run in this process on the same batch, in interleaved blocks, and the overhead is the
median of the per-block time ratios minus one.
"""

from __future__ import annotations

import copy
import itertools
import logging
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from refers.bench.peaks import device_name, mfu
from refers.bench.timing import interleaved, median, paired_ratios, synchronize, timed

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Preset:
    """Model sizes of a benchmark preset.

    Attributes:
        model_type: fine-tuning encoder (``refers.models.vit`` name).
        img_size: input side in pixels.
        num_classes: head outputs (NIH: 14).
        batch_size: fine-tuning images per step.
        pretrain_config: pre-training preset (``configs/pretrain/<name>.yaml``).
        pretrain_batch: studies per pre-training step.
    """

    model_type: str
    img_size: int
    num_classes: int
    batch_size: int
    pretrain_config: str
    pretrain_batch: int


PRESETS: dict[str, Preset] = {
    # Seconds on 2 CPU cores; what the tests and `make bench` use.
    "tiny": Preset("ViT-nano_8", 32, 14, 16, "tiny_cpu", 4),
    "cpu": Preset("ViT-micro_8", 64, 14, 32, "tiny_cpu", 8),
    # The published models: ViT-B/16 at 224 px (fine-tuning: NIH's 14 classes).
    "vitb16": Preset("ViT-B_16", 224, 14, 256, "refers_vitb16", 64),
}


def resolve_precision(name: str | None, device: torch.device) -> str:
    """The precision to run: the one asked for, else bf16 on GPUs that support it, else fp32."""
    if name:
        if device.type != "cuda" and name != "fp32":
            logger.warning("--precision %s: no GPU, so this benchmark runs fp32 on the CPU", name)
            return "fp32"
        return name
    return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gib(device: torch.device) -> float | None:
    """Most device memory allocated since :func:`reset_peak_memory` (GPU), or None (CPU)."""
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def count_flops(run: Callable[[], Any]) -> int:
    """FLOPs of the matrix products, convolutions and attention that ``run()`` executes (forward and
    backward), as :class:`torch.utils.flop_counter.FlopCounterMode` counts them."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        run()
    return int(counter.get_total_flops())


def fake_images(batch: int, size: int, seed: int = 0) -> torch.Tensor:
    """uint8 grey images [B, 1, S, S]: what the data loader hands over."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, 1, size, size), dtype=torch.uint8, generator=generator)


def loader_output_is_uint8(img_size: int) -> bool:
    """Whether the fine-tuning training transform hands uint8 images to the device (fast path)."""
    from PIL import Image

    from refers.finetune.data import train_transform

    try:
        return train_transform(img_size)(Image.new("L", (img_size, img_size))).dtype == torch.uint8
    except (RuntimeError, ValueError, TypeError):  # a float transform that needs three channels
        return False


# ----------------------------------------------------------------------------------------- fine-tuning


class BareLoop:
    """The hand-written reference: same model, loss, SGD, clipping, scheduler, precision."""

    def __init__(self, model: nn.Module, lr: float, warmup: int, steps: int, max_grad_norm: float,
                 device: torch.device, precision: str):
        from refers.engine.precision import named_precision
        from refers.engine.optim import warmup_schedule

        self.model, self.device = model, device
        self.precision = named_precision(precision, device)  # autocast and the scaler, as every run gets them
        self.optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
        self.scheduler = warmup_schedule(self.optimizer, "cosine", warmup, steps)
        self.scaler = self.precision.scaler
        self.max_grad_norm = max_grad_norm

    def step(self, images: torch.Tensor, targets: torch.Tensor) -> None:
        images = images.to(self.device, non_blocking=True)
        targets = targets.to(self.device, non_blocking=True)
        with self.precision.autocast():
            logits = self.model(images)
        loss = nn.functional.binary_cross_entropy_with_logits(logits.float(), targets)
        (self.scaler.scale(loss) if self.scaler else loss).backward()
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        nn.utils.clip_grad_norm_(self.model.parameters(), self.max_grad_norm)
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)


def finetune_benchmark(preset: Preset, device: torch.device, precision: str, batch_size: int | None = None,
                       steps: int = 5, repeats: int = 7, warmup: int = 2, compile_model: bool = False) -> dict[str, Any]:
    """Throughput, FLOPs, MFU and overhead of the fine-tuning step.

    Args:
        steps: optimiser steps per timed block.
        repeats: timed blocks per contender (interleaved).
        warmup: untimed steps first (and compilation, with ``compile_model``).

    Returns:
        A JSON-ready dict (see :mod:`refers.bench.report`).
    """
    from refers.data.device_transforms import DeviceNormalize
    from refers.engine.precision import named_precision
    from refers.engine.step import OptimStep
    from refers.finetune.model import build_classifier
    from refers.engine.optim import warmup_schedule
    from refers.finetune.train import classification_loss

    batch = batch_size or preset.batch_size
    torch.manual_seed(0)
    reset_peak_memory(device)
    ours_model = build_classifier(preset.model_type, preset.img_size, preset.num_classes).to(device)
    bare_model = copy.deepcopy(ours_model)
    pin = device.type == "cuda"
    grey = fake_images(batch, preset.img_size)
    uint8_path = loader_output_is_uint8(preset.img_size)
    float_images = DeviceNormalize()(grey)  # [B, 3, S, S], what the original's loader hands over
    ours_images = grey if uint8_path else float_images
    targets = (torch.rand(batch, preset.num_classes, generator=torch.Generator().manual_seed(1)) < 0.2).float()
    if pin:
        ours_images, float_images, targets = ours_images.pin_memory(), float_images.pin_memory(), targets.pin_memory()

    total_steps = warmup + 2 * steps * repeats + 10
    params = [p for p in ours_model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=3e-2, momentum=0.9)
    scheduler = warmup_schedule(optimizer, "cosine", 1, total_steps)
    ours_step = OptimStep(ours_model, classification_loss, optimizer, scheduler, named_precision(precision, device),
                          params, clip_norm=1.0)
    batches = itertools.repeat((ours_images, targets, torch.arange(batch)))
    bare = BareLoop(bare_model, 3e-2, 1, total_steps, 1.0, device, precision)
    flops = count_flops(lambda: bare.step(float_images, targets))  # eager: the counter does not see inside compiled graphs
    if compile_model:  # in place, as `train.py --compile` does
        ours_model.compile()
        bare_model.compile()

    def ours() -> None:  # one step as the trainer makes it (train mode, then the step)
        ours_model.train()
        ours_step(batches)

    def ours_block() -> None:
        for _ in range(steps):
            ours()

    def bare_block() -> None:
        for _ in range(steps):
            bare.step(float_images, targets)

    for _ in range(warmup):
        ours()
        bare.step(float_images, targets)
    times = interleaved({"ours": ours_block, "bare": bare_block}, repeats, device)
    ratios = paired_ratios(times["ours"], times["bare"])
    step_time = median(times["ours"]) / steps
    name = device_name(device)
    flops_per_s = flops / step_time
    return {
        "model_type": preset.model_type, "img_size": preset.img_size, "batch_size": batch, "precision": precision,
        "compiled": compile_model, "loader_dtype": "uint8" if uint8_path else "float32",
        "step_s": step_time, "images_per_s": batch / step_time,
        "bare_step_s": median(times["bare"]) / steps, "bare_images_per_s": batch * steps / median(times["bare"]),
        "overhead_ratio": median(ratios), "overhead_ratios": ratios,
        "flops_per_step": flops, "gflops_per_image": flops / batch / 1e9, "tflops_per_s": flops_per_s / 1e12,
        "mfu": mfu(flops_per_s, name, precision), "max_memory_gib": peak_memory_gib(device),
    }


# ----------------------------------------------------------------------------------------- pre-training


def pretrain_config(name: str, device: torch.device):
    """A pre-training preset with nothing to read from disk (random ViT, BERT built from config)."""
    from refers.config import load_config
    from refers.base.paths import project_root

    path = project_root() / "configs" / "pretrain" / f"{name}.yaml"
    return load_config(path, ["MODEL.VISUAL.PRETRAINED", "", "MODEL.TEXTUAL.BERT_DIR", ""])


def fake_studies(cfg, batch: int, device: torch.device, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random batch as :func:`refers.data.pretrain_dataset.collate_studies` makes it (full-length reports)."""
    generator = torch.Generator().manual_seed(seed)
    data, size = cfg.DATA, cfg.DATA.IMAGE_CROP_SIZE
    length = data.MAX_CAPTION_LENGTH
    caption = torch.randint(5, data.VOCAB_SIZE, (batch, length), generator=generator)
    caption[:, 0] = data.SOS_INDEX
    caption[:, -1] = data.EOS_INDEX
    bert_ids = torch.randint(5, cfg.MODEL.TEXTUAL.BERT_VOCAB_SIZE, (batch, data.BERT_MAX_LENGTH), generator=generator)
    images = torch.randn(batch, data.NUM_VIEWS, 3, size, size, generator=generator)
    return {
        "images": images.to(device), "caption_ids": caption.to(device),
        "caption_mask": torch.ones(batch, length, dtype=torch.bool, device=device),
        "bert_input_ids": bert_ids.to(device),
        "bert_attention_mask": torch.ones(batch, data.BERT_MAX_LENGTH, dtype=torch.long, device=device),
    }


def pretrain_benchmark(preset: Preset, device: torch.device, precision: str, batch_size: int | None = None,
                       steps: int = 3, repeats: int = 3, warmup: int = 1, compile_model: bool = False) -> dict[str, Any]:
    """Throughput (studies/s, images/s), FLOPs and MFU of the pre-training step."""
    from refers.engine.optim import OptimSettings, build_optimizer, build_scheduler
    from refers.engine.precision import named_precision
    from refers.engine.pretrain_loop import study_loss
    from refers.engine.step import OptimStep
    from refers.models.refers_model import build_refers_model

    cfg = pretrain_config(preset.pretrain_config, device)
    batch = batch_size or preset.pretrain_batch
    torch.manual_seed(0)
    reset_peak_memory(device)
    model = build_refers_model(cfg).to(device)
    settings = OptimSettings.from_config(cfg)
    optimizer = build_optimizer(model, settings)
    scheduler = build_scheduler(optimizer, settings)
    studies = fake_studies(cfg, batch, device)
    clip = cfg.OPTIM.CLIP_GRAD_NORM
    engine_step = OptimStep(model, lambda m, b, p: study_loss(m, b, p, device), optimizer, scheduler,
                            named_precision(precision, device), list(model.parameters()), clip if clip > 0 else None)
    batches = itertools.repeat(studies)
    model.train()

    def step() -> None:  # the trainer's step of a pre-training run
        engine_step(batches)

    def block() -> None:
        for _ in range(steps):
            step()

    flops = count_flops(step)  # eager (see finetune_benchmark)
    if compile_model:  # in place, as `pretrain_refers.py --compile` does
        model.image_encoder.compile()
    for _ in range(warmup):
        step()
    synchronize(device)
    times = [timed(block, device) for _ in range(repeats)]
    step_time = median(times) / steps
    views = cfg.DATA.NUM_VIEWS
    name = device_name(device)
    return {
        "config": preset.pretrain_config, "image_encoder": cfg.MODEL.VISUAL.NAME, "img_size": cfg.DATA.IMAGE_CROP_SIZE,
        "studies_per_step": batch, "views": views, "precision": precision, "compiled": compile_model,
        "step_s": step_time, "studies_per_s": batch / step_time, "images_per_s": batch * views / step_time,
        "flops_per_step": flops, "gflops_per_image": flops / (batch * views) / 1e9,
        "tflops_per_s": flops / step_time / 1e12, "mfu": mfu(flops / step_time, name, precision),
        "max_memory_gib": peak_memory_gib(device),
    }

"""Evaluation benchmark: scoring throughput of :func:`refers.finetune.evaluate.evaluate` and the time
the AUC takes on a test set of NIH's size (22,433 images x 14 classes) through :mod:`refers.eval.metrics`."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from refers.bench.steps import Preset, fake_images
from refers.bench.timing import median, timed

NIH_TEST_IMAGES = 22_433
NIH_CLASSES = 14


class InMemoryImages(Dataset):
    """Items (uint8 image [1, S, S], labels [C], index), as the fine-tuning datasets give them."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        return self.images[index], self.labels[index], index


def synthetic_scores(n: int = NIH_TEST_IMAGES, classes: int = NIH_CLASSES, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels with NIH-like prevalences (0.2% to 18%) and scores that carry some signal."""
    rng = np.random.default_rng(seed)
    prevalence = np.geomspace(0.002, 0.18, classes)
    labels = (rng.random((n, classes)) < prevalence).astype(np.float32)
    probs = 1 / (1 + np.exp(-(rng.normal(size=(n, classes)) + 1.5 * labels - 2)))
    return labels, probs.astype(np.float32)


def auc_benchmark(n: int = NIH_TEST_IMAGES, bootstrap: int = 200, repeats: int = 3) -> dict[str, Any]:
    """Seconds for per-class AUC + mean AUC, and for a bootstrap confidence interval."""
    from refers.eval.metrics import bootstrap_ci, mean_auc, per_class_auc

    labels, probs = synthetic_scores(n)
    times, value = [], 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        value = mean_auc(per_class_auc(labels, probs))
        times.append(time.perf_counter() - start)
    start = time.perf_counter()
    bootstrap_ci(labels, probs, n=bootstrap, seed=0)
    boot = time.perf_counter() - start
    return {"images": n, "classes": labels.shape[1], "auc_s": median(times), "mean_auc": value,
            "bootstrap_resamples": bootstrap, "bootstrap_s": boot}


def eval_benchmark(preset: Preset, device: torch.device, precision: str, batch_size: int, images: int) -> dict[str, Any]:
    """Images/s of the project's evaluation function (forward, sigmoid, gather, list order)."""
    from refers.engine.distributed import DistInfo
    from refers.finetune.evaluate import evaluate
    from refers.finetune.model import build_classifier
    from refers.engine.precision import make_precision

    from refers.bench.steps import loader_output_is_uint8
    from refers.data.device_transforms import DeviceNormalize

    torch.manual_seed(0)
    model = build_classifier(preset.model_type, preset.img_size, preset.num_classes).to(device)
    grey = fake_images(images, preset.img_size)
    data = grey if loader_output_is_uint8(preset.img_size) else DeviceNormalize()(grey)
    labels = (torch.rand(images, preset.num_classes) < 0.1).float()
    dataset = InMemoryImages(data, labels)
    info = DistInfo(device=device)
    amp = make_precision(precision == "fp16", precision == "bf16", 0.0, device, say=False)
    run = lambda: evaluate(model, dataset, batch_size, info, amp, num_workers=0, progress=False)  # noqa: E731
    run()  # warm-up
    seconds = median([timed(run, device) for _ in range(2)])
    return {"model_type": preset.model_type, "img_size": preset.img_size, "batch_size": batch_size,
            "images": images, "precision": precision, "images_per_s": images / seconds}

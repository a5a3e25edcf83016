"""Data-loading benchmark: model-ready tensors per second, our default path against the original's.

The data are synthetic NIH-format PNGs and MIMIC-format JPEGs at realistic resolution, made by
``refers synth`` and then ``refers prepare`` (in a cache folder, reused across runs).

* **original** (as the issue defines it): PIL opens the dataset's own file at its original
  resolution as RGB, then the same geometric transforms, ``ToTensor`` and ``Normalize`` on the
  host: NIH the fine-tuning training transform, MIMIC the pre-training view transform.
* **ours**: what the project's loaders do after ``refers prepare``: NIH through
  :func:`refers.finetune.data.build_dataset` on the prepared list (whatever image root and
  transforms it uses), MIMIC through the per-view work of
  :class:`refers.data.pretrain_dataset.StudyDataset` on the prepared images; a uint8 batch is
  normalised by :class:`~refers.data.device_transforms.DeviceNormalize` as the training step does.
* **packed**: the NIH list read from :mod:`refers.data.packed_cache` (reported separately).

Every contender runs in a ``DataLoader`` with the same batch size and worker count; each epoch
runs once untimed (worker start-up, page cache), then the contenders alternate and the ratio is
the median over repeats.
"""

from __future__ import annotations

import argparse
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from refers.bench.timing import interleaved, median, paired_ratios

logger = logging.getLogger(__name__)

NIH, MIMIC = "NIH_ChestX-ray", "MIMIC-CXR"


@dataclass
class BenchData:
    """Where the synthetic data and its prepared lists are."""

    root: Path
    nih_lists: Path
    mimic_lists: Path
    png_size: int
    jpeg_size: int

    @property
    def data(self) -> Path:
        return self.root / "Data"


def make_bench_data(cache: Path, png_size: int = 1024, jpeg_size: int = 2048, studies: int = 10) -> BenchData:
    """Synthesise NIH PNGs and MIMIC JPEGs and run ``refers prepare`` on them, once per setting.

    Args:
        cache: folder kept between runs; the data of other settings are replaced.
        png_size / jpeg_size: side of the generated NIH PNGs and MIMIC JPEGs (the real ones are
            1024x1024 and about 2500x3000).
        studies: ``refers synth --studies`` (10: 25 NIH images, about 20 MIMIC images).
    """
    from refers.cli import prepare, synth

    root = cache / f"data_png{png_size}_jpeg{jpeg_size}_s{studies}"
    data = BenchData(root, root / "DataProcessed" / NIH, root / "DataProcessed" / "MIMIC", png_size, jpeg_size)
    done = root / "READY"
    if done.is_file():
        return data
    import shutil

    if cache.is_dir():  # other settings: stale
        for old in cache.glob("data_*"):
            shutil.rmtree(old, ignore_errors=True)
    for name, size in ((NIH, png_size), (MIMIC, jpeg_size)):
        code = synth.main(["--out", str(data.data), "--studies", str(studies), "--datasets", name, "--image-size", str(size),
                           "--no-progress"])
        if code:
            raise RuntimeError(f"refers synth failed for {name} (exit {code})")
    steps = (["nih", "--root", str(data.data / NIH), "--out", str(data.nih_lists), "--force"],
             ["mimic", "--root", str(data.data / MIMIC), "--out", str(data.mimic_lists), "--force"])
    for argv in steps:
        code = prepare.main(argv)
        if code:
            raise RuntimeError(f"refers prepare {argv[0]} failed (exit {code})")
    done.write_text("synthetic benchmark data, complete\n", encoding="utf-8")
    return data


# ----------------------------------------------------------------------------------------- datasets


class CycledDataset(Dataset):
    """``length`` items cycling over ``files``: item i = ``load(files[i % len(files)])``."""

    def __init__(self, files: Sequence[str], load: Callable[[str], torch.Tensor], length: int):
        self.files, self.load, self.length = list(files), load, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.load(self.files[index % len(self.files)])


class CycledView(Dataset):
    """``length`` items cycling over a dataset, keeping only the image of each item."""

    def __init__(self, dataset: Dataset, length: int):
        self.dataset, self.length = dataset, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.dataset[index % len(self.dataset)][0]  # type: ignore[arg-type]


class OriginalLoad:
    """The original's image path: PIL RGB at full resolution + a float transform (picklable)."""

    def __init__(self, transform):
        self.transform = transform

    def __call__(self, path: str) -> torch.Tensor:
        from PIL import Image

        with Image.open(path) as image:
            return self.transform(image.convert("RGB"))


class MimicViewLoad:
    """Our pre-training path for one view: grey decode (draft mode) + the view transform -> uint8 [1, S, S]."""

    def __init__(self, cfg, train: bool = True):
        from refers.data.device_transforms import build_view_transform

        self.min_side = cfg.DATA.IMAGE_MIN_SIDE or None
        self.transform = build_view_transform(cfg, train)

    def __call__(self, path: str) -> torch.Tensor:
        from refers.data.images import open_grey

        return self.transform(open_grey(path, min_side=self.min_side))  # uint8, normalised on the device


def original_nih_transform(img_size: int):
    from torchvision import transforms

    from refers.data.device_transforms import IMAGENET_MEAN, IMAGENET_STD

    return transforms.Compose([transforms.RandomResizedCrop((img_size, img_size)), transforms.RandomHorizontalFlip(),
                               transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def original_mimic_transform(cfg):
    """The recipe's pre-training augmentation on RGB images, normalised on the host."""
    from torchvision import transforms

    from refers.data.device_transforms import IMAGENET_MEAN, IMAGENET_STD

    data = cfg.DATA
    jitter = transforms.ColorJitter(brightness=tuple(data.BRIGHTNESS), contrast=tuple(data.CONTRAST))
    return transforms.Compose([
        transforms.RandomResizedCrop(data.IMAGE_CROP_SIZE, scale=tuple(data.CROP_SCALE), ratio=tuple(data.CROP_RATIO)),
        transforms.RandomApply([jitter], p=data.COLOR_JITTER_PROB),
        transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


def nih_contenders(data: BenchData, img_size: int, length: int, pack_size: int | None, pack_dir: Path | None) -> dict[str, Dataset]:
    """The NIH datasets to compare: original, ours (the fine-tuning loader), packed (optional)."""
    from refers.finetune.data import build_dataset, resolve_data

    args = argparse.Namespace(dataset=NIH, list_dir=str(data.nih_lists), data_root=None, classes=None, num_classes=None)
    setup = resolve_data(args)
    train_list = data.nih_lists / "train.txt"
    ours, images = build_dataset(setup, train_list, img_size, train=True, skip_bad=False)
    raw = [str(p) for p in sorted((data.data / NIH).glob("images_*/images/*.png"))]
    contenders: dict[str, Dataset] = {
        "original": CycledDataset(raw, OriginalLoad(original_nih_transform(img_size)), length),
        "ours": CycledView(ours, length),
    }
    if pack_size and pack_dir is not None:
        from refers.data.device_transforms import host_train_transform
        from refers.data.packed_cache import PackedDataset, PackedImages, build_packed_cache

        lists = [data.nih_lists / f"{split}.txt" for split in ("train", "val", "test")]
        if not (pack_dir / "pack.json").is_file():
            build_packed_cache(lists, data.data / NIH, pack_dir, size=pack_size, progress=False)
        packed = PackedDataset(PackedImages(pack_dir), images.paths, images.labels, host_train_transform(img_size))
        contenders["packed"] = CycledView(packed, length)
    return contenders


def mimic_contenders(data: BenchData, length: int) -> dict[str, Dataset]:
    """The MIMIC datasets to compare: original (full-size JPEG) and ours (prepared JPEG, grey)."""
    from refers.bench.steps import pretrain_config
    from refers.data.study_table import load_study_table
    from refers.prepare.common import image_root_of

    cfg = pretrain_config("refers_vitb16", torch.device("cpu"))
    root = image_root_of(data.mimic_lists)
    prepared: list[str] = []
    for split in ("train", "val", "test"):
        index = data.mimic_lists / f"{split}_studies.jsonl"
        if index.is_file():
            table = load_study_table(index, root, use_cache=False)
            prepared += [str(p) for study in table for p in study.images]
    raw = [str(p) for p in sorted((data.data / MIMIC / "files").rglob("*.jpg"))]
    return {
        "original": CycledDataset(raw, OriginalLoad(original_mimic_transform(cfg)), length),
        "ours": CycledDataset(sorted(prepared), MimicViewLoad(cfg), length),
    }


# ----------------------------------------------------------------------------------------- timing


def _loader(dataset: Dataset, batch_size: int, workers: int, pin: bool) -> DataLoader:
    extra: dict[str, Any] = {"persistent_workers": True, "prefetch_factor": 4} if workers else {}
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers, pin_memory=pin, **extra)


def compare(contenders: dict[str, Dataset], workers: int, batch_size: int, repeats: int,
            device: torch.device) -> dict[str, Any]:
    """Tensors/s of each contender at one worker count, interleaved, with ratios to the original."""
    from refers.data.device_transforms import DeviceNormalize

    normalize = DeviceNormalize()
    pin = device.type == "cuda"
    loaders = {name: _loader(ds, batch_size, workers, pin) for name, ds in contenders.items()}
    counts = {name: len(ds) for name, ds in contenders.items()}  # type: ignore[arg-type]

    def epoch(name: str) -> Callable[[], None]:
        def run() -> None:
            for batch in loaders[name]:
                ready = normalize(batch.to(device, non_blocking=True))  # model-ready: float [B, 3, S, S]
                if ready.shape[1] != 3:
                    raise RuntimeError(f"{name}: batch of shape {tuple(ready.shape)} is not model-ready")
        return run

    runs = {name: epoch(name) for name in loaders}
    for run in runs.values():  # start the workers, warm the page cache
        run()
    times = interleaved(runs, repeats, device, wall=True)  # the work is in the worker processes
    result: dict[str, Any] = {"workers": workers}
    for name, series in times.items():
        rate = counts[name] / median(series)
        result[name] = {"tensors_per_s": rate, "per_worker": rate / max(1, workers)}
    for name in times:
        if name != "original":
            result[f"speedup_{name}"] = median(paired_ratios(times["original"], times[name]))
    loaders.clear()  # the loaders go, and their persistent workers end
    return result


def loader_benchmark(data: BenchData, workers_list: Sequence[int], device: torch.device, img_size: int = 224,
                     batch_size: int = 8, length: int = 32, repeats: int = 3, pack_size: int | None = 256,
                     pack_dir: Path | None = None) -> dict[str, Any]:
    """PNG (NIH) and JPEG (MIMIC) loader throughput at each worker count.

    Returns:
        ``{"png": {...}, "jpeg": {...}}``, each with the settings, a row per worker count and
        the median speed-up over the worker counts.
    """
    torch.manual_seed(0)
    sets = {"png": nih_contenders(data, img_size, length, pack_size, pack_dir), "jpeg": mimic_contenders(data, length)}
    sizes = {"png": f"{data.png_size}x{data.png_size} PNG", "jpeg": f"{data.jpeg_size}x{data.jpeg_size} JPEG"}
    results: dict[str, Any] = {}
    for kind, contenders in sets.items():
        rows = [compare(contenders, w, batch_size, repeats, device) for w in workers_list]
        summary: dict[str, Any] = {"source": sizes[kind], "batch_size": batch_size, "items_per_epoch": length,
                                   "rows": rows, "speedup": median([r["speedup_ours"] for r in rows])}
        if any("speedup_packed" in r for r in rows):
            summary["speedup_packed"] = median([r["speedup_packed"] for r in rows if "speedup_packed" in r])
        results[kind] = summary
    return results


def default_workers_list() -> list[int]:
    """1, 2, 4, ... worker processes up to the CPU count (at most 16), always including it.

    (Loading in the training process itself, 0 workers, is left out: it competes with the model
    for the same cores, which is not how either path is meant to run.)
    """
    cpus = min(16, os.cpu_count() or 1)
    return sorted({w for w in (1, 2, 4, 8) if w < cpus} | {cpus})

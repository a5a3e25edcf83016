"""Tiny fine-tuning datasets in the original list formats, for tests/test_finetune*.py.

32x32 grey PNGs whose brightness carries the first label; list files as the original publishes them
(CRLF, ``valid.txt``, ``0/1`` or ``0.0/1.0`` labels, NIH's ``images_001/x.png`` paths, optionally with
the download's ``images_001/images/x.png`` layout), a 50% fraction file and the ``SYNTHETIC.txt`` marker.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from refers.data.registry import get_dataset

SIZES = {"train": 24, "val": 10, "test": 12}


def make_dataset(root: Path, name: str, nested: bool = False, seed: int = 0) -> tuple[Path, Path]:
    """Write a tiny dataset in ``name``'s list format; returns (list_dir, data_root).

    Args:
        nested: store images as ``images_001/images/x.png`` while the lists say ``images_001/x.png``.
    """
    spec = get_dataset(name)
    rng = np.random.default_rng(seed)
    lists, data = root / "lists", root / "data"
    lists.mkdir(parents=True)
    (data / "images_001" / "images").mkdir(parents=True)
    (root / "SYNTHETIC.txt").write_text("synthetic test data\n")
    for split, count in SIZES.items():
        lines = []
        for i in range(count):
            positive = i % 2
            if spec.binary:
                labels = [1 - positive, positive]
            else:
                labels = [positive, *(rng.random(13) < 0.4).astype(int)]
                labels[-1] = 0 if split != "train" else labels[-1]  # one class with a single value in val/test
            pixels = rng.normal(70 + 110 * positive, 25, (32, 32)).clip(0, 255).astype(np.uint8)
            rel = f"images_001/{split}_{i:02d}.png"
            Image.fromarray(pixels).save(data / ("images_001/images/" + rel.split("/")[1] if nested else rel))
            text = " ".join(f"{v:.1f}" if name.startswith("VinBig") else str(int(v)) for v in labels)
            lines.append(f"{rel} {text}")
        file = "valid.txt" if split == "val" and spec.binary else f"{split}.txt"
        (lists / file).write_text("\r\n".join(lines) + "\r\n")
    train = (lists / "train.txt").read_text().splitlines()
    (lists / "train_50_seed1.txt").write_text("\n".join(train[i] for i in (0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21)) + "\n")
    return lists, data

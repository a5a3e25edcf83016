"""The one transform module: pre-training views handed over as uint8 and normalised on the device,
like fine-tuning's. Oracles: torchvision's float pipeline (what pre-training did before) and the
normalisation written out in float64."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from refers.config import load_config
from refers.data.device_transforms import IMAGENET_MEAN, IMAGENET_STD, build_view_transform, flip, study_batch_to_device, to_model_input

PACKAGE = Path(__file__).resolve().parents[2] / "refers"


def _cfg(*overrides):
    return load_config(None, ["DATA.IMAGE_CROP_SIZE", "24", "DATA.COLOR_JITTER_PROB", "1.0", *overrides])


def _float_view_transform(cfg, train: bool):
    """Pre-training's view transform as it was: float [1, S, S] in [0, 1], never quantised."""
    data, size = cfg.DATA, cfg.DATA.IMAGE_CROP_SIZE
    steps = [v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True)]
    if not train:
        return v2.Compose([*steps, v2.Resize((size, size), antialias=True)])
    jitter = v2.ColorJitter(brightness=tuple(data.BRIGHTNESS), contrast=tuple(data.CONTRAST))
    return v2.Compose([*steps, v2.RandomResizedCrop(size, scale=tuple(data.CROP_SCALE), ratio=tuple(data.CROP_RATIO), antialias=True),
                       v2.RandomApply([jitter], p=data.COLOR_JITTER_PROB)])


def _image(seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (53, 41), dtype=np.uint8)
    return Image.fromarray(pixels, mode="L")


@pytest.mark.parametrize("train", [False, True])
def test_views_are_the_float_views_rounded_to_the_nearest_grey_level(train):
    cfg = _cfg()
    for seed in range(4):
        image = _image(seed)
        torch.manual_seed(seed)
        view = build_view_transform(cfg, train)(image)
        torch.manual_seed(seed)  # the same random crop and jitter: rounding draws no random numbers
        reference = _float_view_transform(cfg, train)(image)
        assert view.dtype == torch.uint8 and view.shape == (1, 24, 24)
        expected = np.clip(np.round(reference.double().numpy() * 255), 0, 255).astype(np.uint8)
        np.testing.assert_array_equal(view.numpy(), expected)
        # On the device: within half a grey level of the float view normalised as before.
        before = v2.functional.normalize(reference.expand(3, -1, -1), IMAGENET_MEAN, IMAGENET_STD)
        after = to_model_input(view, "cpu")
        assert after.shape == (3, 24, 24)
        assert (after - before).abs().max() <= 0.5 / 255 / min(IMAGENET_STD) + 1e-5


def test_a_pretraining_batch_is_normalised_on_the_device():
    images = torch.randint(0, 256, (2, 3, 1, 8, 8), dtype=torch.uint8)
    batch = {"images": images, "caption_ids": torch.arange(6).view(2, 3), "study_ids": ["1", "2"], "flipped": [True, False]}
    moved = study_batch_to_device(batch, "cpu")
    assert moved["images"].shape == (2, 3, 3, 8, 8) and moved["images"].dtype == torch.float32
    for c in range(3):
        want = (images[:, :, 0].double() / 255 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]
        torch.testing.assert_close(moved["images"][:, :, c].double(), want, atol=1e-5, rtol=0)
    assert torch.equal(moved["caption_ids"], batch["caption_ids"]) and moved["study_ids"] == ["1", "2"]
    floats = torch.randn(2, 3, 3, 8, 8)  # already normalised (a benchmark's random batch): unchanged
    assert torch.equal(study_batch_to_device({"images": floats}, "cpu")["images"], floats)
    assert torch.equal(flip(images), images.flip(-1))


def test_one_copy_of_the_imagenet_statistics_and_of_to_model_input():
    holders = sorted(p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py") if "0.485" in p.read_text(encoding="utf-8"))
    assert holders == ["data/device_transforms.py"]
    defining = sorted(p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py")
                      if "def to_model_input(" in p.read_text(encoding="utf-8"))
    assert defining == ["data/device_transforms.py"]
    assert not (PACKAGE / "data" / "pretrain_transforms.py").exists()

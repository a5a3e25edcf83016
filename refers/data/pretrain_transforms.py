"""Per-view image transforms of pre-training (torchvision transforms v2).

Views stay one grey channel through cropping and jitter (a third of the work of RGB; the result is
the same because the three channels of a radiograph are equal) and become three normalised
channels at the end. The horizontal flip is not here: it is one decision per study, applied by
the dataset so that the report can follow it.
"""

from __future__ import annotations

import torch
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def build_view_transform(cfg, train: bool) -> v2.Compose:
    """Grey PIL image -> float [1, S, S] in [0, 1] (S = ``DATA.IMAGE_CROP_SIZE``).

    Training: RandomResizedCrop (``DATA.CROP_SCALE``, ``DATA.CROP_RATIO``), then colour jitter
    (``DATA.BRIGHTNESS``, ``DATA.CONTRAST``) with probability ``DATA.COLOR_JITTER_PROB``.
    Validation: resize to S x S (aspect not kept, as the original).
    """
    data = cfg.DATA
    size = data.IMAGE_CROP_SIZE
    to_float = [v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True)]
    if not train:
        return v2.Compose([*to_float, v2.Resize((size, size), antialias=True)])
    jitter = v2.ColorJitter(brightness=tuple(data.BRIGHTNESS), contrast=tuple(data.CONTRAST))
    return v2.Compose(
        [
            *to_float,
            v2.RandomResizedCrop(size, scale=tuple(data.CROP_SCALE), ratio=tuple(data.CROP_RATIO), antialias=True),
            v2.RandomApply([jitter], p=data.COLOR_JITTER_PROB),
        ]
    )


def to_model_input(view: torch.Tensor) -> torch.Tensor:
    """A grey view [1, H, W] in [0, 1] as the encoder's input: 3 channels, ImageNet-normalised."""
    return v2.functional.normalize(view.expand(3, -1, -1), IMAGENET_MEAN, IMAGENET_STD)


def flip(view: torch.Tensor) -> torch.Tensor:
    """Mirror a view left-right ([..., H, W])."""
    return v2.functional.horizontal_flip(view)


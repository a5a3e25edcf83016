"""The image transforms of fine-tuning and pre-training, split at the uint8 boundary: geometry on
the host, arithmetic on the device.

The original converted every radiograph to three float channels and normalised it in the data
loader: 12 bytes per pixel crossed the process boundary and the PCIe bus for 1 byte of
information. Here the loader does only what needs the whole image (decode, crop, resize, flip,
and pre-training's colour jitter) on one grey channel and hands over uint8, and the device turns
the batch into the model's input in one fused step::

    host:   grey PIL image -> uint8 [1, S, S]            (host_train_transform / host_eval_transform,
                                                          build_view_transform for pre-training views)
    device: uint8 [..., 1, S, S] -> float [..., 3, S, S] (to_model_input / DeviceNormalize;
                                                          study_batch_to_device for a pre-training batch)

The result equals torchvision's ``ToTensor() + Normalize(mean, std)`` of the RGB image (the three
channels of a grey image are equal), up to float rounding. Pre-training's views are cropped,
resized and jittered in float (as before) and rounded to uint8 once at the end
(:class:`RoundToUint8`): at most half a grey level (0.5/255) from the float view, unbiased.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

# The ImageNet statistics the original normalised with: the one copy.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ORIGINAL_MIN_CROP_AREA = 0.08  # torchvision's RandomResizedCrop default, which the original used


def host_train_transform(img_size: int, min_crop_area: float = ORIGINAL_MIN_CROP_AREA):
    """Training geometry of the original (RandomResizedCrop + horizontal flip) on a grey PIL image.

    Args:
        img_size: output side.
        min_crop_area: smallest crop, as a fraction of the image area (the original: torchvision's
            default; at a few dozen pixels such small crops can cut the finding out of the image).

    Returns:
        A callable: PIL 'L' image -> uint8 tensor [1, img_size, img_size].
    """
    from torchvision import transforms

    return transforms.Compose([
        transforms.RandomResizedCrop((img_size, img_size), scale=(min_crop_area, 1.0)),
        transforms.RandomHorizontalFlip(),
        transforms.PILToTensor(),
    ])


def host_eval_transform(img_size: int):
    """Evaluation geometry of the original (Resize shorter side + CentreCrop) on a grey PIL image.

    Returns:
        A callable: PIL 'L' image -> uint8 tensor [1, img_size, img_size].
    """
    from torchvision import transforms

    return transforms.Compose([
        transforms.Resize(img_size),
        transforms.CenterCrop((img_size, img_size)),
        transforms.PILToTensor(),
    ])


class RoundToUint8(torch.nn.Module):
    """A float image in [0, 1] -> uint8, to the nearest grey level (torchvision's ``ToDtype`` floors,
    a bias of half a level)."""

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return image.mul(255.0).round_().clamp_(0, 255).to(torch.uint8)


def build_view_transform(cfg: Any, train: bool):
    """Pre-training's per-view transform: grey PIL image -> uint8 [1, S, S] (S = ``DATA.IMAGE_CROP_SIZE``).

    Training: RandomResizedCrop (``DATA.CROP_SCALE``, ``DATA.CROP_RATIO``), then colour jitter
    (``DATA.BRIGHTNESS``, ``DATA.CONTRAST``) with probability ``DATA.COLOR_JITTER_PROB``.
    Validation: resize to S x S (aspect not kept, as the original). Both in float on one grey
    channel (a third of RGB's work, the same result: a radiograph's three channels are equal), then
    rounded to uint8; the horizontal flip is not here (:func:`flip`: one decision per study, which
    the report follows), and the normalisation happens on the device (:func:`study_batch_to_device`).
    """
    from torchvision.transforms import v2

    data = cfg.DATA
    size = data.IMAGE_CROP_SIZE
    if not train:
        return view_eval_transform(size)
    to_float = [v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True)]
    jitter = v2.ColorJitter(brightness=tuple(data.BRIGHTNESS), contrast=tuple(data.CONTRAST))
    return v2.Compose([
        *to_float,
        v2.RandomResizedCrop(size, scale=tuple(data.CROP_SCALE), ratio=tuple(data.CROP_RATIO), antialias=True),
        v2.RandomApply([jitter], p=data.COLOR_JITTER_PROB),
        RoundToUint8(),
    ])


def view_eval_transform(size: int):
    """Pre-training's validation transform of one view: grey PIL image -> uint8 [1, size, size]
    (resized, aspect not kept); also the exported dual encoder's."""
    from torchvision.transforms import v2

    return v2.Compose([v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True), v2.Resize((size, size), antialias=True),
                       RoundToUint8()])


def flip(view: torch.Tensor) -> torch.Tensor:
    """Mirror a view left-right ([..., H, W])."""
    return view.flip(-1)


class DeviceNormalize:
    """uint8 images -> normalised float model input, on whatever device the batch is on.

    ``out[c] = (x / 255 - mean[c]) / std[c]`` computed as one multiply-add ``x * a[c] + b[c]``;
    a one-channel input broadcasts to ``len(mean)`` channels in that same operation, so the
    grey-to-RGB expansion costs no extra pass. Float inputs are taken as already normalised and
    passed through unchanged, so callers may apply it unconditionally.

    Args:
        mean, std: per-output-channel statistics (ImageNet's by default).
        dtype: output dtype (float32; autocast casts inside the model).
    """

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 dtype: torch.dtype = torch.float32):
        mean_t = torch.tensor(mean, dtype=torch.float64)
        std_t = torch.tensor(std, dtype=torch.float64)
        self.channels = len(mean)
        self.dtype = dtype
        self._scale = (1.0 / (255.0 * std_t)).to(dtype)
        self._shift = (-mean_t / std_t).to(dtype)
        self._cache: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def _constants(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if device not in self._cache:  # one small host->device copy per device, not per batch
            self._cache[device] = (self._scale.to(device), self._shift.to(device))
        return self._cache[device]

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Normalise a batch.

        Args:
            images: uint8 [..., C, H, W] with C = 1 or ``len(mean)`` (e.g. [B, 1, S, S] or
                [B, V, 1, S, S]); float tensors are returned as they are.

        Returns:
            float [..., len(mean), H, W].
        """
        if images.is_floating_point():
            return images
        if images.dtype != torch.uint8:
            raise TypeError(f"expected uint8 or float images, got {images.dtype}")
        if images.dim() < 3 or images.shape[-3] not in (1, self.channels):
            raise ValueError(f"expected images [..., 1 or {self.channels}, H, W], got {tuple(images.shape)}")
        scale, shift = self._constants(images.device)
        shape = (self.channels, 1, 1)
        return torch.addcmul(shift.view(shape), images.to(self.dtype), scale.view(shape))


def to_model_input(images: torch.Tensor, device: torch.device | str, normalize: DeviceNormalize | None = None,
                   non_blocking: bool = True) -> torch.Tensor:
    """Move a loader batch to ``device`` (as uint8: a quarter of float32's bytes) and normalise it there.

    Args:
        images: uint8 [..., 1|3, H, W] from the host transforms, or float already normalised.
        normalize: the :class:`DeviceNormalize` to use (default: ImageNet statistics).
        non_blocking: asynchronous copy from pinned memory.

    Returns:
        float [..., 3, H, W] on ``device``.
    """
    normalize = normalize or _DEFAULT
    return normalize(images.to(device, non_blocking=non_blocking))


_DEFAULT = DeviceNormalize()


def study_batch_to_device(batch: dict[str, Any], device: torch.device | str) -> dict[str, Any]:
    """A pre-training batch (:func:`refers.data.pretrain_dataset.collate_studies`) on ``device``,
    its uint8 ``images`` [B, V, 1, S, S] normalised there to float [B, V, 3, S, S].

    Other tensors are moved as they are; other values (study ids, reports) stay.
    """
    moved = {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) and k != "images" else v
             for k, v in batch.items()}
    if isinstance(batch.get("images"), torch.Tensor):
        moved["images"] = to_model_input(batch["images"], device)
    return moved

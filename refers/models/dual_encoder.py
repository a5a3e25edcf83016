"""The dual encoder of a REFERS model: radiographs and reports in the space the report contrast trained.

Pre-training keeps only the image encoder for fine-tuning; this keeps the other half too: the
image encoder (its views pooled as in the contrast), the report encoder (BERT, pooled, then the
projection) and the report tokenizer. Both ``encode_*`` methods return float32, L2-normalised
rows on the CPU, so ``images @ reports.T`` are cosine similarities, and dividing them by
:attr:`DualEncoder.temperature` gives the contrast's logits.

A study with fewer images than the model's views repeats them, as pre-training does; a single
image is repeated across all views. Images are read and resized as pre-training's validation reads
them (grey, resized to ``image_size`` x ``image_size``, ImageNet normalisation).

Build one from a pre-training checkpoint (:func:`dual_encoder_from_checkpoint`) or load an exported
folder (:func:`refers.engine.dual_encoder_folder.load_dual_encoder`).
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from refers.models.contrast import image_contrast_vectors, report_contrast_vectors

ImageInput = torch.Tensor | str | os.PathLike | Sequence[str | os.PathLike]
POOLINGS = {"visual_pooling": ("cls", "mean"), "report_pooling": ("pooler", "mean")}


@dataclass(frozen=True)
class DualEncoderSpec:
    """What it takes to rebuild and feed the two encoders (``config.json``'s ``model``).

    Attributes:
        image_encoder: the ViT name (``ViT-B_16``, ``ViT-micro_8`` ...).
        image_size: side of the square input.
        num_views: views per study the image side concatenates.
        visual_pooling: ``cls`` or ``mean`` (each view's CLS token or mean patch token).
        report_pooling: ``pooler`` or ``mean`` (BERT's pooler output or mean token state).
        embedding_dim: the contrast space's size (``num_views`` x the ViT width).
        temperature: the contrast's tau.
        report_max_length: BERT tokens per report (longer reports are cut).
        image_min_side: JPEGs may decode at a reduced scale keeping this shorter side (0: off).
        bert_config: the transformers ``BertConfig`` as a dict.
    """

    image_encoder: str
    image_size: int
    num_views: int
    visual_pooling: str
    report_pooling: str
    embedding_dim: int
    temperature: float
    report_max_length: int
    image_min_side: int = 0
    bert_config: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Refuse values no encoder can be built or fed with (``ValueError`` naming the field)."""
        for name, low in (("image_size", 1), ("num_views", 1), ("embedding_dim", 1), ("report_max_length", 1),
                          ("image_min_side", 0)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if not isinstance(self.temperature, (int, float)) or isinstance(self.temperature, bool) \
                or not math.isfinite(self.temperature) or self.temperature <= 0:
            raise ValueError(f"temperature must be a positive number, got {self.temperature!r}")
        for name, choices in POOLINGS.items():
            if getattr(self, name) not in choices:
                raise ValueError(f"{name} must be one of {', '.join(choices)}, got {getattr(self, name)!r}")
        if not isinstance(self.image_encoder, str) or not self.image_encoder:
            raise ValueError(f"image_encoder must be a model name, got {self.image_encoder!r}")
        if not isinstance(self.bert_config, dict):
            raise ValueError(f"bert_config must be a mapping, got {type(self.bert_config).__name__}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def spec_from_config(cfg: Any, bert_config: dict[str, Any], width: int) -> DualEncoderSpec:
    """The spec of a pre-training configuration (``width``: the ViT's embedding width)."""
    return DualEncoderSpec(
        image_encoder=cfg.MODEL.VISUAL.NAME, image_size=cfg.DATA.IMAGE_CROP_SIZE, num_views=cfg.DATA.NUM_VIEWS,
        visual_pooling=cfg.MODEL.VISUAL.CONTRAST_POOLING, report_pooling=cfg.MODEL.TEXTUAL.CONTRAST_POOLING,
        embedding_dim=cfg.DATA.NUM_VIEWS * width, temperature=float(cfg.LOSS.TAU),
        report_max_length=cfg.DATA.BERT_MAX_LENGTH, image_min_side=int(cfg.DATA.IMAGE_MIN_SIDE or 0),
        bert_config=bert_config,
    )


class DualEncoder(nn.Module):
    """Image encoder + report encoder + tokenizer; see the module docstring.

    Args:
        spec: the shapes and pooling.
        image_encoder: a timm ViT without head.
        bert: a transformers ``BertModel``.
        text_projection: ``Linear(bert hidden, embedding_dim)``.
        tokenizer: the report encoder's transformers tokenizer.

    Attributes:
        autocast: a callable giving the context the forward passes run in (float32 by default; the
            loader sets the precision asked for, :func:`refers.engine.dual_encoder_folder.load_dual_encoder`).
    """

    def __init__(self, spec: DualEncoderSpec, image_encoder: nn.Module, bert: nn.Module, text_projection: nn.Module,
                 tokenizer: Any):
        super().__init__()
        self.spec = spec
        self.image_encoder = image_encoder
        self.bert = bert
        self.text_projection = text_projection
        self.tokenizer = tokenizer
        self.autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
        self._transform = None
        self.eval()

    @property
    def temperature(self) -> float:
        return self.spec.temperature

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # -- images -----------------------------------------------------------------------------------

    def preprocess(self, path: str | os.PathLike) -> torch.Tensor:
        """One image file (PNG, JPEG, DICOM) as the model reads it: uint8 [1, S, S]."""
        from refers.data.device_transforms import view_eval_transform
        from refers.data.images import open_grey

        if self._transform is None:
            self._transform = view_eval_transform(self.spec.image_size)
        return self._transform(open_grey(path, min_side=self.spec.image_min_side or None))

    def _study_tensor(self, images: torch.Tensor) -> torch.Tensor:
        """[N, C, H, W] (one image per row) or [N, V, C, H, W] -> [N, V, C, H, W] with the model's V.

        Raises:
            ValueError: another shape, size or channel count than the model takes (expected and got named).
        """
        given = tuple(images.shape)
        if images.dim() == 4:
            images = images.unsqueeze(1)
        size = self.spec.image_size
        if images.dim() != 5:
            raise ValueError(f"images must be [N, C, {size}, {size}] or [N, V, C, {size}, {size}], got {given}")
        channels, height, width = images.shape[2:]
        if (height, width) != (size, size):
            raise ValueError(f"images must be {size}x{size} (the model's image_size), got {height}x{width} "
                             f"(shape {given}); resize them, or pass the image files")
        if images.is_floating_point() and channels != 3:
            raise ValueError(f"float images must have 3 channels, normalised with ImageNet's statistics, got {channels} "
                             f"(shape {given}); pass grey images as uint8 [N, 1, {size}, {size}]")
        if not images.is_floating_point() and (images.dtype != torch.uint8 or channels not in (1, 3)):
            raise ValueError(f"integer images must be uint8 with 1 or 3 channels, got {images.dtype} with {channels} "
                             f"(shape {given})")
        views = images.shape[1]
        if views != self.spec.num_views:
            index = [i % views for i in range(self.spec.num_views)]  # repeated cyclically, as pre-training does
            images = images[:, index]
        return images

    @torch.no_grad()
    def encode_images(self, images: ImageInput, batch_size: int = 64, progress: bool = False) -> torch.Tensor:
        """Embeddings of images: [N, D] float32, L2-normalised, on the CPU.

        Args:
            images: image files (one path or a list; each repeated across the model's views), or a
                tensor [N, C, S, S] / [N, V, C, S, S] at the model's ``image_size`` S, uint8 (C = 1 or
                3; grey is expanded and normalised as for files) or float already normalised with
                ImageNet's statistics (C = 3).
            batch_size: images per forward pass.
            progress: show a progress bar.

        Raises:
            ValueError: a tensor of another shape, size, channel count or dtype (expected and got named).
        """
        if isinstance(images, (str, os.PathLike)):
            images = [images]
        if isinstance(images, torch.Tensor):
            return self._encode_tensor(self._study_tensor(images), batch_size, progress)
        return self.encode_studies([[path] for path in images], batch_size=batch_size, progress=progress)

    @torch.no_grad()
    def encode_studies(self, studies: Sequence[Sequence[str | os.PathLike]], views: Sequence[Sequence[str]] | None = None,
                       batch_size: int = 64, progress: bool = False) -> torch.Tensor:
        """Embeddings of studies (several images each): [N, D], the views chosen as pre-training's
        validation chooses them (one of each kind first, file order within a kind; ``views`` gives
        each image's view name, e.g. ``PA`` / ``LATERAL``; unknown when omitted)."""
        from refers.data.pretrain_dataset import OTHER, choose_views, view_kind

        def study_views(index: int) -> torch.Tensor:
            files = studies[index]
            kinds = [view_kind(v) for v in views[index]] if views is not None else [OTHER] * len(files)
            chosen = choose_views(kinds, self.spec.num_views)
            loaded = {i: self.preprocess(files[i]) for i in set(chosen)}
            return torch.stack([loaded[i] for i in chosen])

        rows = []
        for start in _progress(range(0, len(studies), batch_size), progress, "images", batch_size, len(studies)):
            batch = torch.stack([study_views(i) for i in range(start, min(start + batch_size, len(studies)))])
            rows.append(self._encode_tensor(batch, batch_size, False))
        return torch.cat(rows) if rows else torch.zeros(0, self.spec.embedding_dim)

    def _encode_tensor(self, images: torch.Tensor, batch_size: int, progress: bool) -> torch.Tensor:
        from refers.data.device_transforms import to_model_input
        from refers.models.vit import vit_tokens

        out = []
        for start in _progress(range(0, images.shape[0], batch_size), progress, "images", batch_size, images.shape[0]):
            batch = to_model_input(images[start:start + batch_size], self.device)
            n, v = batch.shape[:2]
            with self.autocast():
                tokens = vit_tokens(self.image_encoder, batch.flatten(0, 1))
                vectors = image_contrast_vectors(tokens.reshape(n, v, *tokens.shape[1:]), self.spec.visual_pooling)
            out.append(F.normalize(vectors.float(), dim=-1).cpu())
        return torch.cat(out) if out else torch.zeros(0, self.spec.embedding_dim)

    # -- reports ----------------------------------------------------------------------------------

    @torch.no_grad()
    def encode_reports(self, reports: str | Iterable[str], batch_size: int = 256, progress: bool = False) -> torch.Tensor:
        """Embeddings of report texts (or prompts): [N, D] float32, L2-normalised, on the CPU (a
        single string is one report: [1, D])."""
        reports = [reports] if isinstance(reports, str) else list(reports)
        if not all(isinstance(r, str) for r in reports):
            raise TypeError("encode_reports takes a list of strings")
        out = []
        for start in _progress(range(0, len(reports), batch_size), progress, "reports", batch_size, len(reports)):
            tokens = self.tokenizer(reports[start:start + batch_size], max_length=self.spec.report_max_length,
                                    truncation=True, padding=True, return_tensors="pt")
            ids, mask = tokens["input_ids"].to(self.device), tokens["attention_mask"].to(self.device)
            with self.autocast():
                vectors = report_contrast_vectors(self.bert, self.text_projection, ids, mask, self.spec.report_pooling)
            out.append(F.normalize(vectors.float(), dim=-1).cpu())
        return torch.cat(out) if out else torch.zeros(0, self.spec.embedding_dim)


def _progress(steps: range, show: bool, unit: str, per_step: int, total: int):
    """``steps``, under a tqdm bar counting ``unit`` when ``show``."""
    if not show:
        yield from steps
        return
    from tqdm import tqdm

    with tqdm(total=total, unit=unit, desc=f"Encoding {unit}", dynamic_ncols=True) as bar:
        for step in steps:
            yield step
            bar.update(min(per_step, total - step))


# --- building ------------------------------------------------------------------------------------

MODULE_PREFIXES = ("image_encoder.", "bert.", "text_projection.")


def build_dual_encoder(spec: DualEncoderSpec, tokenizer: Any) -> DualEncoder:
    """A dual encoder with freshly initialised weights of ``spec``'s shapes (load a state dict next).

    Raises:
        ValueError: ``spec`` names no buildable encoder, or its sizes disagree (the message names the field).
    """
    from transformers import BertConfig, BertModel

    from refers.models.vit import build_vit

    try:
        image_encoder = build_vit(spec.image_encoder, img_size=spec.image_size, num_classes=0, dropout=0.0)
    except (ValueError, TypeError, AssertionError) as error:
        raise ValueError(f"image_encoder {spec.image_encoder!r} at image_size {spec.image_size} cannot be built ({error})") from None
    width = getattr(image_encoder, "embed_dim", None)
    if width is None or spec.embedding_dim != spec.num_views * width:
        raise ValueError(f"embedding_dim {spec.embedding_dim} is not num_views {spec.num_views} x the width {width} "
                         f"of {spec.image_encoder}")
    try:
        config = BertConfig.from_dict(spec.bert_config)
        bert = BertModel(config, add_pooling_layer=spec.report_pooling == "pooler")
    except (ValueError, TypeError, AttributeError) as error:
        raise ValueError(f"bert_config does not describe a BERT ({error})") from None
    if spec.report_max_length > config.max_position_embeddings:
        raise ValueError(f"report_max_length {spec.report_max_length} exceeds bert_config's max_position_embeddings "
                         f"{config.max_position_embeddings}")
    projection = nn.Linear(config.hidden_size, spec.embedding_dim)
    return DualEncoder(spec, image_encoder, bert, projection, tokenizer)


def load_weights(encoder: DualEncoder, state: dict[str, torch.Tensor], source: str) -> None:
    """Load ``state`` into ``encoder``, every tensor present and of its shape.

    Raises:
        ValueError: a missing, unexpected or misshapen tensor (the message names ``source`` and the first few).
    """
    own = encoder.state_dict()
    problems = [f"{k} missing" for k in own if k not in state] + [f"{k} unexpected" for k in state if k not in own]
    problems += [f"{k} is {tuple(v.shape)}, the model's {tuple(own[k].shape)}" for k, v in state.items()
                 if k in own and v.shape != own[k].shape]
    if problems:
        more = f" and {len(problems) - 3} more" if len(problems) > 3 else ""
        raise ValueError(f"{source}: the weights do not fit the model described ({'; '.join(problems[:3])}{more})")
    encoder.load_state_dict(state)


def dual_encoder_state(model_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors of a pre-training state dict that the dual encoder keeps (the decoder's are dropped)."""
    return {k: v for k, v in model_state.items() if k.startswith(MODULE_PREFIXES) and not k.startswith("image_encoder.head.")}


def dual_encoder_from_checkpoint(path: str | os.PathLike) -> DualEncoder:
    """The dual encoder of a pre-training ``checkpoint_{iteration}.pth`` (its tokenizer read from the
    folder its configuration names: ``DATA.BERT_TOKENIZER_DIR`` or ``MODEL.TEXTUAL.BERT_DIR``).

    Raises:
        ValueError: the file is no pre-training checkpoint (no model state or configuration), or its
            weights do not fit its configuration (the message names the file).
        FileNotFoundError: its tokenizer folder is gone.
    """
    from refers.base.checkpoints import safe_load
    from refers.base.synthetic import is_synthetic
    from refers.config import Config
    from refers.text.bert import bert_config as bert_config_of, load_bert_tokenizer

    raw = safe_load(path)
    if not isinstance(raw, dict) or not isinstance(raw.get("model"), dict) or not isinstance(raw.get("config"), dict):
        raise ValueError(f"{path} is not a pre-training checkpoint (it holds no 'model' and 'config'); "
                         "give a checkpoint_<iteration>.pth of a pre-training run or an exported dual-encoder folder")
    saved = raw["config"]
    saved.setdefault("MODEL", {}).setdefault("VISUAL", {})["PRETRAINED"] = ""  # the checkpoint holds the weights
    cfg = Config.from_dict(saved)
    state = dual_encoder_state(raw["model"])
    if not isinstance(state.get("image_encoder.cls_token"), torch.Tensor):
        raise ValueError(f"{path} holds no image-encoder weights ('image_encoder.cls_token' is missing from its 'model')")
    width = state["image_encoder.cls_token"].shape[-1]
    bert_config = bert_config_of(cfg).to_dict()
    try:
        encoder = build_dual_encoder(spec_from_config(cfg, bert_config, width), load_bert_tokenizer(cfg))
    except ValueError as error:
        raise ValueError(f"{path}: its configuration gives no dual encoder: {error}") from None
    load_weights(encoder, state, str(path))
    encoder.iteration = raw.get("iteration")  # type: ignore[attr-defined]
    encoder.pretrain_config = saved  # type: ignore[attr-defined]
    encoder.provenance = {"synthetic_data": is_synthetic(Path(path).parent)}  # type: ignore[attr-defined]
    return encoder



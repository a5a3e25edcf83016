"""The REFERS pre-training model: a multi-view ViT supervised by its study's free-text report.

One ViT (shared weights) encodes up to three views of a study. Two tasks train it:

* report generation: each view's patch tokens plus its CLS token are gated across views
  (:class:`~refers.models.fusion.ViewFusion`) into one memory [B, V*P, D] that a small transformer
  decoder (:class:`~refers.models.report_decoder.ReportDecoder`) reads to predict the report;
* report contrast: the concatenated CLS tokens [B, V*D] (or, with ``MODEL.VISUAL.CONTRAST_POOLING:
  mean``, each view's mean patch token) are matched against the BERT-encoded report
  (pooler, or with ``MODEL.TEXTUAL.CONTRAST_POOLING: mean`` the mean token state, -> Linear(hidden, V*D))
  with the ConVIRT loss.

Only ``image_encoder`` is kept for fine-tuning; its state-dict keys are plain timm keys, so the full
model's keys are ``image_encoder.<timm key>`` (what :mod:`refers.models.weights` reads).
"""

from __future__ import annotations

import contextlib
import logging

import torch
import torch.nn.functional as F
from torch import nn

from refers.config import Config, config_path, parse_decoder_name
from refers.losses import caption_loss, convirt_loss
from refers.models.contrast import image_contrast_vectors, report_contrast_vectors
from refers.models.fusion import ViewFusion
from refers.models.report_decoder import ReportDecoder
from refers.models.vit import build_vit, vit_tokens

logger = logging.getLogger(__name__)


class RefersModel(nn.Module):
    """Image encoder, view fusion, report decoder and report encoder, from a :class:`Config`."""

    def __init__(self, cfg: Config):
        super().__init__()
        from refers.text.bert import build_bert

        data, textual = cfg.DATA, cfg.MODEL.TEXTUAL
        self.num_views = data.NUM_VIEWS
        self.image_encoder = build_vit(
            cfg.MODEL.VISUAL.NAME, img_size=data.IMAGE_CROP_SIZE, num_classes=0, dropout=cfg.MODEL.VISUAL.DROPOUT
        )
        dim = self.image_encoder.embed_dim
        self.fusion = ViewFusion(dim, self.num_views)
        self.contrast_pooling = cfg.MODEL.VISUAL.CONTRAST_POOLING
        sizes = parse_decoder_name(textual.NAME)
        self.decoder = ReportDecoder(
            vocab_size=data.VOCAB_SIZE,
            visual_dim=dim,
            hidden=sizes["hidden"],
            heads=sizes["heads"],
            ffn=sizes["ffn"],
            layers=sizes["layers"],
            dropout=textual.DROPOUT,
            max_length=data.MAX_CAPTION_LENGTH,
            pad_id=data.PAD_INDEX,
            sos_id=data.SOS_INDEX,
            eos_id=data.EOS_INDEX,
            norm_first=sizes["norm_first"],
        )
        self.bert = build_bert(cfg)
        self.text_projection = nn.Linear(self.bert.config.hidden_size, self.num_views * dim)
        self.report_pooling = textual.CONTRAST_POOLING
        loss = cfg.LOSS
        self.caption_weight, self.contrast_weight = loss.CAPTION_WEIGHT, loss.CONTRAST_WEIGHT
        self.tau, self.lam, self.gather_negatives = loss.TAU, loss.LAMBDA, loss.GATHER_NEGATIVES
        self.pad_id = data.PAD_INDEX
        if self.caption_weight <= 0 and self.contrast_weight <= 0:
            raise ValueError("LOSS.CAPTION_WEIGHT and LOSS.CONTRAST_WEIGHT are both 0: nothing would train the model")
        # A loss of weight 0 is not computed; its own modules are frozen, so that the optimiser leaves
        # them alone and DDP does not wait for gradients they never get (ablations: caption_only, contrast_only).
        if self.caption_weight <= 0:
            self.fusion.requires_grad_(False)
            self.decoder.requires_grad_(False)
        if self.contrast_weight <= 0:
            self.bert.requires_grad_(False)
            self.text_projection.requires_grad_(False)

    # -- image side ---------------------------------------------------------------------------

    def encode_views(self, images: torch.Tensor) -> torch.Tensor:
        """All ViT output tokens of every view.

        Args:
            images: [B, V, 3, H, W] normalised views.

        Returns:
            [B, V, 1 + P, D] tokens (CLS first).
        """
        batch, views = images.shape[:2]
        if views != self.num_views:
            raise ValueError(f"the model takes {self.num_views} views per study, got {views}")
        tokens = vit_tokens(self.image_encoder, images.flatten(0, 1))
        return tokens.reshape(batch, views, *tokens.shape[1:])

    def _contrast_vectors(self, tokens: torch.Tensor) -> torch.Tensor:
        """The image side of the report contrast from [B, V, 1 + P, D] tokens: [B, V*D]."""
        return image_contrast_vectors(tokens, self.contrast_pooling)

    def _fused_memory(self, tokens: torch.Tensor) -> torch.Tensor:
        """The decoder's memory [B, V*P, D] from the views' tokens [B, V, 1 + P, D]."""
        patches = tokens[:, :, 1:] + tokens[:, :, :1]  # P_v = patches + g_v (the view's CLS, broadcast)
        memory, _ = self.fusion(patches)
        return memory

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised image vectors for retrieval (those of the contrast), [B, V*D]."""
        return F.normalize(self._contrast_vectors(self.encode_views(images)).float(), dim=-1)

    # -- report side --------------------------------------------------------------------------

    def _report_vectors(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return report_contrast_vectors(self.bert, self.text_projection, input_ids, attention_mask, self.report_pooling)

    def encode_reports(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """L2-normalised report vectors for retrieval, [B, V*D], from BERT ids [B, Lb]."""
        return F.normalize(self._report_vectors(input_ids, attention_mask).float(), dim=-1)

    # -- training and generation -------------------------------------------------------------

    def forward(self, batch: dict) -> dict:
        """The losses on a batch of :func:`refers.data.pretrain_dataset.collate_studies`; a loss of
        weight 0 is not computed (nor its components).

        Returns:
            ``{"loss": weighted sum (with gradient), "components": {"caption", "contrast",
            "contrast_i2t", "contrast_t2i"}}`` (components detached, for logging).
        """
        tokens = self.encode_views(batch["images"])
        loss: torch.Tensor | int = 0
        components: dict[str, torch.Tensor] = {}
        if self.caption_weight > 0:
            ids = batch["caption_ids"]
            mask = batch["caption_mask"].bool()
            logits = self.decoder(self._fused_memory(tokens), ids[:, :-1], mask[:, :-1])
            targets = ids[:, 1:].masked_fill(~mask[:, 1:], self.pad_id)
            components["caption"] = caption_loss(logits, targets, self.pad_id)
            loss = loss + self.caption_weight * components["caption"]
        if self.contrast_weight > 0:
            text_vec = self._report_vectors(batch["bert_input_ids"], batch["bert_attention_mask"])
            contrast, i2t, t2i = convirt_loss(self._contrast_vectors(tokens), text_vec, self.tau, self.lam, self.gather_negatives)
            components.update(contrast=contrast, contrast_i2t=i2t, contrast_t2i=t2i)
            loss = loss + self.contrast_weight * contrast
        return {"loss": loss, "components": {k: v.detach() for k, v in components.items()}}

    @torch.no_grad()
    def generate(self, images: torch.Tensor, max_length: int | None = None, beam_size: int = 1) -> list[list[int]]:
        """Reports for studies [B, V, 3, H, W] from the fused multi-view memory (as in training).

        Returns:
            B lists of decoder token ids without [SOS]/[EOS] (``ReportTokenizer.decode`` them).
        """
        memory = self._fused_memory(self.encode_views(images))
        return self.decoder.generate(memory, max_length=max_length, beam_size=beam_size)


def build_refers_model(cfg: Config, device: torch.device | str | None = None) -> RefersModel:
    """Build the model (on ``device``; ``"meta"`` allocates nothing) and load initial ViT weights.

    ``MODEL.VISUAL.PRETRAINED`` (a local ``.npz`` / ``.pth`` / ``.safetensors``) initialises the
    image encoder; it is skipped on the meta device.

    Raises:
        FileNotFoundError: the configured weights or BERT folder do not exist.
    """
    with torch.device(device) if device is not None else contextlib.nullcontext():
        model = RefersModel(cfg)
    weights = config_path(cfg.MODEL.VISUAL.PRETRAINED)
    if weights is not None and str(device) != "meta":
        from refers.models.weights import load_encoder_weights

        if not weights.is_file():
            raise FileNotFoundError(
                f"MODEL.VISUAL.PRETRAINED {weights} does not exist (download Google's ViT-B_16.npz there, "
                "or pass --config-override MODEL.VISUAL.PRETRAINED '' to start from random weights)"
            )
        report = load_encoder_weights(model.image_encoder, weights)
        logger.info("image encoder initialised from %s: %s", weights, report.summary())
    return model

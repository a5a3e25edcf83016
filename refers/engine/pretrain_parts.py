"""Build what the pre-training loop trains from a configuration: the REFERS model and its studies."""

from __future__ import annotations

from typing import Any

import torch

from refers.engine.pretrain_loop import TrainParts


def build_refers_parts(cfg: Any, device: torch.device) -> TrainParts:
    """The REFERS model, the train/val study datasets and their tokenizers.

    The validation set is optional: without ``DATA.VAL_LIST`` on disk, checkpoints are written
    without validation.
    """
    from refers.config import config_path
    from refers.data.pretrain_dataset import StudyDataset, collate_studies, resolve_image_root
    from refers.base.synthetic import is_synthetic
    from refers.models.refers_model import build_refers_model
    from refers.text.bert import load_bert_tokenizer
    from refers.text.report_tokenizer import ReportTokenizer

    tokenizer = ReportTokenizer(config_path(cfg.DATA.TOKENIZER_MODEL))
    tokenizer.check_config(cfg)
    bert_tokenizer = load_bert_tokenizer(cfg)
    train = StudyDataset(cfg, "train", tokenizer, bert_tokenizer)
    val_list = config_path(cfg.DATA.VAL_LIST)
    val = StudyDataset(cfg, "val", tokenizer, bert_tokenizer) if val_list is not None and val_list.is_file() else None
    model = build_refers_model(cfg, device)
    train_list = config_path(cfg.DATA.TRAIN_LIST)
    return TrainParts(
        model=model,
        train_dataset=train,
        val_dataset=val,
        collate_fn=collate_studies,
        decode=tokenizer.decode,
        synthetic=is_synthetic(resolve_image_root(cfg, train_list), train_list),
    )

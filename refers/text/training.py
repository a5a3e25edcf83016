"""Training the report tokenizers from a study list (``refers tokenizer train``, or pre-training
when the configured tokenizer files do not exist yet)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from refers.config import Config, config_path

BPE_FILE = "reports_bpe.model"
WORDPIECE_DIR = "wordpiece"


def read_report_texts(list_path: str | os.PathLike) -> list[str]:
    """The report texts of a prepared study index or an original caption list (images not needed).

    Raises:
        FileNotFoundError: no such file.
        ValueError: the list has no report text (e.g. a folder list such as ``test.txt``).
    """
    from refers.data.mimic_lists import read_study_index

    list_path = Path(list_path)
    studies = read_study_index(list_path, list_path.parent, require_images=False)
    texts = [s.text for s in studies if s.text.strip()]
    if not texts:
        raise ValueError(f"{list_path} holds no report text (give a study index or a caption list)")
    return texts


def stamp_if_synthetic(list_path: str | os.PathLike, *folders: Path) -> bool:
    """Mark tokenizer folders made from synthetic reports with ``SYNTHETIC.txt``; True if marked."""
    from refers.base.synthetic import is_synthetic, mark_synthetic

    if not is_synthetic(list_path):
        return False
    for folder in folders:
        mark_synthetic(folder, f"Trained on the SYNTHETIC reports of {list_path}.\n")
    return True


def ensure_tokenizers(cfg: Config, log: Callable[[str], None] = print) -> list[Path]:
    """Train the tokenizers the configuration needs but that do not exist yet, from DATA.TRAIN_LIST.

    The SentencePiece model (``DATA.TOKENIZER_MODEL``, ``DATA.VOCAB_SIZE``) always; the WordPiece
    folder (``DATA.BERT_TOKENIZER_DIR``, ``MODEL.TEXTUAL.BERT_VOCAB_SIZE``) when BERT is built from
    config. Run it on one process only (then wait for it on the others).

    Returns:
        the paths written (empty when everything existed).
    """
    from refers.text.bert import bert_dir, train_wordpiece
    from refers.text.report_tokenizer import train_report_tokenizer

    model_path = config_path(cfg.DATA.TOKENIZER_MODEL)
    wordpiece_dir = None if bert_dir(cfg) is not None else config_path(cfg.DATA.BERT_TOKENIZER_DIR)
    todo_bpe = model_path is not None and not model_path.is_file()
    todo_wordpiece = wordpiece_dir is not None and not (wordpiece_dir / "tokenizer.json").is_file()
    if not (todo_bpe or todo_wordpiece):
        return []
    list_path = config_path(cfg.DATA.TRAIN_LIST)
    texts = read_report_texts(list_path)
    written = []
    if todo_bpe:
        log(f"training the report tokenizer (SentencePiece BPE, vocabulary {cfg.DATA.VOCAB_SIZE}) on {len(texts)} reports -> {model_path}")
        written.append(train_report_tokenizer(texts, model_path, cfg.DATA.VOCAB_SIZE))
    if todo_wordpiece:
        size = cfg.MODEL.TEXTUAL.BERT_VOCAB_SIZE
        log(f"training the BERT tokenizer (WordPiece, vocabulary {size}) on {len(texts)} reports -> {wordpiece_dir}")
        written.append(train_wordpiece(texts, wordpiece_dir, size, max_length=max(512, cfg.DATA.BERT_MAX_LENGTH)))
    stamp_if_synthetic(list_path, *{p if p.is_dir() else p.parent for p in written})
    return written

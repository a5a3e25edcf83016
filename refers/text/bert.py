"""The BERT report encoder and its WordPiece tokenizer.

Either a transformers BERT from a local folder (``MODEL.TEXTUAL.BERT_DIR``, e.g. a downloaded
Bio_ClinicalBERT holding its tokenizer too; nothing is downloaded), or a BERT built from the
configured sizes with the WordPiece tokenizer that ``refers tokenizer train`` learns from the
reports (``DATA.BERT_TOKENIZER_DIR``), for small data and tests.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from refers.config import config_path

WORDPIECE_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


class BertNotFoundError(FileNotFoundError):
    """A configured BERT folder that does not exist or holds no model."""


def bert_dir(cfg) -> Path | None:
    """The configured local BERT folder, or None for a BERT built from config.

    Raises:
        BertNotFoundError: ``MODEL.TEXTUAL.BERT_DIR`` is set but is not a model folder.
    """
    path = config_path(cfg.MODEL.TEXTUAL.BERT_DIR)
    if path is None:
        return None
    if not (path / "config.json").is_file():
        raise BertNotFoundError(
            f"MODEL.TEXTUAL.BERT_DIR {path} is not a BERT folder (no config.json): download a BERT "
            "(e.g. emilyalsentzer/Bio_ClinicalBERT) into it, or pass "
            "--config-override MODEL.TEXTUAL.BERT_DIR '' to build one from config with the WordPiece "
            "tokenizer of 'refers tokenizer train'"
        )
    return path


def bert_config(cfg):
    """The transformers ``BertConfig`` of the report encoder: ``BERT_DIR``'s, or from the configured sizes."""
    from transformers import BertConfig

    path = bert_dir(cfg)
    if path is not None:
        return BertConfig.from_pretrained(str(path), local_files_only=True)
    text = cfg.MODEL.TEXTUAL
    return BertConfig(
        vocab_size=text.BERT_VOCAB_SIZE,
        hidden_size=text.BERT_HIDDEN,
        num_hidden_layers=text.BERT_LAYERS,
        num_attention_heads=text.BERT_HEADS,
        intermediate_size=text.BERT_INTERMEDIATE,
        hidden_dropout_prob=text.BERT_DROPOUT,
        attention_probs_dropout_prob=text.BERT_DROPOUT,
        max_position_embeddings=max(512, cfg.DATA.BERT_MAX_LENGTH),
    )


def build_bert(cfg):
    """A transformers ``BertModel``, from ``BERT_DIR`` or from the configured sizes.

    It has its pooler unless the report contrast reads the mean token state
    (``MODEL.TEXTUAL.CONTRAST_POOLING: mean``): an unused pooler would get no gradient, which DDP refuses.
    """
    from transformers import BertModel

    pooler = cfg.MODEL.TEXTUAL.CONTRAST_POOLING == "pooler"
    path = bert_dir(cfg)
    if path is not None:
        return BertModel.from_pretrained(str(path), local_files_only=True, add_pooling_layer=pooler)
    return BertModel(bert_config(cfg), add_pooling_layer=pooler)


def load_bert_tokenizer(cfg):
    """The tokenizer of the report encoder: ``BERT_DIR``'s, or the trained WordPiece folder.

    Raises:
        BertNotFoundError / FileNotFoundError: the folder does not exist.
        ValueError: a WordPiece vocabulary larger than ``MODEL.TEXTUAL.BERT_VOCAB_SIZE``.
    """
    from transformers import AutoTokenizer

    path = bert_dir(cfg)
    built = path is None
    if built:
        path = config_path(cfg.DATA.BERT_TOKENIZER_DIR)
        if path is None or not (path / "tokenizer.json").is_file():
            raise FileNotFoundError(
                f"WordPiece tokenizer not found: {path} (train it with 'refers tokenizer train', or set "
                "MODEL.TEXTUAL.BERT_DIR to a local BERT folder)"
            )
    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    if built and len(tokenizer) > cfg.MODEL.TEXTUAL.BERT_VOCAB_SIZE:
        raise ValueError(
            f"the WordPiece tokenizer in {path} has {len(tokenizer)} tokens, more than "
            f"MODEL.TEXTUAL.BERT_VOCAB_SIZE {cfg.MODEL.TEXTUAL.BERT_VOCAB_SIZE}"
        )
    return tokenizer


def train_wordpiece(texts: Iterable[str], out_dir: str | os.PathLike, vocab_size: int = 30522, max_length: int = 512) -> Path:
    """Train a lower-casing WordPiece tokenizer on reports; save a transformers-loadable folder.

    The same reports give the same files in every process. tokenizers' trainer numbers the
    continuing pieces (``##x``) in hash-map order, and ties between merges are broken by those
    numbers, so two trainings on the same text gave different vocabularies (huggingface/tokenizers
    #1794). Here the continuing pieces are handed to the trainer up front, in sorted order, as
    extra special tokens (which fixes their ids), and the tokenizer is rebuilt from the trained
    vocabulary with only the five real special tokens.

    Args:
        texts: raw reports (lower-cased and accent-stripped by the tokenizer's BERT normaliser).
        out_dir: folder to write (``tokenizer.json``, ``tokenizer_config.json``, ...).
        vocab_size: vocabulary size including the 5 special tokens.
        max_length: the tokenizer's ``model_max_length``.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertTokenizerFast

    texts = list(texts)
    out_dir = Path(out_dir)
    normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=True)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    continuing = sorted({char for text in texts for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text))
                         for char in word[1:]})
    fixed = [*WORDPIECE_SPECIALS, *(f"##{char}" for char in continuing)]

    def blank(model: "models.WordPiece") -> Tokenizer:
        tok = Tokenizer(model)
        tok.normalizer, tok.pre_tokenizer = normalizer, pre_tokenizer
        return tok

    trained = blank(models.WordPiece(unk_token="[UNK]"))
    trained.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=fixed, show_progress=False))
    tok = blank(models.WordPiece(vocab=trained.get_vocab(with_added_tokens=False), unk_token="[UNK]"))
    tok.add_special_tokens(list(WORDPIECE_SPECIALS))
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)]
    )
    tok.decoder = decoders.WordPiece()
    wrapped = BertTokenizerFast(tokenizer_object=tok, do_lower_case=True, model_max_length=max_length)
    wrapped.save_pretrained(str(out_dir))
    return out_dir

"""The SentencePiece BPE tokenizer of the report decoder.

Ids are fixed by :func:`train_report_tokenizer`: 0 ``<unk>``, 1 ``[SOS]``, 2 ``[EOS]``, 3 ``[MASK]``
(the original's) and 4 ``[PAD]``, a real padding id (the original padded with ``<unk>``). Text
is normalised by :func:`refers.text.normalize.normalize_report` before SentencePiece sees it, so
SentencePiece's own normalisation is off.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Iterable, Sequence

from refers.base.atomic import atomic_write_bytes, atomic_write_text
from refers.text.normalize import normalize_report

SPECIAL_PIECES = ("<unk>", "[SOS]", "[EOS]", "[MASK]", "[PAD]")


def train_report_tokenizer(texts: Iterable[str], model_path: str | os.PathLike, vocab_size: int = 10000) -> Path:
    """Train a BPE model on reports and write ``model_path`` (``.model``) and its ``.vocab``.

    Args:
        texts: raw reports (normalised here).
        model_path: output file, ending in ``.model``; written atomically.
        vocab_size: wanted vocabulary size; a small corpus may yield fewer pieces (never more).

    Returns:
        The written model path.
    """
    import sentencepiece as spm

    model_path = Path(model_path)
    if model_path.suffix != ".model":
        raise ValueError(f"the SentencePiece model file must end in .model: {model_path}")
    model_path.parent.mkdir(parents=True, exist_ok=True)
    normalised = [t for t in (normalize_report(x) for x in texts) if t]
    if not normalised:
        raise ValueError("no report text to train the tokenizer on")
    model = io.BytesIO()  # in memory: a model file names no temporary folder, so the same text gives the same bytes
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(normalised),
        model_writer=model,
        vocab_size=vocab_size,
        hard_vocab_limit=False,  # small corpora: fewer pieces instead of an error
        model_type="bpe",
        character_coverage=1.0,
        unk_id=0,
        bos_id=-1,
        eos_id=-1,
        pad_id=-1,
        control_symbols=",".join(SPECIAL_PIECES[1:]),
        normalization_rule_name="identity",
        max_sentence_length=1 << 16,
        input_sentence_size=2_000_000,
        shuffle_input_sentence=True,
        num_threads=max(1, min(os.cpu_count() or 1, 16)),
        minloglevel=2,
    )
    processor = spm.SentencePieceProcessor(model_proto=model.getvalue())
    pieces = "".join(f"{processor.id_to_piece(i)}\t{processor.get_score(i):g}\n" for i in range(processor.get_piece_size()))
    atomic_write_text(model_path.with_suffix(".vocab"), pieces)  # for reading by eye, as SentencePiece writes it
    atomic_write_bytes(model_path, model.getvalue())
    return model_path


class ReportTokenizer:
    """Encode reports to decoder ids ``[SOS] ... [EOS]`` and decode ids back to text.

    Attributes:
        unk_id, sos_id, eos_id, mask_id, pad_id: the special ids.
    """

    def __init__(self, model_path: str | os.PathLike):
        import sentencepiece as spm

        model_path = Path(model_path)
        if not model_path.is_file():
            raise FileNotFoundError(
                f"report tokenizer not found: {model_path} (train it with 'refers tokenizer train')"
            )
        self.model_path = model_path
        self.sp = spm.SentencePieceProcessor(model_file=str(model_path))
        ids = [self.sp.piece_to_id(p) for p in SPECIAL_PIECES]
        if ids != list(range(len(SPECIAL_PIECES))) or self.sp.id_to_piece(0) != "<unk>":
            raise ValueError(
                f"{model_path} is not a report tokenizer of this project (special ids {ids}); "
                "retrain it with 'refers tokenizer train'"
            )
        self.unk_id, self.sos_id, self.eos_id, self.mask_id, self.pad_id = ids

    def __len__(self) -> int:
        return self.sp.get_piece_size()

    # Picklable for DataLoader workers started by spawn: the model travels as bytes.
    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["sp"] = self.sp.serialized_model_proto()
        return state

    def __setstate__(self, state: dict) -> None:
        import sentencepiece as spm

        state = dict(state)
        state["sp"] = spm.SentencePieceProcessor(model_proto=state["sp"])
        self.__dict__.update(state)

    def check_config(self, cfg) -> None:
        """Fail early when the configuration's ids or vocabulary size do not fit this tokenizer."""
        data = cfg.DATA
        want = [data.UNK_INDEX, data.SOS_INDEX, data.EOS_INDEX, data.MASK_INDEX, data.PAD_INDEX]
        have = [self.unk_id, self.sos_id, self.eos_id, self.mask_id, self.pad_id]
        if want != have:
            raise ValueError(f"DATA.*_INDEX {want} differ from the ids of {self.model_path} {have}")
        if len(self) > data.VOCAB_SIZE:
            raise ValueError(f"{self.model_path} has {len(self)} pieces, more than DATA.VOCAB_SIZE {data.VOCAB_SIZE}")

    def encode(self, text: str, max_length: int) -> list[int]:
        """``[SOS] pieces [EOS]``, at most ``max_length`` ids; truncation keeps ``[EOS]``."""
        if max_length < 2:
            raise ValueError("max_length must leave room for [SOS] and [EOS]")
        pieces = self.sp.encode(normalize_report(text))
        return [self.sos_id, *pieces[: max_length - 2], self.eos_id]

    def encode_padded(self, text: str, max_length: int) -> tuple[list[int], list[bool]]:
        """:meth:`encode` padded with ``[PAD]`` to ``max_length``, and the mask of real tokens."""
        ids = self.encode(text, max_length)
        pad = max_length - len(ids)
        return ids + [self.pad_id] * pad, [True] * len(ids) + [False] * pad

    def decode(self, ids: Sequence[int]) -> str:
        """Text of the ids up to the first ``[EOS]``, special symbols dropped."""
        ids = [int(i) for i in ids]
        if self.eos_id in ids:
            ids = ids[: ids.index(self.eos_id)]
        return self.sp.decode([i for i in ids if i not in (self.sos_id, self.pad_id, self.mask_id)])

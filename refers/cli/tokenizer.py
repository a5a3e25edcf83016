"""``refers tokenizer train``: the report tokenizers, from a prepared study index or caption list.

Writes ``OUT/reports_bpe.model`` (+ ``.vocab``; SentencePiece BPE for the report decoder, ids
0 <unk>, 1 [SOS], 2 [EOS], 3 [MASK], 4 [PAD]) and ``OUT/wordpiece/`` (a transformers tokenizer
folder for a BERT built from config). Point ``DATA.TOKENIZER_MODEL`` and
``DATA.BERT_TOKENIZER_DIR`` at them.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from refers.base.errors import UserError as UserError
from refers.cli.common import command

PROG = "refers tokenizer"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="action", required=True)
    train = sub.add_parser("train", help="train both tokenizers on the reports of a study list")
    train.add_argument("--reports", required=True, help="prepared study index (*_studies.jsonl) or {split}_img_caption_patients.txt")
    train.add_argument("--out", required=True, help="output folder")
    train.add_argument("--vocab-size", type=int, default=10000, help="SentencePiece vocabulary (default 10000, the recipe's)")
    train.add_argument("--wordpiece-vocab-size", type=int, default=30522,
                       help="WordPiece vocabulary for a BERT built from config (default 30522); 0 skips it")
    return parser


@command(PROG)
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.vocab_size < 16 or args.wordpiece_vocab_size < 0 or 0 < args.wordpiece_vocab_size < 16:
        raise UserError("vocabulary sizes must be at least 16 (or --wordpiece-vocab-size 0)", exit_code=2)
    from refers.text.bert import train_wordpiece
    from refers.text.report_tokenizer import ReportTokenizer, train_report_tokenizer
    from refers.text.training import BPE_FILE, WORDPIECE_DIR, read_report_texts, stamp_if_synthetic

    try:
        texts = read_report_texts(args.reports)
    except ValueError as error:
        raise UserError(str(error)) from None
    out = Path(args.out)
    model_path = train_report_tokenizer(texts, out / BPE_FILE, args.vocab_size)
    size = len(ReportTokenizer(model_path))
    note = f" (fewer than the {args.vocab_size} asked: small corpus)" if size < args.vocab_size else ""
    print(f"wrote {model_path}: {size} pieces{note}, from {len(texts)} reports")
    if args.wordpiece_vocab_size:
        folder = train_wordpiece(texts, out / WORDPIECE_DIR, args.wordpiece_vocab_size)
        print(f"wrote {folder}: WordPiece tokenizer for a BERT built from config")
        stamp_if_synthetic(args.reports, folder)
    if stamp_if_synthetic(args.reports, out):
        print(f"SYNTHETIC reports: {out} is marked with SYNTHETIC.txt")
    return 0

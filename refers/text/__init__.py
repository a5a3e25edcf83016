"""Report text: normalisation, the flip-aware left/right swap, and the two tokenizers.

* :mod:`refers.text.normalize`: lower-case / NFKD / accent stripping, and left/right swapping.
* :mod:`refers.text.report_tokenizer`: the SentencePiece BPE tokenizer of the report decoder.
* :mod:`refers.text.bert`: the BERT report encoder and its WordPiece tokenizer.
* :mod:`refers.text.training`: training both tokenizers from the prepared reports.
"""

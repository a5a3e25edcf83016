"""Report text: normalisation, the left/right swap, the SentencePiece and WordPiece tokenizers, BERT."""

from __future__ import annotations

import os

import pickle

import pytest

from refers.cli.tokenizer import main as tokenizer_main
from refers.config import load_config
from refers.text.normalize import normalize_report, swap_left_right
from refers.text.report_tokenizer import ReportTokenizer, train_report_tokenizer

REPORTS = [
    "Left pleural effusion. No pneumothorax.",
    "Right lower lobe consolidation; the heart size is normal.",
    "No acute cardiopulmonary process. Lungs are clear.",
    "Small left apical pneumothorax. Mild cardiomegaly.",
    "Bibasilar atelectasis, right greater than left.",
    "Perihilar edema. Nodule in the right upper lobe.",
] * 20


@pytest.fixture(scope="module")
def bpe_model(tmp_path_factory):
    return train_report_tokenizer(REPORTS, tmp_path_factory.mktemp("bpe") / "reports_bpe.model", vocab_size=120)


@pytest.fixture(scope="module")
def tokenizer(bpe_model):
    return ReportTokenizer(bpe_model)


def test_normalize_lowercases_strips_accents_and_spaces():
    assert normalize_report("  Héart SIZE\tis\nNORMAL, naïve  ") == "heart size is normal, naive"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Left", "Right"),
        ("RIGHT effusion", "LEFT effusion"),
        ("left and right", "right and left"),  # no double swap
        ("left-sided effusion", "right-sided effusion"),
        ("Right.", "Left."),
        ("leftward shift, cleft, bright, rightmost", "leftward shift, cleft, bright, rightmost"),
        ("no side mentioned", "no side mentioned"),
    ],
)
def test_swap_left_right_whole_words_keeping_case(text, expected):
    assert swap_left_right(text) == expected
    assert swap_left_right(swap_left_right(text)) == text


def test_special_ids_and_round_trip(tokenizer):
    assert (tokenizer.unk_id, tokenizer.sos_id, tokenizer.eos_id, tokenizer.mask_id, tokenizer.pad_id) == (0, 1, 2, 3, 4)
    assert 5 < len(tokenizer) <= 120
    text = "Small LEFT pleural effusion; héart size is normal."
    ids = tokenizer.encode(text, max_length=100)
    assert ids[0] == tokenizer.sos_id and ids[-1] == tokenizer.eos_id
    assert tokenizer.pad_id not in ids and tokenizer.sos_id not in ids[1:-1]
    assert tokenizer.decode(ids) == normalize_report(text)
    # Decoding stops at the first [EOS] and drops padding.
    assert tokenizer.decode(ids + [tokenizer.pad_id] * 3 + [7]) == normalize_report(text)


def test_padding_and_truncation_keep_eos(tokenizer):
    long = " ".join(REPORTS[:6])
    full = tokenizer.encode(long, max_length=1000)
    assert len(full) > 12
    cut = tokenizer.encode(long, max_length=12)
    assert len(cut) == 12 and cut[-1] == tokenizer.eos_id and cut[:11] == full[:11]
    ids, mask = tokenizer.encode_padded("No pneumothorax.", max_length=20)
    real = tokenizer.encode("No pneumothorax.", max_length=20)
    assert len(ids) == len(mask) == 20
    assert ids[: len(real)] == real and set(ids[len(real):]) == {tokenizer.pad_id}
    assert mask == [True] * len(real) + [False] * (20 - len(real))


def test_tokenizer_pickles_and_checks_config(tokenizer):
    clone = pickle.loads(pickle.dumps(tokenizer))
    assert clone.encode("left effusion", 30) == tokenizer.encode("left effusion", 30)
    tokenizer.check_config(load_config(None))
    with pytest.raises(ValueError, match="PAD_INDEX|differ"):
        tokenizer.check_config(load_config(None, ["DATA.PAD_INDEX", "7"]))
    with pytest.raises(ValueError, match="more than DATA.VOCAB_SIZE"):
        tokenizer.check_config(load_config(None, ["DATA.VOCAB_SIZE", "10"]))


def test_missing_or_foreign_tokenizer_files_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="refers tokenizer train"):
        ReportTokenizer(tmp_path / "nope.model")
    import sentencepiece as spm

    spm.SentencePieceTrainer.train(sentence_iterator=iter(REPORTS), model_prefix=str(tmp_path / "plain"),
                                   vocab_size=60, minloglevel=2)
    with pytest.raises(ValueError, match="not a report tokenizer"):
        ReportTokenizer(tmp_path / "plain.model")


def test_tokenizer_command_writes_both_tokenizers(tmp_path, capsys):
    captions = tmp_path / "train_img_caption_patients.txt"
    captions.write_text("".join(f"files/p10/p100/s{i}/\t{text}\n" for i, text in enumerate(REPORTS)))
    out = tmp_path / "tok"
    argv = ["train", "--reports", str(captions), "--out", str(out), "--vocab-size", "100", "--wordpiece-vocab-size", "90"]
    assert tokenizer_main(argv) == 0
    assert "pieces" in capsys.readouterr().out
    assert (out / "reports_bpe.model").is_file() and (out / "reports_bpe.vocab").is_file()
    from transformers import AutoTokenizer

    wordpiece = AutoTokenizer.from_pretrained(str(out / "wordpiece"), local_files_only=True)
    assert len(wordpiece) <= 90
    encoded = wordpiece("Left PLEURAL effusion", max_length=4, truncation=True, padding="max_length")
    assert encoded["input_ids"][0] == wordpiece.cls_token_id and encoded["input_ids"][-1] == wordpiece.sep_token_id
    lower = wordpiece("left pleural effusion")["input_ids"]
    assert wordpiece("LEFT Pleural effusion")["input_ids"] == lower and wordpiece.unk_token_id not in lower
    assert not (out / "SYNTHETIC.txt").exists()


def test_tokenizer_training_gives_the_same_files_in_every_process(tmp_path):
    """Two processes (two hash seeds) train both tokenizers on the same reports: byte-identical files.
    (tokenizers' WordPiece trainer alone breaks ties in hash-map order, huggingface/tokenizers#1794,
    and SentencePiece's model file named its temporary folder.) The WordPiece vocabulary keeps only
    the five real special tokens."""
    import subprocess
    import sys

    captions = tmp_path / "train_img_caption_patients.txt"
    words = ["opacity", "effusion", "consolidation", "atelectasis", "pneumothorax", "cardiomegaly", "nodule", "edema"]
    lines = [f"files/p10/p100/s{i}/\t{words[i % 8]} in the {['left', 'right'][i % 2]} {words[(i * 3) % 8]} {REPORTS[i % len(REPORTS)]}\n"
             for i in range(60)]
    captions.write_text("".join(lines))
    outs = []
    for run in ("a", "b"):
        outs.append(tmp_path / run)
        subprocess.run([sys.executable, "-m", "refers", "tokenizer", "train", "--reports", str(captions), "--out",
                        str(outs[-1]), "--vocab-size", "120", "--wordpiece-vocab-size", "150"], check=True,
                       capture_output=True, env={**os.environ, "PYTHONHASHSEED": "random"})
    files = sorted(p.relative_to(outs[0]) for p in outs[0].rglob("*") if p.is_file())
    assert {"reports_bpe.model", "reports_bpe.vocab", "wordpiece/tokenizer.json"} <= {str(f) for f in files}
    for name in files:
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes(), name
    from transformers import AutoTokenizer

    wordpiece = AutoTokenizer.from_pretrained(str(outs[0] / "wordpiece"), local_files_only=True)
    assert sorted(wordpiece.all_special_tokens) == sorted(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    ids = wordpiece("right consolidation")["input_ids"]
    assert wordpiece.decode(ids, skip_special_tokens=True) == "right consolidation"


def test_tokenizer_command_errors(tmp_path, capsys):
    assert tokenizer_main(["train", "--reports", str(tmp_path / "none.txt"), "--out", str(tmp_path)]) == 1
    assert "not found" in capsys.readouterr().err
    folders = tmp_path / "test.txt"
    folders.write_text("files/p10/p100/s1\n")
    assert tokenizer_main(["train", "--reports", str(folders), "--out", str(tmp_path / "o")]) == 1
    assert "no report text" in capsys.readouterr().err
    assert tokenizer_main(["train", "--reports", str(folders), "--out", str(tmp_path), "--vocab-size", "3"]) == 2


def test_synthetic_reports_stamp_the_tokenizer(tmp_path):
    (tmp_path / "SYNTHETIC.txt").write_text("synthetic\n")
    captions = tmp_path / "train_img_caption_patients.txt"
    captions.write_text("".join(f"files/p10/p100/s{i}/\t{text}\n" for i, text in enumerate(REPORTS)))
    argv = ["train", "--reports", str(captions), "--out", str(tmp_path / "tok"), "--vocab-size", "80", "--wordpiece-vocab-size", "0"]
    assert tokenizer_main(argv) == 0
    assert (tmp_path / "tok" / "SYNTHETIC.txt").is_file() and not (tmp_path / "tok" / "wordpiece").exists()


def _tiny_bert_cfg(tmp_path, *extra):
    return load_config(None, [
        "DATA.TRAIN_LIST", str(tmp_path / "train_img_caption_patients.txt"),
        "DATA.TOKENIZER_MODEL", str(tmp_path / "tok" / "reports_bpe.model"),
        "DATA.BERT_TOKENIZER_DIR", str(tmp_path / "tok" / "wordpiece"),
        "DATA.VOCAB_SIZE", "100", "MODEL.TEXTUAL.BERT_VOCAB_SIZE", "90", "MODEL.TEXTUAL.BERT_LAYERS", "1",
        "MODEL.TEXTUAL.BERT_HIDDEN", "32", "MODEL.TEXTUAL.BERT_HEADS", "2", "MODEL.TEXTUAL.BERT_INTERMEDIATE", "64",
        *extra,
    ])


def test_ensure_tokenizers_trains_only_what_is_missing(tmp_path):
    from refers.text.bert import load_bert_tokenizer
    from refers.text.training import ensure_tokenizers

    (tmp_path / "train_img_caption_patients.txt").write_text("".join(f"files/p10/p100/s{i}/\t{t}\n" for i, t in enumerate(REPORTS)))
    cfg = _tiny_bert_cfg(tmp_path)
    messages: list[str] = []
    written = ensure_tokenizers(cfg, log=messages.append)
    assert [p.name for p in written] == ["reports_bpe.model", "wordpiece"]
    assert any("SentencePiece" in m for m in messages) and any("WordPiece" in m for m in messages)
    assert ensure_tokenizers(cfg, log=messages.append) == []
    ReportTokenizer(written[0]).check_config(cfg)
    assert len(load_bert_tokenizer(cfg)) <= 90
    with pytest.raises(ValueError, match="BERT_VOCAB_SIZE"):
        load_bert_tokenizer(_tiny_bert_cfg(tmp_path, "MODEL.TEXTUAL.BERT_VOCAB_SIZE", "20"))


def test_bert_from_config_and_from_a_local_folder(tmp_path):
    import torch

    from refers.text.bert import BertNotFoundError, build_bert, load_bert_tokenizer

    cfg = _tiny_bert_cfg(tmp_path)
    bert = build_bert(cfg)
    assert bert.config.hidden_size == 32 and bert.config.num_hidden_layers == 1 and bert.pooler is not None
    folder = tmp_path / "my_bert"
    bert.save_pretrained(str(folder))
    loaded = build_bert(_tiny_bert_cfg(tmp_path, "MODEL.TEXTUAL.BERT_DIR", str(folder)))
    for (name, a), b in zip(bert.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name
    missing = _tiny_bert_cfg(tmp_path, "MODEL.TEXTUAL.BERT_DIR", str(tmp_path / "Bio_ClinicalBERT"))
    for build in (build_bert, load_bert_tokenizer):
        with pytest.raises(BertNotFoundError, match="MODEL.TEXTUAL.BERT_DIR .*Bio_ClinicalBERT.*BERT_DIR ''"):
            build(missing)
    with pytest.raises(FileNotFoundError, match="WordPiece tokenizer not found"):
        load_bert_tokenizer(cfg)

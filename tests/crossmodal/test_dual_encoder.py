"""The dual-encoder export and ``refers.load_dual_encoder``: the same embeddings as the checkpoint's
model, offline, and a folder with a missing, altered or unlisted file refused in one line."""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

import pytest
import torch

import refers
from refers.cli import main as refers_main


@pytest.fixture(scope="module")
def exported(pretrain_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dual") / "dual_encoder"
    assert refers_main.main(["export", str(pretrain_run / "checkpoint_4.pth"), "--dual-encoder", "--out", str(out)]) == 0
    return out


def _reference_model(checkpoint: Path):
    """The pre-training model of the checkpoint, built as `refers generate` builds it."""
    from refers.config import Config
    from refers.engine.train_state import load_state
    from refers.models.refers_model import build_refers_model

    state = load_state(checkpoint)
    saved = state["config"]
    saved["MODEL"]["VISUAL"]["PRETRAINED"] = ""
    cfg = Config.from_dict(saved)
    model = build_refers_model(cfg)
    model.load_state_dict(state["model"])
    return model.eval(), cfg


def test_folder_contents_are_safetensors_with_checksums_and_a_model_card(exported):
    names = {p.relative_to(exported).as_posix() for p in exported.rglob("*") if p.is_file()}
    assert {"config.json", "image_encoder.safetensors", "report_encoder.safetensors", "MODEL_CARD.md",
            "tokenizer/tokenizer.json"} <= names
    assert not [n for n in names if n.endswith((".pth", ".bin", ".pkl"))]
    config = json.loads((exported / "config.json").read_text())
    assert set(config["files"]) == names - {"config.json"}
    assert config["model"]["num_views"] >= 1 and config["model"]["visual_pooling"] in ("cls", "mean")
    card = (exported / "MODEL_CARD.md").read_text()
    assert "SYNTHETIC" in card and "iterations: 4" in card and "pretrain" in card


def test_exported_folder_gives_the_checkpoints_embeddings(exported, pretrain_run, pretrain_studies):
    model, cfg = _reference_model(pretrain_run / "checkpoint_4.pth")
    loaded = refers.load_dual_encoder(exported, device="cpu")
    images = sorted((pretrain_studies / "images").rglob("*.png"))[:5]
    reports = ["FINDINGS: opacity in the left lung.", "no effusion.", "FINDINGS: zebrafinding opacity in the right lung."]

    got_images = loaded.encode_images(images)
    got_reports = loaded.encode_reports(reports)
    assert got_images.dtype == torch.float32 and got_images.shape == (5, loaded.spec.embedding_dim)
    assert torch.allclose(got_images.norm(dim=1), torch.ones(5), atol=1e-5)

    # The oracle: the pre-training model's own retrieval vectors, on the views as validation reads them.
    from refers.data.device_transforms import build_view_transform, to_model_input
    from refers.data.images import open_grey
    from refers.text.bert import load_bert_tokenizer

    transform = build_view_transform(cfg, train=False)
    views = torch.stack([torch.stack([transform(open_grey(p, min_side=cfg.DATA.IMAGE_MIN_SIDE))] * cfg.DATA.NUM_VIEWS)
                         for p in images])
    with torch.no_grad():
        expected_images = model.encode_images(to_model_input(views, "cpu"))
        tokens = load_bert_tokenizer(cfg)(reports, max_length=cfg.DATA.BERT_MAX_LENGTH, truncation=True,
                                          padding="max_length", return_tensors="pt")
        expected_reports = model.encode_reports(tokens["input_ids"], tokens["attention_mask"])
    assert torch.allclose(got_images, expected_images, atol=1e-5)
    assert torch.allclose(got_reports, expected_reports, atol=1e-5)

    # The checkpoint itself loads the same way, and a tensor input gives what its files give.
    direct = refers.load_dual_encoder(pretrain_run / "checkpoint_4.pth", device="cpu")
    assert torch.allclose(direct.encode_reports(reports), got_reports, atol=1e-6)
    tensor = torch.stack([loaded.preprocess(p) for p in images])  # uint8 [N, 1, S, S]
    assert torch.allclose(loaded.encode_images(tensor), got_images, atol=1e-6)


def test_loading_needs_no_network(exported, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("network access while loading")

    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    encoder = refers.load_dual_encoder(exported, device="cpu")
    assert encoder.encode_reports(["no effusion."]).shape[0] == 1


@pytest.mark.parametrize("damage", ["missing_weights", "altered_weights", "altered_config", "extra_tokenizer_file",
                                    "missing_config", "tokenizer_altered"])
def test_a_damaged_folder_is_refused_in_one_line(exported, tmp_path, damage, capsys):
    from refers.engine.dual_encoder_folder import DualEncoderFolderError

    folder = Path(shutil.copytree(exported, tmp_path / "copy"))
    expected = {
        "missing_weights": "report_encoder.safetensors is missing",
        "altered_weights": "image_encoder.safetensors was altered",
        "altered_config": "config.json was altered",
        "extra_tokenizer_file": "added_tokens.json is not one of the exported files",
        "missing_config": "config.json is missing",
        "tokenizer_altered": "tokenizer.json was altered",
    }[damage]
    if damage == "missing_weights":
        (folder / "report_encoder.safetensors").unlink()
    elif damage == "altered_weights":
        data = bytearray((folder / "image_encoder.safetensors").read_bytes())
        data[-1] ^= 1
        (folder / "image_encoder.safetensors").write_bytes(bytes(data))
    elif damage == "altered_config":
        config = json.loads((folder / "config.json").read_text())
        config["model"]["temperature"] = 0.5
        (folder / "config.json").write_text(json.dumps(config))
    elif damage == "extra_tokenizer_file":
        (folder / "tokenizer" / "added_tokens.json").write_text("{}")
    elif damage == "missing_config":
        (folder / "config.json").unlink()
    else:
        path = folder / "tokenizer" / "tokenizer.json"
        path.write_text(path.read_text().replace("[UNK]", "[UNX]", 1))
    with pytest.raises(DualEncoderFolderError, match=expected.replace(".", r"\.")):
        refers.load_dual_encoder(folder, device="cpu")


def test_export_refuses_a_non_empty_folder_and_leaves_it_alone(pretrain_run, tmp_path, capsys):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    code = refers_main.main(["export", str(pretrain_run / "checkpoint_4.pth"), "--dual-encoder", "--out", str(out)])
    assert code == 2 and "not an empty folder" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    assert refers_main.main(["export", str(pretrain_run / "checkpoint_4.pth"), "--dual-encoder"]) == 2
    assert "--dual-encoder needs --out" in capsys.readouterr().err

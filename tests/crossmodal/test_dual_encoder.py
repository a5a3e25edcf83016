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


def _rechecksummed(folder: Path, edit) -> None:
    """Edit ``config.json`` with ``edit(config)`` and give it a matching checksum again (as a
    hand-editor who read the format would), computed here: sha256 of the sorted JSON without it."""
    import hashlib

    config = json.loads((folder / "config.json").read_text())
    edit(config)
    body = {k: v for k, v in config.items() if k != "config_sha256"}
    config["config_sha256"] = hashlib.sha256(json.dumps(body, sort_keys=True).encode("utf-8")).hexdigest()
    (folder / "config.json").write_text(json.dumps(config, indent=2))


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def _tokenizer_damaged(config, folder):
    path = folder / "tokenizer" / "tokenizer.json"
    path.write_text("{not json")
    config["files"]["tokenizer/tokenizer.json"] = _sha256(path)


def _tokenizer_gone(config, folder):
    shutil.rmtree(folder / "tokenizer")
    config["files"] = {k: v for k, v in config["files"].items() if not k.startswith("tokenizer/")}


def _outside(config, folder):
    outside = folder.parent / "outside.txt"
    outside.write_text("x")
    config["files"]["../outside.txt"] = _sha256(outside)


HAND_EDITS = {
    "files_a_list": (lambda c, f: c.update(files=list(c["files"])), "files must map file names to their sha256"),
    "files_absolute": (lambda c, f: c["files"].update({"/etc/hostname": "0" * 64}), "files: '/etc/hostname' is not a file name inside"),
    "files_dotdot": (_outside, "files: '../outside.txt' is not a file name inside"),
    "digest_a_number": (lambda c, f: c["files"].update({"MODEL_CARD.md": 5}), "files: 'MODEL_CARD.md' has no sha256"),
    "size_a_string": (lambda c, f: c["model"].update(image_size="32"), "model.image_size must be an integer >= 1, got '32'"),
    "unknown_encoder": (lambda c, f: c["model"].update(image_encoder="ViT-Q_99"), "model.image_encoder 'ViT-Q_99'"),
    "bert_config_text": (lambda c, f: c["model"].update(bert_config="bert"), "model.bert_config must be a mapping"),
    "bert_config_heads": (lambda c, f: c["model"]["bert_config"].update(num_attention_heads=7), "model.bert_config does not describe a BERT"),
    "embedding_dim": (lambda c, f: c["model"].update(embedding_dim=c["model"]["embedding_dim"] + 1), "model.embedding_dim"),
    "temperature_0": (lambda c, f: c["model"].update(temperature=0), "model.temperature must be a positive number, got 0"),
    "temperature_negative": (lambda c, f: c["model"].update(temperature=-0.1), "model.temperature must be a positive number"),
    "num_views_0": (lambda c, f: c["model"].update(num_views=0), "model.num_views must be an integer >= 1, got 0"),
    "num_views_other": (lambda c, f: c["model"].update(num_views=2 * c["model"]["num_views"], embedding_dim=2 * c["model"]["embedding_dim"]),
                        "the weights do not fit the model described"),
    "pooling_max": (lambda c, f: c["model"].update(visual_pooling="max"), "model.visual_pooling must be one of cls, mean, got 'max'"),
    "tokenizer_damaged": (_tokenizer_damaged, "cannot be read as a tokenizer"),
    "tokenizer_gone": (_tokenizer_gone, "files lists no tokenizer/"),
}


@pytest.mark.parametrize("edit", sorted(HAND_EDITS))
def test_a_hand_edited_config_with_a_fresh_checksum_is_one_line_naming_the_field(exported, tmp_path, edit):
    from refers.engine.dual_encoder_folder import DualEncoderFolderError

    folder = Path(shutil.copytree(exported, tmp_path / "copy"))
    change, expected = HAND_EDITS[edit]
    _rechecksummed(folder, lambda config: change(config, folder))
    with pytest.raises(DualEncoderFolderError) as caught:
        refers.load_dual_encoder(folder, device="cpu")
    message = str(caught.value)
    assert expected in message and "\n" not in message, message
    named = folder / "tokenizer" if edit == "tokenizer_damaged" else folder / "config.json"
    assert str(named) in message


@pytest.mark.parametrize("damage", ["no_weights", "no_bert"])
def test_a_checkpoint_without_the_weights_is_one_line_naming_it(pretrain_run, tmp_path, capsys, damage):
    raw = torch.load(pretrain_run / "checkpoint_4.pth", map_location="cpu", weights_only=True)
    raw["model"] = {} if damage == "no_weights" else {k: v for k, v in raw["model"].items() if not k.startswith("bert.")}
    checkpoint = tmp_path / "checkpoint_4.pth"
    torch.save(raw, checkpoint)
    expected = "holds no image-encoder weights" if damage == "no_weights" else "bert.embeddings.word_embeddings.weight missing"
    capsys.readouterr()
    assert refers_main.main(["export", str(checkpoint), "--dual-encoder", "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert f"{checkpoint}" in err and expected in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_the_api_takes_one_report_string_and_names_a_wrong_image_tensor(exported):
    encoder = refers.load_dual_encoder(exported, device="cpu")
    size = encoder.spec.image_size
    one = encoder.encode_reports("no effusion.")
    assert one.shape == (1, encoder.spec.embedding_dim)
    assert torch.allclose(one, encoder.encode_reports(["no effusion."]))
    grey = torch.randint(0, 256, (2, 1, size, size), dtype=torch.uint8)
    assert encoder.encode_images(grey).shape == (2, encoder.spec.embedding_dim)  # grey uint8, as files give
    for tensor, expected in [
        (torch.zeros(2, 1, size, size), f"float images must have 3 channels, normalised with ImageNet's statistics, got 1 (shape (2, 1, {size}, {size}))"),
        (torch.zeros(2, 3, size + 1, size), f"images must be {size}x{size} (the model's image_size), got {size + 1}x{size}"),
        (torch.zeros(2, 4, size, size, dtype=torch.uint8), "integer images must be uint8 with 1 or 3 channels, got torch.uint8 with 4"),
        (torch.zeros(size, size), f"images must be [N, C, {size}, {size}] or [N, V, C, {size}, {size}], got ({size}, {size})"),
    ]:
        with pytest.raises(ValueError) as caught:
            encoder.encode_images(tensor)
        assert expected in str(caught.value)


def test_an_unreadable_run_info_is_left_out_of_the_export_with_a_warning(pretrain_run, tmp_path, caplog):
    run = tmp_path / "run"
    run.mkdir()
    checkpoint = run / "checkpoint_4.pth"
    checkpoint.write_bytes((pretrain_run / "checkpoint_4.pth").read_bytes())
    (run / "run_info.json").write_text("[" * 100_000)
    out = tmp_path / "out"
    with caplog.at_level("WARNING"):
        assert refers_main.main(["export", str(checkpoint), "--dual-encoder", "--out", str(out)]) == 0
    assert f"{run / 'run_info.json'}: unreadable (nested too deeply to read)" in caplog.text
    assert refers.load_dual_encoder(out, device="cpu").spec is not None

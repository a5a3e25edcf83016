"""The one image-root resolver (refers.data.image_roots): precedence, the official layouts that
``refers synth`` writes, the real fine-tuning and pre-training readers going through it, and an error
that lists every place tried."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from PIL import Image

from refers.base.errors import UserError
from refers.cli.finetune import main as finetune_main
from refers.data.image_roots import DATASET_YAML, image_roots

SHENZHEN = "Shenzhen_Tuberculosis"
PACKAGE = Path(__file__).resolve().parents[2] / "refers"


@pytest.fixture(scope="module")
def project(synth_root, tmp_path_factory) -> Path:
    """A project folder whose Data/ is the session's ``refers synth`` output (every dataset in its
    official layout; shared read-only, see tests/shared_data.py)."""
    root = tmp_path_factory.mktemp("layouts")
    (root / "Data").symlink_to(synth_root, target_is_directory=True)
    return root


def _shenzhen_lists(project: Path, folder: Path) -> Path:
    """The original's published list format (``CHNCXR_0001_0.png 1 0``), no dataset.yaml."""
    names = sorted(p.name for p in (project / "Data" / SHENZHEN / "ChinaSet_AllFiles" / "CXR_png").glob("*.png"))
    assert len(names) >= 6 and {n[-5] for n in names} == {"0", "1"}
    folder.mkdir(parents=True)
    lines = "".join(f"{n} {1 - int(n[-5])} {int(n[-5])}\n" for n in names)
    for split in ("train.txt", "valid.txt", "test.txt"):
        (folder / split).write_text(lines)
    assert not (folder / DATASET_YAML).exists()
    return folder


def test_finetuning_shenzhen_without_dataset_yaml_finds_the_official_layout(project, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("REFERS_HOME", str(project))
    lists = _shenzhen_lists(project, tmp_path / "lists")
    args = ["--name", "run", "--dataset", SHENZHEN, "--list_dir", str(lists), "--output_dir", str(tmp_path / "out"),
            "--log_dir", str(tmp_path / "logs"), "--model_type", "ViT-nano_8", "--img_size", "32", "--num_classes", "1",
            "--init", "scratch", "--train_batch_size", "4", "--eval_batch_size", "8", "--num_workers", "0",
            "--num_steps", "2", "--eval_every", "2", "--warmup_steps", "1"]
    assert finetune_main([*args, "--stage", "train"]) == 0, capsys.readouterr().err
    assert (tmp_path / "out" / "run_bestauc_checkpoint.bin").is_file()

    from argparse import Namespace

    from refers.finetune.data import build_dataset, resolve_data

    setup = resolve_data(Namespace(dataset=SHENZHEN, list_dir=str(lists), data_root=None, classes=None, num_classes=None))
    dataset, _ = build_dataset(setup, lists / "train.txt", 32, train=False, skip_bad=False)
    official = (project / "Data" / SHENZHEN / "ChinaSet_AllFiles" / "CXR_png").resolve()
    assert {Path(f).parent for f in dataset.files} == {official}

    # A listed image that is nowhere: the error names the list line and every place tried.
    (lists / "train.txt").write_text("CHNCXR_9999_1.png 0 1\n")
    assert finetune_main([*args, "--stage", "train", "--overwrite"]) == 1
    err = capsys.readouterr().err
    base = project / "Data" / SHENZHEN
    assert "image CHNCXR_9999_1.png not found" in err and "train.txt:1" in err
    tried = err.split("looked under ", 1)[1].split(" (the official layouts of")[0].split(", ")
    assert tried == [str(base / rel) for rel in ("prepared", "ChinaSet_AllFiles/CXR_png", "images/images", "images",
                                                  "CXR_png")] + [str(base)]


def test_precedence_data_root_then_dataset_yaml_then_official_layouts(project, tmp_path, monkeypatch):
    monkeypatch.setenv("REFERS_HOME", str(project))
    name = sorted((project / "Data" / SHENZHEN / "ChinaSet_AllFiles" / "CXR_png").glob("*.png"))[0].name
    recorded, given = tmp_path / "recorded", tmp_path / "given"
    for folder in (recorded, given):
        folder.mkdir()
        Image.new("L", (8, 8)).save(folder / name)
    lists = tmp_path / "lists"
    lists.mkdir()
    official = (project / "Data" / SHENZHEN / "ChinaSet_AllFiles" / "CXR_png" / name).resolve()
    assert image_roots(SHENZHEN, lists).find(name) == official
    (lists / DATASET_YAML).write_text("image_root: ../recorded\n")
    assert image_roots(SHENZHEN, lists).find(name) == (recorded / name).resolve()
    assert image_roots(SHENZHEN, lists, data_root=given).find(name) == (given / name).resolve()
    # --data_root alone: nothing else is searched.
    assert image_roots(SHENZHEN, lists, data_root=tmp_path / "empty").find(name) is None
    # The download folder as --data_root: its official layouts are searched under it.
    assert image_roots(SHENZHEN, None, data_root=project / "Data" / SHENZHEN).find(name) == official


@pytest.mark.parametrize("dataset, pattern, as_listed", [
    ("Shenzhen_Tuberculosis", "ChinaSet_AllFiles/CXR_png/*.png", lambda p: p.name),
    ("COVID-19_Image_Data_Collection", "images/*", lambda p: p.name),
    ("NIH_ChestX-ray", "images_*/images/*.png", lambda p: f"{p.parent.parent.name}/{p.name}"),  # lists omit images/
    ("MIMIC-CXR", "files/p*/p*/s*/*.jpg", lambda p: p.relative_to(p.parents[4]).as_posix()),
])
def test_every_official_layout_is_found_without_dataset_yaml(project, tmp_path, monkeypatch, dataset, pattern, as_listed):
    monkeypatch.setenv("REFERS_HOME", str(project))
    files = sorted((project / "Data" / dataset).glob(pattern))
    assert files
    roots = image_roots(dataset, tmp_path)
    for file in files[:5]:
        assert roots.find(as_listed(file)) == file.resolve()


def test_pretraining_finds_mimic_files_without_dataset_yaml(project, tmp_path, monkeypatch):
    import json

    from refers.config import load_config
    from refers.data.pretrain_dataset import resolve_image_root

    monkeypatch.setenv("REFERS_HOME", str(project))
    image = sorted((project / "Data" / "MIMIC-CXR").glob("files/p*/p*/s*/*.jpg"))[0]
    relative = image.relative_to(project / "Data" / "MIMIC-CXR").as_posix()
    index = tmp_path / "train_studies.jsonl"
    index.write_text(json.dumps({"study_id": "1", "images": [relative], "views": ["PA"], "text": "x"}) + "\n")
    cfg = load_config()
    assert resolve_image_root(cfg, index) == project / "Data" / "MIMIC-CXR"
    index.write_text(json.dumps({"study_id": "1", "images": ["files/p10/p1/s1/gone.jpg"], "views": ["PA"], "text": "x"}) + "\n")
    with pytest.raises(UserError) as caught:
        resolve_image_root(cfg, index)
    message = str(caught.value)
    base = project / "Data" / "MIMIC-CXR"
    assert "files/p10/p1/s1/gone.jpg is under none of " in message
    tried = message.split("is under none of ", 1)[1].split(" (the official layouts of")[0].split(", ")
    assert tried == [str(base / "prepared"), str(base), str(base / "images")]


def test_the_data_layer_imports_nothing_from_prepare():
    for module in sorted((PACKAGE / "data").rglob("*.py")):
        for node in ast.walk(ast.parse(module.read_text(encoding="utf-8"))):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else \
                [a.name for a in node.names] if isinstance(node, ast.Import) else []
            assert not any(n == "refers.prepare" or n.startswith("refers.prepare.") for n in names), module


def test_prepare_pack_and_check_take_their_root_from_the_same_resolver(project, tmp_path, monkeypatch):
    from refers.prepare.layout import image_root_for

    monkeypatch.setenv("REFERS_HOME", str(project))
    lists = _shenzhen_lists(project, tmp_path / "lists")
    assert image_root_for(SHENZHEN, lists) == project / "Data" / SHENZHEN / "ChinaSet_AllFiles" / "CXR_png"
    (tmp_path / "elsewhere").mkdir()
    (lists / DATASET_YAML).write_text("image_root: ../elsewhere\n")
    # The recorded root first; the official layout when only it holds the listed images ...
    assert image_root_for(SHENZHEN, lists) == project / "Data" / SHENZHEN / "ChinaSet_AllFiles" / "CXR_png"
    Image.new("L", (8, 8)).save(tmp_path / "elsewhere" / (lists / "train.txt").read_text().split()[0])
    assert image_root_for(SHENZHEN, lists) == (tmp_path / "elsewhere").resolve()
    # ... and when none holds them, still the recorded root: `refers prepare check` then reports each line.
    for split in ("train.txt", "valid.txt", "test.txt"):
        (lists / split).write_text("CHNCXR_9999_1.png 0 1\n")
    assert image_root_for(SHENZHEN, lists) == (tmp_path / "elsewhere").resolve()

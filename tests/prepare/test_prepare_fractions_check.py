"""``refers prepare fractions`` (reproducible, class-covering label subsets) and ``refers prepare check``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from refers.cli.prepare import main
from refers.data.lists import find_split_file, read_list
from refers.prepare.common import read_dataset_yaml
from refers.prepare.fractions import sample_fraction
from tests.conftest import require_shared
from tests.prepare_helpers import grey_png


def _vinbig_lists(folder: Path, count: int = 400, seed: int = 0) -> None:
    """A VinBigData-style train/val list (float labels, CRLF) with one very rare class (column 5)."""
    rng = np.random.default_rng(seed)
    labels = (rng.random((count, 14)) < 0.08).astype(np.float32)
    labels[:, 5] = 0
    labels[count - 3, 5] = 1
    labels[:, 9] = 0  # a class without positives
    folder.mkdir(parents=True, exist_ok=True)
    for split, rows in (("train", labels), ("val", labels[:100])):
        text = "".join(f"{i:032x}.png " + " ".join(f"{v:.1f}" for v in row) + "\r\n" for i, row in enumerate(rows))
        (folder / f"{split}.txt").write_bytes(text.encode())


def test_sample_fraction_covers_classes_nests_and_reproduces():
    rng = np.random.default_rng(1)
    labels = (rng.random((1000, 4)) < [0.3, 0.05, 0.001, 0.0]).astype(np.float32)
    labels[500, 2] = 1
    for seed in range(5):
        small, large = sample_fraction(labels, 1, seed), sample_fraction(labels, 10, seed)
        assert set(small) <= set(large)
        assert len(large) == 100 and len(small) >= 10
        for subset in (small, large):
            assert (labels[subset].sum(axis=0)[:3] >= 1).all()  # every class with a positive has one
        assert np.array_equal(small, sample_fraction(labels, 1, seed))
    assert not np.array_equal(sample_fraction(labels, 10, 0), sample_fraction(labels, 10, 1))
    with pytest.raises(ValueError):
        sample_fraction(labels, 0, 0)


def test_fractions_command_writes_seeded_files(tmp_path, capsys):
    folder = tmp_path / "VinBigData_Chest_X-ray"
    _vinbig_lists(folder)
    args = ["fractions", "--dataset", "vinbig", "--lists", str(folder), "--percent", "1", "10", "--seeds", "0", "1", "2",
            "--val-percent", "10"]
    assert main(args) == 0
    source = (folder / "train.txt").read_bytes().decode().splitlines()
    for pct, size in ((1, 4), (10, 40)):
        files = [folder / f"train_{pct}_seed{k}.txt" for k in range(3)]
        subsets = [read_list(f, num_labels=14) for f in files]
        assert (folder / f"train_{pct}.txt").read_bytes() == files[0].read_bytes()
        assert len({f.read_bytes() for f in files}) == 3
        for f, subset in zip(files, subsets):
            assert len(subset) >= size
            rows = f.read_text().splitlines()
            assert set(rows) <= set(source) and "\r" not in f.read_text()  # lines copied unchanged
            assert subset.labels[:, 5].sum() == 1  # the one positive of the rare class is always drawn
        assert read_dataset_yaml(folder)["files"][f"train_{pct}_seed1.txt"]["made_by"]["seed"] == 1
    assert len(read_list(folder / "val_10.txt", num_labels=14)) >= 10
    first = (folder / "train_10_seed2.txt").read_bytes()
    assert main(args) == 1 and "pass --force" in capsys.readouterr().err
    assert main([*args, "--force"]) == 0
    assert (folder / "train_10_seed2.txt").read_bytes() == first  # reproducible


def _shenzhen_images(root: Path, names) -> Path:
    data = grey_png(root / "template.png", size=(8, 8)).read_bytes()
    for name in names:
        (root / name).write_bytes(data)
    return root


def test_check_reports_every_problem_with_file_and_line(tmp_path, capsys):
    lists, images = tmp_path / "lists", tmp_path / "images"
    _shenzhen_images(images, [f"CHNCXR_{i:04d}_0.png" for i in range(1, 7)])
    lists.mkdir()
    (lists / "train.txt").write_text("CHNCXR_0001_0.png 1 0\nCHNCXR_0002_0.png 1 0\n")
    (lists / "valid.txt").write_text("CHNCXR_0003_0.png 1 0\n")
    (lists / "test.txt").write_text("CHNCXR_0004_0.png 1 0\nCHNCXR_0005_0.png 1 0\n")
    assert main(["check", "--dataset", "shenzhen", "--lists", str(lists), "--images", str(images), "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "train (train.txt): 2 lines, 0 missing, 0 unreadable, 0 duplicated, 0 bad lines" in out and "check: OK" in out

    (lists / "train.txt").write_text("CHNCXR_0001_0.png 1 0\nCHNCXR_0009_0.png 1 0\nCHNCXR_0002_0.png 1\n"
                                     "CHNCXR_0001_0.png 1 0\nCHNCXR_0004_0.png 1 0\nCHNCXR_0006_0.png 1 0\n")
    png = images / "CHNCXR_0006_0.png"
    png.write_bytes(png.read_bytes()[:40])
    assert main(["check", "--dataset", "shenzhen", "--lists", str(lists), "--images", str(images), "--workers", "1"]) == 1
    out = capsys.readouterr().out
    train = lists / "train.txt"
    assert "train (train.txt): 6 lines, 1 missing, 1 unreadable, 1 duplicated, 1 bad lines" in out
    assert f"{train}:2: image not found: CHNCXR_0009_0.png" in out
    assert f"{train}:3: expected an image path and 2 labels, found 2 fields (no image path, or 1 too few)" in out
    assert f"{train}:4: CHNCXR_0001_0.png already on line 1" in out
    assert f"{train}:6: cannot read image" in out
    assert "patient overlap: 1 patient(s) in both train and test, e.g. CHNCXR_0004" in out


def test_check_takes_the_published_lists(tmp_path, capsys):
    published = require_shared("original-DataProcessed/Shenzhen_Tuberculosis")
    names = [p for split in ("train", "val", "test") for p in read_list(find_split_file(published, split)).paths]
    images = _shenzhen_images(tmp_path / "CXR_png", names)
    assert main(["check", "--dataset", "shenzhen", "--lists", str(published), "--images", str(images), "--quick"]) == 0
    out = capsys.readouterr().out
    assert "val (valid.txt): 67 lines, 0 missing" in out and "check: OK" in out


def test_dataprocessed_wrapper_runs_check_as_a_script(tmp_path):
    import subprocess
    import sys

    lists, images = tmp_path / "lists", tmp_path / "images"
    lists.mkdir()
    images.mkdir()
    (lists / "train.txt").write_text("CHNCXR_0001_0.png 1 0\n")
    script = Path(__file__).resolve().parents[2] / "DataProcessed" / "prepare.py"
    result = subprocess.run([sys.executable, str(script), "check", "--dataset", "shenzhen", "--lists", str(lists),
                             "--images", str(images), "--quick"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "train (train.txt): 1 lines, 1 missing" in result.stdout
    assert f"{lists / 'train.txt'}:1: image not found: CHNCXR_0001_0.png" in result.stdout

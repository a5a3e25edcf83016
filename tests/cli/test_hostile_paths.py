"""Hostile paths: outputs that cannot be written, inputs that are missing, temporaries left by a crash.

Each is one line naming the path, exit 1 (bad data or state) or 2 (bad flag), no traceback, checked
before any work, in the one place the commands share (refers/base/atomic.py).
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from refers.base.atomic import atomic_write_text, check_output_dir, check_output_file
from refers.base.errors import UserError


def _one_error_line(err: str, *expected: str) -> None:
    lines = [line for line in err.splitlines() if "error" in line]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert all(text in lines[0] for text in expected), lines[0]


def test_output_folder_checks(tmp_path, monkeypatch):
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(UserError, match=r"output folder .*file.txt is a file, not a folder") as caught:
        check_output_dir(a_file)
    assert caught.value.exit_code == 2
    with pytest.raises(UserError, match=r"cannot be created: .*file.txt is a file") as caught:
        check_output_dir(a_file / "below" / "out")  # as root, chmod stops nothing: a file on the way does
    assert caught.value.exit_code == 2
    with pytest.raises(UserError, match=r"--out .*out.tsv's folder|is a folder, not a file"):
        check_output_file(tmp_path)
    assert check_output_dir(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
    assert not (tmp_path / "new").exists()  # the check creates nothing
    # A read-only folder or file system: os.access says so (root included, for a read-only mount).
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != tmp_path)
    with pytest.raises(UserError, match=r"cannot be written: .* is read-only") as caught:
        check_output_dir(tmp_path / "new")
    assert caught.value.exit_code == 2


def test_a_full_disk_is_one_line_naming_the_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    target = tmp_path / "summary.md"
    target.write_text("earlier run\n")

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(UserError, match=r"cannot write .*summary.md: no space left on device") as caught:
        atomic_write_text(target, "new\n")
    assert caught.value.exit_code == 1
    monkeypatch.undo()
    assert target.read_text() == "earlier run\n" and sorted(p.name for p in tmp_path.iterdir()) == ["summary.md"]


def test_generate_checks_every_path_before_loading_the_model(tmp_path, capsys, monkeypatch):
    import refers.engine.train_state as train_state
    from refers.cli.generate import main

    loaded = []
    monkeypatch.setattr(train_state, "load_state", lambda path: loaded.append(path) or {})
    checkpoint = tmp_path / "checkpoint_6.pth"
    checkpoint.write_bytes(b"not read in this test")
    assert main(["--checkpoint", str(checkpoint), "--study", str(tmp_path / "no_such_study")]) == 1
    _one_error_line(capsys.readouterr().err, "--study", "no_such_study: no such folder")
    study = tmp_path / "study"
    study.mkdir()
    (study / "notes.txt").write_text("x")
    assert main(["--checkpoint", str(checkpoint), "--study", str(study)]) == 1
    _one_error_line(capsys.readouterr().err, "study: no PNG/JPEG images in this study folder")
    (study / "view1.png").write_bytes(b"")
    assert main(["--checkpoint", str(checkpoint), "--study", str(study), "--out", str(checkpoint / "reports.tsv")]) == 2
    _one_error_line(capsys.readouterr().err, "--out", "checkpoint_6.pth is a file")
    assert main(["--checkpoint", str(tmp_path / "none.pth"), "--study", str(study)]) == 1
    _one_error_line(capsys.readouterr().err, "none.pth: no such file")
    assert loaded == []  # the model was never loaded


def test_results_and_prepare_refuse_an_output_below_a_file_before_any_work(tmp_path, capsys):
    import numpy as np

    from refers.cli.prepare import main as prepare_main
    from refers.cli.results import main as results_main
    from refers.eval.predictions import write_prediction_files

    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a folder is wanted")
    tree = tmp_path / "tree"
    labels = np.array([[0.0], [1.0], [0.0], [1.0]])
    write_prediction_files(tree / "Shenzhen_Tuberculosis" / "data100" / "REFERS", ["Tuberculosis"], labels, labels * 0.5 + 0.2)
    assert results_main([str(tree), "--out", str(blocker / "summary"), "--bootstrap", "0", "--no-figures"]) == 2
    _one_error_line(capsys.readouterr().err, "--out", "blocker is a file")
    raw = tmp_path / "raw"
    raw.mkdir()
    assert prepare_main(["shenzhen", "--root", str(raw), "--out", str(blocker)]) == 2
    _one_error_line(capsys.readouterr().err, "--out", "blocker is a file, not a folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocker", "raw", "tree"] and not any(raw.iterdir())


def test_config_file_errors_name_the_file_key_and_line(tmp_path, capsys):
    """Verified, not changed: a preset's type error is blamed on the preset and key; a YAML syntax error names the file and line."""
    from refers.cli.finetune import main as finetune_main
    from refers.cli.sweep import main as sweep_main

    preset = tmp_path / "preset.yaml"
    preset.write_text("learning_rate: abc\n")
    assert finetune_main(["--config", str(preset), "--name", "x", "--dataset", "Shenzhen_Tuberculosis"]) == 2
    _one_error_line(capsys.readouterr().err, f"{preset}: learning_rate must be float, got 'abc'")
    broken = tmp_path / "broken.yaml"
    broken.write_text("a: [1\nb: 2\n")
    for run in (lambda: finetune_main(["--config", str(broken), "--name", "x", "--dataset", "Shenzhen_Tuberculosis"]),
                lambda: sweep_main([str(broken), "--dry-run"])):
        assert run() == 2
        _one_error_line(capsys.readouterr().err, f"{broken}: not valid YAML", "line 2")

"""Zero-shot classification: the prompt scoring against a hand computation, the prompt files, and
`refers zeroshot` end to end into a results tree that `refers results` tables."""

from __future__ import annotations

import json
import re
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from refers.cli import main as refers_main
from refers.config.engine import ConfigError
from refers.data.registry import DATASETS
from refers.eval.zeroshot import paired_prompt_probability, prompt_set_embedding
from refers.text.prompts import DEFAULT_PROMPT_FILES, default_prompt_file, read_prompts


def test_prompt_scores_match_a_hand_computation_and_swapping_the_sets_gives_one_minus_p():
    image = torch.tensor([[3.0, 4.0]])  # normalised: (0.6, 0.8)
    positive = prompt_set_embedding(torch.tensor([[1.0, 0.0], [0.0, 2.0]]))  # mean of (1,0),(0,1), renormalised
    negative = prompt_set_embedding(torch.tensor([[0.0, -5.0]]))
    assert torch.allclose(positive, torch.tensor([1.0, 1.0]) / math.sqrt(2))
    tau = 0.1
    s_pos, s_neg = (0.6 + 0.8) / math.sqrt(2), -0.8
    expected = math.exp(s_pos / tau) / (math.exp(s_pos / tau) + math.exp(s_neg / tau))
    p = paired_prompt_probability(image, positive, negative, tau)
    assert p.item() == pytest.approx(expected, rel=1e-5)
    rng = torch.Generator().manual_seed(0)
    images, pos, neg = torch.randn(7, 5, generator=rng), torch.randn(5, generator=rng), torch.randn(5, generator=rng)
    pos, neg = torch.nn.functional.normalize(pos, dim=0), torch.nn.functional.normalize(neg, dim=0)
    forward, swapped = paired_prompt_probability(images, pos, neg, 0.07), paired_prompt_probability(images, neg, pos, 0.07)
    assert torch.allclose(forward + swapped, torch.ones(7), atol=1e-6)
    with pytest.raises(ValueError):
        paired_prompt_probability(images, pos, neg, 0.0)


def test_every_default_prompt_file_covers_its_datasets_classes():
    for dataset in DEFAULT_PROMPT_FILES:
        classes = DATASETS[dataset].classes if dataset in DATASETS else DATASETS["MIMIC-CXR"].classes
        prompts = read_prompts(default_prompt_file(dataset), classes)
        assert [p.name for p in prompts] == list(classes)
        assert all(p.positive and p.negative and not set(p.positive) & set(p.negative) for p in prompts)


@pytest.mark.parametrize("body, message", [
    ("classes: {A: {positive: [x], negative: [y]}}", "no prompts for class(es) B"),
    ("classes: {A: {positive: [x], negative: [y]}, Bee: {positive: [x], negative: [y]}, B: a}", "unknown class 'Bee'"),
    ("findings: {effusion: {positive: [x], negative: [y]}}\nclasses: {A: efusion, B: effusion}", "did you mean 'effusion'"),
    ("classes: {A: {positive: [], negative: [y]}, B: {positive: [x], negative: [y]}}", "class 'A': positive must be a non-empty list"),
    ("classes: {A: {positive: [x]}, B: {positive: [x], negative: [y]}}", "must name a finding or be"),
])
def test_a_bad_prompt_file_is_one_error_naming_the_file(tmp_path, body, message):
    path = tmp_path / "prompts.yaml"
    path.write_text(body + "\n")
    with pytest.raises(ConfigError, match=re.escape(message)) as caught:
        read_prompts(path, ["A", "B"])
    assert str(path) in str(caught.value)


def _test_list(list_dir: Path) -> tuple[list[str], np.ndarray]:
    rows = [line.split() for line in (list_dir / "test.txt").read_text().splitlines() if line.strip()]
    return [r[0] for r in rows], np.array([[float(v) for v in r[1:]] for r in rows])


def test_zeroshot_writes_test_py_files_that_results_tables(pretrain_run, finetune_datasets, tmp_path, capsys):
    from refers.data.registry import safe_class_filename
    from refers.engine.dual_encoder_folder import load_dual_encoder

    list_dir, data_root = finetune_datasets["NIH_ChestX-ray"]
    results = tmp_path / "Results_of_fine-tuning"
    checkpoint = pretrain_run / "checkpoint_4.pth"
    args = ["zeroshot", "--model", str(checkpoint), "--dataset", "NIH_ChestX-ray", "--list_dir", str(list_dir),
            "--data_root", str(data_root), "--results_dir", str(results), "--no-progress", "--batch-size", "5"]
    assert refers_main.main(args) == 0
    out = capsys.readouterr().out
    folder = results / "NIH_ChestX-ray" / "zeroshot" / "REFERS" / "seed0"
    assert "SYNTHETIC zero-shot mean AUC" in out and str(folder) in out
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["zero_shot"] and summary["synthetic"] and (folder / "SYNTHETIC.txt").is_file() and (folder / "roc.png").is_file()

    # The oracle: embeddings of the test images and prompts, scored by hand in numpy.
    paths, labels = _test_list(list_dir)
    encoder = load_dual_encoder(checkpoint, device="cpu")
    files = [next(data_root.rglob(Path(p).name)) for p in paths]
    images = encoder.encode_images(files).numpy().astype(np.float64)
    for column, prompts in enumerate(read_prompts(default_prompt_file("NIH_ChestX-ray"), DATASETS["NIH_ChestX-ray"].classes)):
        vectors = []
        for texts in (prompts.positive, prompts.negative):
            e = encoder.encode_reports(list(texts)).numpy().astype(np.float64)
            m = e.mean(axis=0)
            vectors.append(m / np.linalg.norm(m))
        logits = images @ np.stack(vectors).T / encoder.temperature
        expected = np.exp(logits[:, 0]) / np.exp(logits).sum(axis=1)
        rows = [line.split() for line in (folder / f"{safe_class_filename(prompts.name)}.txt").read_text().splitlines()]
        assert len(rows) == len(paths)
        np.testing.assert_array_equal([float(r[0]) for r in rows], labels[:, column])
        np.testing.assert_allclose([float(r[1]) for r in rows], expected, atol=1e-5)

    # refers results: the task row "zeroshot", with its interval.
    table_dir = tmp_path / "tables"
    assert refers_main.main(["results", str(results), "--out", str(table_dir), "--bootstrap", "50", "--no-figures"]) == 0
    tables = "\n".join(p.read_text() for p in table_dir.glob("*.md"))
    assert "zero-shot" in tables and "REFERS" in tables

    # The same prompts from another file are the same input: they replace their own results.
    shipped = default_prompt_file("NIH_ChestX-ray").parent
    base = tmp_path / "base.yaml"
    base.write_text((shipped / "findings.yaml").read_text())
    prompts = tmp_path / "mine.yaml"
    prompts.write_text((shipped / "nih.yaml").read_text().replace("_BASE_: findings.yaml", f"_BASE_: {base}"))
    before = (folder / "Effusion.txt").read_text()
    assert refers_main.main([*args, "--prompts", str(prompts)]) == 0
    assert (folder / "Effusion.txt").read_text() == before
    # A change in a file that the prompt file only inherits (_BASE_) is other prompts: refused, the
    # earlier files stay.
    assert '"Moderate cardiomegaly."' in base.read_text()
    base.write_text(base.read_text().replace('"Moderate cardiomegaly."', '"Severe cardiomegaly."'))
    assert refers_main.main([*args, "--prompts", str(prompts)]) == 2
    assert "made with other prompts" in capsys.readouterr().err
    assert (folder / "Effusion.txt").read_text() == before
    assert refers_main.main([*args, "--prompts", str(prompts), "--overwrite"]) == 0


def test_zeroshot_usage_errors_are_one_line(pretrain_run, finetune_datasets, tmp_path, capsys):
    list_dir, data_root = finetune_datasets["Shenzhen_Tuberculosis"]
    base = ["zeroshot", "--dataset", "Shenzhen_Tuberculosis", "--list_dir", str(list_dir), "--data_root", str(data_root),
            "--results_dir", str(tmp_path / "r"), "--no-progress"]
    assert refers_main.main([*base, "--model", str(tmp_path / "nothing")]) == 1
    assert "no such dual-encoder folder or checkpoint" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("classes: {Tuberculosis: {positive: [], negative: [x]}}\n")
    assert refers_main.main([*base, "--model", str(pretrain_run / "checkpoint_4.pth"), "--prompts", str(bad)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


def _one_line(err: str, *expected: str) -> None:
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert all(text in err for text in expected), err


@pytest.fixture
def shenzhen_lists(finetune_datasets, tmp_path):
    """A private copy of the tiny Shenzhen list folder (these tests edit test.txt) and its image folder."""
    import shutil

    list_dir, data_root = finetune_datasets["Shenzhen_Tuberculosis"]
    return Path(shutil.copytree(list_dir, tmp_path / "lists")), data_root


def _zeroshot_args(pretrain_run, lists, results):
    list_dir, data_root = lists
    return ["zeroshot", "--model", str(pretrain_run / "checkpoint_4.pth"), "--dataset", "Shenzhen_Tuberculosis",
            "--list_dir", str(list_dir), "--data_root", str(data_root), "--results_dir", str(results), "--no-progress"]


def test_bad_method_device_prompts_and_an_empty_list_are_one_line_before_any_output(pretrain_run, shenzhen_lists, tmp_path, capsys):
    results = tmp_path / "r"
    args = _zeroshot_args(pretrain_run, shenzhen_lists, results)
    for method in ("../../escaped", "a/b", ".."):
        assert refers_main.main([*args, "--method", method]) == 2
        _one_line(capsys.readouterr().err, f"--method {method!r} must be one folder name")
    for device in ["cuda:99"] + ([] if torch.cuda.is_available() else ["cuda", "cuda:7"]):
        assert refers_main.main([*args, "--device", device]) == 2
        _one_line(capsys.readouterr().err, f"--device {device}")
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes("classes: {Tuberculosis: {positive: [Tuberculose pulmonaire \xe9vidente], negative: [x]}}\n".encode("latin-1"))
    assert refers_main.main([*args, "--prompts", str(latin1)]) == 2
    _one_line(capsys.readouterr().err, str(latin1), "is not UTF-8")
    test_list = shenzhen_lists[0] / "test.txt"
    test_list.write_text("\n")
    assert refers_main.main(args) == 1
    _one_line(capsys.readouterr().err, f"{test_list} holds no images")
    assert not results.exists() and not (tmp_path.parent / "escaped").exists()


def test_another_test_list_is_refused_and_the_record_comes_before_the_predictions(pretrain_run, shenzhen_lists, tmp_path,
                                                                                 capsys, monkeypatch):
    import hashlib

    import refers.crossmodal.zeroshot as zeroshot

    results = tmp_path / "r"
    args = _zeroshot_args(pretrain_run, shenzhen_lists, results)
    assert refers_main.main(args) == 0
    folder = results / "Shenzhen_Tuberculosis" / "zeroshot" / "REFERS" / "seed0"
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    test_list = shenzhen_lists[0] / "test.txt"
    lines = test_list.read_text().splitlines()
    test_list.write_text("\n".join(lines[:-1]) + "\n")  # the same model and prompts, one image fewer
    capsys.readouterr()
    assert refers_main.main(args) == 2
    _one_line(capsys.readouterr().err, f"{folder} holds zero-shot results made with another test list")
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before

    # Interrupted while writing the predictions: the record of that run is already there.
    def interrupted(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(zeroshot, "write_prediction_files", interrupted)
    assert refers_main.main([*args, "--overwrite"]) == 130
    # --overwrite removed the earlier run's files first: none of them stays beside the new record.
    assert sorted(p.name for p in folder.iterdir()) == ["run_record.json"]
    record = json.loads((folder / "run_record.json").read_text())
    assert record["test_list"]["sha256"] == hashlib.sha256(test_list.read_bytes()).hexdigest()
    assert record["test_list"]["scored"] == len(lines) - 1
    monkeypatch.undo()
    assert refers_main.main(args) == 0  # the same inputs again complete the interrupted run
    rows = (folder / "Tuberculosis.txt").read_text().splitlines()
    assert len(rows) == len(lines) - 1

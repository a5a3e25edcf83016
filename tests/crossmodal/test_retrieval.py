"""Retrieval metrics against brute force, the 5x200 sampler, and `refers retrieval` end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from refers.cli import main as refers_main
from refers.eval.retrieval import CHEXPERT_5, partner_ranks, retrieval_report, same_label_hits, sample_per_class


def _brute_force(queries: np.ndarray, candidates: np.ndarray, ids: list[int], k: int) -> tuple[list[int], list[bool]]:
    """Rank of each partner (ties against it) and same-id hits among the top k, by loops."""
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    c = candidates / np.linalg.norm(candidates, axis=1, keepdims=True)
    ranks, hits = [], []
    for i in range(len(q)):
        scores = [float(q[i] @ c[j]) for j in range(len(c))]
        own = scores[i]
        ranks.append(1 + sum(1 for j, s in enumerate(scores) if j != i and s >= own))
        order = sorted(range(len(c)), key=lambda j: -scores[j])[:k]
        hits.append(any(ids[j] == ids[i] for j in order))
    return ranks, hits


def test_ranks_recall_median_and_same_findings_match_brute_force():
    rng = np.random.default_rng(0)
    images = rng.normal(size=(40, 6)).astype(np.float32)
    reports = (images + rng.normal(scale=1.5, size=images.shape)).astype(np.float32)
    reports[5] = reports[6]  # a duplicate report: ties count against the query
    ids = rng.integers(0, 4, 40).tolist()
    ranks, hits = _brute_force(images, reports, ids, 5)
    got = partner_ranks(torch.from_numpy(images), torch.from_numpy(reports))
    assert got.tolist() == ranks
    assert same_label_hits(torch.from_numpy(images), torch.from_numpy(reports), ids, [5])[5].tolist() == hits
    sets = [frozenset({f"c{i}"}) for i in ids]
    report = retrieval_report(torch.from_numpy(images), torch.from_numpy(reports), sets, bootstrap=200, seed=1)
    i2t = report["image_to_report"]
    assert i2t["R@5"]["value"] == pytest.approx(np.mean(np.array(ranks) <= 5))
    assert i2t["median_rank"]["value"] == pytest.approx(np.median(ranks))
    assert i2t["same_findings_R@5"]["value"] == pytest.approx(np.mean(hits))
    assert i2t["same_findings_R@5"]["value"] >= i2t["R@5"]["value"]
    low, high = i2t["R@5"]["ci95"]
    assert low <= i2t["R@5"]["value"] <= high and low < high
    assert report["chance"]["R@5"] == pytest.approx(5 / 40)
    t2i_ranks, _ = _brute_force(reports, images, ids, 5)
    assert report["report_to_image"]["R@1"]["value"] == pytest.approx(np.mean(np.array(t2i_ranks) <= 1))


def test_5x200_sampler_is_reproducible_and_keeps_single_finding_studies():
    classes = list(CHEXPERT_5) + ["No Finding"]
    rng = np.random.default_rng(3)
    labels = rng.choice([1.0, 0.0, -1.0, np.nan], p=[0.2, 0.5, 0.1, 0.2], size=(600, len(classes)))
    first, names = sample_per_class(labels, classes, CHEXPERT_5, per_class=20, seed=7)
    again, names_again = sample_per_class(labels, classes, CHEXPERT_5, per_class=20, seed=7)
    other, _ = sample_per_class(labels, classes, CHEXPERT_5, per_class=20, seed=8)
    assert first.tolist() == again.tolist() and names == names_again and first.tolist() != other.tolist()
    assert len(set(first.tolist())) == len(first)
    for index, name in zip(first, names):
        row = labels[index, :5]
        assert row[CHEXPERT_5.index(name)] == 1 and (row == 1).sum() == 1 and not (row == -1).any()
    # A class with fewer eligible studies gives all of them.
    eligible = [(np.sum(labels[:, :5] == 1, axis=1) == 1) & ~(labels[:, :5] == -1).any(axis=1) & (labels[:, j] == 1) for j in range(5)]
    all_of_them, names = sample_per_class(labels, classes, CHEXPERT_5, per_class=10_000, seed=0)
    assert [names.count(c) for c in CHEXPERT_5] == [int(e.sum()) for e in eligible]
    with pytest.raises(ValueError, match="Edema"):
        sample_per_class(labels[:, :3], classes[:3])


def test_refers_retrieval_end_to_end(pretrain_run, prepared_lists, tmp_path, capsys):
    from refers.crossmodal.retrieval import finding_sets, label_matrix, read_studies
    from refers.engine.dual_encoder_folder import load_dual_encoder

    index = prepared_lists / "MIMIC-CXR" / "train_studies.jsonl"  # the test split of the tiny set has 1 study
    checkpoint = pretrain_run / "checkpoint_4.pth"
    results = tmp_path / "Results_of_fine-tuning"
    out = results / "retrieval" / "MIMIC_train" / "REFERS"
    args = ["retrieval", "--model", str(checkpoint), "--studies", str(index), "--out", str(out), "--bootstrap", "100",
            "--per-class", "3", "--no-progress"]
    assert refers_main.main(args) == 0
    assert "SYNTHETIC image-to-report recall@5" in capsys.readouterr().out
    result = json.loads((out / "retrieval.json").read_text())
    assert result["synthetic"] and (out / "SYNTHETIC.txt").is_file() and "SYNTHETIC" in (out / "retrieval.md").read_text()

    # The oracle: the same embeddings, ranked by brute force.
    studies, classes = read_studies(index, None)
    encoder = load_dual_encoder(checkpoint, device="cpu")
    images = encoder.encode_studies([s.images for s in studies], [s.views for s in studies]).numpy()
    reports = encoder.encode_reports([s.text for s in studies]).numpy()
    ids_of: dict = {}
    ids = [ids_of.setdefault(s, len(ids_of)) for s in finding_sets(label_matrix(studies, classes)[0], classes)]
    ranks, hits = _brute_force(images, reports, ids, 5)
    part = result["all_studies"]
    assert part["n"] == len(studies) == result["studies"]["used"]
    assert part["image_to_report"]["R@5"]["value"] == pytest.approx(np.mean(np.array(ranks) <= 5))
    assert part["image_to_report"]["same_findings_R@5"]["value"] == pytest.approx(np.mean(hits))
    five = result["chexpert_5x200"]
    assert "skipped" in five or sum(five["counts"].values()) == five["n"]

    # refers results shows it; another model into the same folder is refused.
    tables = tmp_path / "tables"
    (results / "NIH_ChestX-ray" / "data1" / "REFERS").mkdir(parents=True)
    (results / "NIH_ChestX-ray" / "data1" / "REFERS" / "Effusion.txt").write_text("0 0.1\n1 0.9\n0 0.3\n1 0.6\n")
    assert refers_main.main(["results", str(results), "--out", str(tables), "--bootstrap", "20", "--no-figures"]) == 0
    summary = (tables / "summary.md").read_text()
    assert "Retrieval" in summary and "MIMIC_train" in summary
    other = tmp_path / "other.pth"
    other.write_bytes(checkpoint.read_bytes() + b"")
    state = torch.load(checkpoint, weights_only=True)
    state["iteration"] = 5
    torch.save(state, other)
    assert refers_main.main([*args[:2], str(other), *args[3:]]) == 2
    assert "retrieval results made with another model" in capsys.readouterr().err


def test_retrieval_usage_errors(pretrain_run, tmp_path, capsys):
    assert refers_main.main(["retrieval", "--model", str(pretrain_run / "checkpoint_4.pth"), "--studies",
                             str(tmp_path / "none.jsonl")]) == 1
    assert "no such study index" in capsys.readouterr().err
    bad = tmp_path / "lists" / "test_studies.jsonl"
    bad.parent.mkdir()
    bad.write_text('{"study_id": "1"}\nnot json\n')
    assert refers_main.main(["retrieval", "--model", str(pretrain_run / "checkpoint_4.pth"), "--studies", str(bad),
                             "--data_root", str(tmp_path), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert "test_studies.jsonl" in err and "Traceback" not in err


def _one_line(err: str, *expected: str) -> None:
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert all(text in err for text in expected), err


@pytest.fixture
def index_copy(prepared_lists, tmp_path):
    """A private copy of the tiny MIMIC study index (these tests edit it) and the flags that find its images."""
    from refers.data.image_roots import image_root_of

    source = prepared_lists / "MIMIC-CXR"
    index = tmp_path / "lists" / "train_studies.jsonl"
    index.parent.mkdir()
    index.write_bytes((source / "train_studies.jsonl").read_bytes())
    return index, ["--data_root", str(image_root_of(source))]


def _edit_line(index, number: int, edit) -> bytes:
    lines = index.read_bytes().split(b"\n")
    lines[number - 1] = edit(lines[number - 1])
    index.write_bytes(b"\n".join(lines))
    return lines[number - 1]


def test_a_bad_index_line_is_one_line_naming_file_and_line(pretrain_run, index_copy, tmp_path, capsys):
    index, roots = index_copy
    args = ["retrieval", "--model", str(pretrain_run / "checkpoint_4.pth"), "--studies", str(index), "--out",
            str(tmp_path / "out"), "--bootstrap", "0", "--no-progress", *roots]
    original = index.read_bytes()
    line = _edit_line(index, 2, lambda raw: raw.replace(b'"text": "', b'"text": "caf\xe9 ', 1))
    column = line.index(b"\xe9") + 1
    assert refers_main.main(args) == 1
    _one_line(capsys.readouterr().err, f"{index}:2: byte 0xe9 at column {column} is not UTF-8")

    index.write_bytes(original)
    record = json.loads(original.split(b"\n")[2])
    assert len(record["labels"]) == 14
    _edit_line(index, 3, lambda raw: json.dumps({**record, "labels": record["labels"][:13]}).encode())
    assert refers_main.main(args) == 1
    _one_line(capsys.readouterr().err, f"{index}:3: 13 labels, expected 14 (as line 1)")
    assert not (tmp_path / "out").exists()


def test_method_device_and_another_index_are_refused_before_any_work(pretrain_run, index_copy, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("REFERS_HOME", str(tmp_path / "project"))  # the default --out, were a check missed
    index, roots = index_copy
    results = tmp_path / "results"
    base = ["retrieval", "--model", str(pretrain_run / "checkpoint_4.pth"), "--studies", str(index), "--bootstrap", "0",
            "--per-class", "2", "--no-progress", *roots]
    for method in ("../../escaped", "a/b", ".."):
        assert refers_main.main([*base, "--method", method]) == 2
        _one_line(capsys.readouterr().err, f"--method {method!r} must be one folder name")
    assert not (tmp_path / "project").exists() and not (tmp_path.parent / "escaped").exists()
    for device in ["cuda:99", "tpu"] + ([] if torch.cuda.is_available() else ["cuda"]):
        assert refers_main.main([*base, "--device", device, "--out", str(results)]) == 2
        _one_line(capsys.readouterr().err, f"--device {device}")
    assert not results.exists()

    assert refers_main.main([*base, "--out", str(results)]) == 0
    before = (results / "retrieval.json").read_bytes()
    index.write_bytes(b"\n".join(index.read_bytes().split(b"\n")[:-2]) + b"\n")  # one study fewer
    capsys.readouterr()
    assert refers_main.main([*base, "--out", str(results)]) == 2
    _one_line(capsys.readouterr().err, "retrieval results made with another study index")
    assert (results / "retrieval.json").read_bytes() == before
    assert refers_main.main([*base, "--out", str(results), "--overwrite"]) == 0
    import hashlib

    assert json.loads((results / "retrieval.json").read_text())["studies"]["sha256"] == hashlib.sha256(index.read_bytes()).hexdigest()


def test_an_index_with_unlabelled_studies_says_the_same_findings_recall_is_not_computed(pretrain_run, index_copy, tmp_path,
                                                                                           capsys, caplog):
    index, roots = index_copy
    lines = index.read_bytes().split(b"\n")
    record = json.loads(lines[1])
    lines[1] = json.dumps({key: value for key, value in record.items() if key != "labels"}).encode()
    index.write_bytes(b"\n".join(lines))
    studies = sum(1 for line in lines if line.strip())
    out = tmp_path / "out"
    args = ["retrieval", "--model", str(pretrain_run / "checkpoint_4.pth"), "--studies", str(index), "--out", str(out),
            "--bootstrap", "0", "--no-progress", *roots]
    with caplog.at_level("WARNING"):
        assert refers_main.main(args) == 0
    reason = f"1 of {studies} studies without CheXpert labels"
    assert any(str(index) in r.getMessage() and reason in r.getMessage() for r in caplog.records), caplog.text
    result = json.loads((out / "retrieval.json").read_text())
    assert result["all_studies"]["same_findings_skipped"] == reason
    assert result["chexpert_5x200"] == {"skipped": reason}
    assert "R@5" in result["all_studies"]["image_to_report"]
    assert not any(key.startswith("same_findings") for key in result["all_studies"]["image_to_report"])
    markdown = (out / "retrieval.md").read_text()
    assert f"Same-findings recall not computed: {reason}." in markdown and f"Not computed: {reason}." in markdown

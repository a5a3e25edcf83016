"""Every ``refers prepare`` command on the synthetic datasets of ``refers synth`` (generated once per session,
tests/shared_data.py).

Expected outputs are computed here from the raw files with the csv module, independently of the code
under test.
"""

from __future__ import annotations

import csv
import gzip
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from refers.cli.prepare import main
from refers.data.dicom import read_dicom_uint8
from refers.data.lists import read_list
from refers.data.mimic_lists import read_study_index
from refers.data.registry import NIH_CLASSES, VINBIG_CLASSES
from refers.prepare import resize
from refers.prepare.common import image_root_of, read_dataset_yaml
from refers.prepare.layout import locate_image
from tests.shared_data import PREPARE_COMMANDS, copy_shared

SPLITS = ("train", "val", "test")
COMMANDS = PREPARE_COMMANDS


@pytest.fixture
def synth(synth_root) -> Path:
    """The session's shared ``refers synth`` output (tests/shared_data.py); read-only."""
    return synth_root


@pytest.fixture
def prepared(prepared_lists) -> Path:
    """Lists of every dataset, made with the defaults plus small image sizes (shared, read-only)."""
    return prepared_lists


def _rows(path: Path) -> list[dict[str, str]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", newline="") as handle:
        return list(csv.DictReader(handle))


def _lists(folder: Path, labels: int) -> dict[str, dict[str, np.ndarray]]:
    return {s: dict(zip((l := read_list(folder / f"{s}.txt", num_labels=labels)).paths, l.labels)) for s in SPLITS}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_command_writes_checked_synthetic_lists(prepared, command, capsys):
    folder = prepared / COMMANDS[command][0]
    info = read_dataset_yaml(folder)
    assert info["synthetic"] is True and info["made_by"]["synthetic"] is True and (folder / "SYNTHETIC.txt").is_file()
    for name, record in info["files"].items():
        assert (folder / name).is_file() and record["sha256"]
    assert main(["check", "--dataset", command, "--lists", str(folder), "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "check: OK" in out and all(f"{s} (" in out for s in SPLITS)


def test_mimic_studies_views_and_sizes(synth, prepared):
    root, lists = synth / "MIMIC-CXR", prepared / "MIMIC-CXR"
    split_of, dicoms = {}, defaultdict(set)
    for row in _rows(root / "mimic-cxr-2.0.0-split.csv.gz"):
        split_of[row["study_id"]] = {"validate": "val"}.get(row["split"], row["split"])
        dicoms[row["study_id"]].add(row["dicom_id"])
    view = {row["dicom_id"]: row["ViewPosition"] for row in _rows(root / "mimic-cxr-2.0.0-metadata.csv.gz")}
    seen = set()
    image_root = image_root_of(lists)
    for split in SPLITS:
        for study in read_study_index(lists / f"{split}_studies.jsonl", image_root):
            seen.add(study.study_id)
            assert split_of[study.study_id] == split and study.text
            assert {p.stem for p in study.images} == dicoms[study.study_id]
            assert study.views == [view[p.stem] for p in study.images]
            for path in study.images:
                assert min(Image.open(path).size) == 40
    assert seen == set(split_of)  # every synthetic study has a report with findings or impression


def test_nih_labels_and_splits_match_the_csv(synth, prepared, tmp_path):
    root, lists = synth / "NIH_ChestX-ray", _lists(prepared / "NIH_ChestX-ray", 14)
    with open(root / "Data_Entry_2017.csv", newline="") as handle:
        rows = list(csv.reader(handle))[1:]
    expected = {r[0]: [float(c in r[1].split("|")) for c in NIH_CLASSES] for r in rows}
    found = {Path(p).name: (p, labels, split) for split in SPLITS for p, labels in lists[split].items()}
    assert set(found) == set(expected)
    for name, (path, labels, _) in found.items():
        assert labels.tolist() == expected[name]
        assert locate_image(root, path) is not None and path.split("/")[0].startswith("images_")
    patients = {s: {Path(p).name.split("_")[0] for p in lists[s]} for s in SPLITS}
    assert not (patients["train"] & patients["val"]) and not (patients["train"] & patients["test"]) and not (patients["val"] & patients["test"])
    out = tmp_path / "nih_official"
    assert main(["nih", "--root", str(root), "--out", str(out), "--split", "official"]) == 0
    assert sorted(Path(p).name for p in _lists(out, 14)["test"]) == sorted((root / "test_list.txt").read_text().split())


def test_vinbig_union_labels_pngs_and_resume(synth, prepared, tmp_path, monkeypatch, capsys):
    root, folder = synth / "VinBigData_Chest_X-ray", prepared / "VinBigData_Chest_X-ray"
    union = defaultdict(set)
    for row in _rows(root / "train.csv"):
        union[row["image_id"]]  # images with only "No finding" rows
        if row["class_name"] != "No finding":
            union[row["image_id"]].add(row["class_name"])
    lists = _lists(folder, 14)
    found = {p: labels for split in SPLITS for p, labels in lists[split].items()}
    assert set(found) == {f"{i}.png" for i in union}
    for path, labels in found.items():
        assert {VINBIG_CLASSES[i] for i in np.flatnonzero(labels)} == union[path[:-4]]
    counts = [len(lists[s]) for s in SPLITS]
    assert abs(counts[0] / sum(counts) - 0.7) < 0.02 and abs(counts[2] / sum(counts) - 0.2) < 0.02
    images = image_root_of(folder)
    name = next(iter(found))
    dicom = read_dicom_uint8(root / "train" / name.replace(".png", ".dicom"))
    png = np.asarray(Image.open(images / name))
    expected = np.asarray(Image.fromarray(dicom).resize(png.shape[::-1], Image.BILINEAR))
    assert png.shape == (round(dicom.shape[0] / 2), round(dicom.shape[1] / 2))
    assert np.abs(png.astype(int) - expected).max() <= 1

    # A run killed half-way, then run again: finished PNGs are kept, the rest written (on a private copy).
    folder, images = tmp_path / "lists", copy_shared(images, tmp_path)
    for path in sorted(images.glob("*.png"))[::2]:
        path.unlink()
    missing = len(sorted(images.glob("*.png")))
    calls = []
    real = resize.save_atomic

    def dying(image, target, quality=95):
        if len(calls) == 3:
            raise KeyboardInterrupt
        calls.append(target)
        real(image, target, quality)

    args = ["vinbig", "--root", str(root), "--out", str(folder), "--images-out", str(images), "--scale", "0.5", "--workers", "1", "--force"]
    monkeypatch.setattr(resize, "save_atomic", dying)
    assert main(args) == 130
    monkeypatch.setattr(resize, "save_atomic", real)
    capsys.readouterr()
    assert main(args) == 0
    kept = missing + 3
    assert f"images kept {kept}, images written {len(found) - kept}" in capsys.readouterr().out


def test_covid_and_shenzhen_follow_the_raw_files(synth, prepared):
    root = synth / "COVID-19_Image_Data_Collection"
    rows = [r for r in _rows(root / "metadata.csv") if r["modality"] == "X-ray"]
    found = {p: l for split in _lists(prepared / "COVID-19_Image_Data_Collection", 2).values() for p, l in split.items()}
    assert found.keys() == {r["filename"] for r in rows}
    assert all(found[r["filename"]].tolist() == ([0, 1] if "COVID-19" in r["finding"] else [1, 0]) for r in rows)
    lists = _lists(prepared / "Shenzhen_Tuberculosis", 2)
    names = sorted(p.name for p in (synth / "Shenzhen_Tuberculosis").rglob("CHNCXR_*.png"))
    assert sorted(p for s in lists.values() for p in s) == names
    assert all(l.tolist() == ([0, 1] if p.endswith("_1.png") else [1, 0]) for s in lists.values() for p, l in s.items())


def test_fractions_on_synthetic_nih(prepared, tmp_path):
    folder = copy_shared(prepared / "NIH_ChestX-ray", tmp_path)  # the fractions are written next to the lists
    assert main(["fractions", "--dataset", "nih", "--lists", str(folder), "--percent", "10", "--seeds", "0", "1"]) == 0
    train = read_list(folder / "train.txt", num_labels=14)
    for seed in (0, 1):
        subset = read_list(folder / f"train_10_seed{seed}.txt", num_labels=14)
        assert set(subset.paths) <= set(train.paths) and len(subset) >= round(len(train) * 0.1)
        assert ((subset.labels.sum(axis=0) > 0) == (train.labels.sum(axis=0) > 0)).all()

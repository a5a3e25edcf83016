"""``refers prepare nih | shenzhen | covid``: labels, class order, patient-disjoint splits, the original's splits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from refers.cli.prepare import main
from refers.data.lists import read_list
from refers.data.registry import NIH_CLASSES
from refers.prepare.layout import locate_image
from refers.prepare.splits import group_split
from tests.prepare_helpers import grey_png, make_covid, make_nih

FINDINGS = ["No Finding", "Cardiomegaly", "Effusion|Mass", "Hernia", "Atelectasis|Pneumothorax"]
SPLITS = ("train", "val", "test")


def _lists(out: Path, labels: int) -> dict[str, dict[str, np.ndarray]]:
    return {s: dict(zip((l := read_list(out / f"{s}.txt", num_labels=labels)).paths, l.labels)) for s in SPLITS}


def _nih_rows(patients: int = 40) -> list[tuple[str, str]]:
    return [(f"{p:08d}_{f:03d}.png", FINDINGS[(p + f) % 5]) for p in range(1, patients + 1) for f in range(p % 3 + 1)]


@pytest.fixture
def nih_root(tmp_path) -> Path:
    root = make_nih(tmp_path / "NIH_ChestX-ray", _nih_rows())
    names = [n for n, _ in _nih_rows()]
    (root / "test_list.txt").write_text("".join(f"{n}\n" for n in names if int(n[:8]) > 30))
    (root / "train_val_list.txt").write_text("".join(f"{n}\n" for n in names if int(n[:8]) <= 30))
    return root


def _assert_patient_disjoint(lists: dict) -> None:
    patients = {s: {Path(p).name.split("_")[0] for p in lists[s]} for s in SPLITS}
    assert not (patients["train"] & patients["val"]) and not (patients["train"] & patients["test"])
    assert not (patients["val"] & patients["test"])


def test_nih_labels_class_order_and_paths(nih_root, tmp_path):
    assert main(["nih", "--root", str(nih_root), "--out", str(tmp_path / "o")]) == 0
    lists = _lists(tmp_path / "o", 14)
    everything = {k: v for split in lists.values() for k, v in split.items()}
    assert len(everything) == len(_nih_rows())
    assert [NIH_CLASSES[i] for i in np.flatnonzero(everything["images_001/00000001_001.png"])] == ["Effusion", "Mass"]
    assert [NIH_CLASSES[i] for i in np.flatnonzero(everything["images_001/00000004_000.png"])] == ["Atelectasis", "Pneumothorax"]
    assert not everything["images_001/00000005_000.png"].any()  # No Finding
    # The list path names the archive folder; the image itself is under images_001/images/.
    assert locate_image(nih_root, "images_001/00000001_001.png") == nih_root / "images_001" / "images" / "00000001_001.png"
    _assert_patient_disjoint(lists)


def test_nih_official_and_original_splits(nih_root, tmp_path):
    assert main(["nih", "--root", str(nih_root), "--out", str(tmp_path / "off"), "--split", "official"]) == 0
    official = _lists(tmp_path / "off", 14)
    assert sorted(Path(p).name for p in official["test"]) == sorted((nih_root / "test_list.txt").read_text().split())
    assert official["val"] and official["train"]
    _assert_patient_disjoint(official)

    # The original's published val/test (here: hand-written ones, CRLF, valid.txt, another folder layout).
    given = tmp_path / "given"
    given.mkdir()
    (given / "valid.txt").write_bytes(b"images_009/00000002_000.png " + b"0 " * 13 + b"0\r\n")
    (given / "test.txt").write_bytes(b"images_009/00000005_000.png " + b"0 " * 13 + b"1\r\n")
    assert main(["nih", "--root", str(nih_root), "--out", str(tmp_path / "orig"), "--split", "original", "--lists", str(given)]) == 0
    original = _lists(tmp_path / "orig", 14)
    assert list(original["val"]) == ["images_001/00000002_000.png"] and list(original["test"]) == ["images_001/00000005_000.png"]
    # Train is every other image, less the other images of the val/test patients (2 each).
    assert len(original["train"]) == len(_nih_rows()) - 2 - 4
    _assert_patient_disjoint(original)
    assert main(["nih", "--root", str(nih_root), "--out", str(tmp_path / "x"), "--split", "original"]) == 2  # a bad flag combination (issue 14: exit 2)


def test_nih_bad_inputs(nih_root, tmp_path, capsys):
    csv_path = nih_root / "Data_Entry_2017.csv"
    (nih_root / "images_001" / "images" / "00000003_000.png").unlink()
    assert main(["nih", "--root", str(nih_root), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert f"({csv_path}:7)" in err and "00000003_000.png" in err and "Traceback" not in err
    assert main(["nih", "--root", str(nih_root), "--out", str(tmp_path / "o"), "--skip-bad-images"]) == 0
    assert main(["nih", "--root", str(nih_root), "--out", str(tmp_path / "o"), "--skip-bad-images"]) == 1  # no --force
    lines = csv_path.read_text().splitlines()
    csv_path.write_text("\n".join([lines[0], lines[1].replace("Cardiomegaly", "Alien"), *lines[2:]]) + "\n")
    assert main(["nih", "--root", str(nih_root), "--out", str(tmp_path / "o2"), "--skip-bad-images"]) == 1
    assert f"{csv_path}:2: unknown finding 'Alien'" in capsys.readouterr().err
    csv_path.write_text("Image Index,Finding Labels\n")
    assert main(["nih", "--root", str(nih_root), "--out", str(tmp_path / "o3")]) == 1
    assert f"{csv_path}:1: missing column 'Patient ID'" in capsys.readouterr().err
    assert main(["nih", "--root", str(nih_root), "--ratios", "1", "-1", "0"]) == 2


def test_group_split_is_patient_disjoint_stratified_and_seeded():
    groups = [f"p{i // 3}" for i in range(600)]
    strata = [int(g[1:]) % 4 == 0 for g in groups]
    split = group_split(groups, (0.7, 0.1, 0.2), seed=3, strata=strata)
    for k in range(3):
        members = {g for g, s in zip(groups, split) if s == k}
        assert all(split[i] == k for i, g in enumerate(groups) if g in members)
    assert np.allclose(np.bincount(split) / 600, [0.7, 0.1, 0.2], atol=0.02)
    for k in range(3):  # each split gets its share of each stratum
        assert abs(np.mean([s for s, x in zip(strata, split) if x == k]) - 0.25) < 0.05
    assert np.array_equal(split, group_split(list(reversed(groups)), (0.7, 0.1, 0.2), 3, list(reversed(strata)))[::-1])
    assert not np.array_equal(split, group_split(groups, (0.7, 0.1, 0.2), 4, strata))


def test_shenzhen_labels_from_file_names_and_original_split(tmp_path):
    root = tmp_path / "Shenzhen_Tuberculosis"
    for i in range(1, 41):
        grey_png(root / "ChinaSet_AllFiles" / "CXR_png" / f"CHNCXR_{i:04d}_{int(i > 20)}.png")
    (root / "ChinaSet_AllFiles" / "ClinicalReadings").mkdir()
    assert main(["shenzhen", "--root", str(root), "--out", str(tmp_path / "o"), "--seed", "1"]) == 0
    lists = _lists(tmp_path / "o", 2)
    for split in SPLITS:
        for name, label in lists[split].items():
            assert label.tolist() == ([0, 1] if name.endswith("_1.png") else [1, 0])
    assert [len(lists[s]) for s in SPLITS] == [28, 4, 8]
    assert [int(sum(v[1] for v in lists[s].values())) for s in SPLITS] == [14, 2, 4]  # stratified
    # --split original reuses existing lists (valid.txt spelling).
    (tmp_path / "o" / "val.txt").rename(tmp_path / "o" / "valid.txt")
    assert main(["shenzhen", "--root", str(root), "--out", str(tmp_path / "again"), "--split", "original", "--lists", str(tmp_path / "o")]) == 0
    assert _lists(tmp_path / "again", 2)["val"].keys() == lists["val"].keys()


def test_covid_xray_only_views_and_patients(tmp_path, capsys):
    rows = []
    for i in range(60):
        finding = ["Pneumonia/Viral/COVID-19", "No Finding", "Pneumonia/Bacterial/Streptococcus"][(i // 2) % 3]
        rows.append((str(i // 2), finding, ["PA", "L", "AP Supine"][i % 3], "CT" if i % 10 == 9 else "X-ray", f"im {i}.jpeg"))
    root = make_covid(tmp_path / "COVID-19_Image_Data_Collection", rows)
    assert main(["covid", "--root", str(root), "--out", str(tmp_path / "all")]) == 0
    everything = {k: v for s in _lists(tmp_path / "all", 2).values() for k, v in s.items()}
    xray = [r for r in rows if r[3] == "X-ray"]
    assert set(everything) == {r[4] for r in xray}  # CT rows left out; names with spaces kept
    assert all(everything[r[4]].tolist() == ([0, 1] if "COVID-19" in r[1] else [1, 0]) for r in xray)
    patient = {r[4]: r[0] for r in rows}
    by_split = {s: {patient[n] for n in names} for s, names in _lists(tmp_path / "all", 2).items()}
    assert not (by_split["train"] & by_split["test"]) and not (by_split["train"] & by_split["val"]) and not (by_split["val"] & by_split["test"])
    assert main(["covid", "--root", str(root), "--out", str(tmp_path / "frontal"), "--views", "frontal"]) == 0
    frontal = {k for s in _lists(tmp_path / "frontal", 2).values() for k in s}
    assert frontal == {r[4] for r in xray if r[2] != "L"}
    (root / "images" / "im 0.jpeg").unlink()
    assert main(["covid", "--root", str(root), "--out", str(tmp_path / "bad")]) == 1
    assert f"({root / 'metadata.csv'}:2)" in capsys.readouterr().err


def test_nih_duplicate_and_unknown_images_name_their_lines(nih_root, tmp_path, capsys):
    from refers.prepare.common import PrepareError
    from refers.prepare.nih import prepare_nih

    test_list = nih_root / "test_list.txt"
    test_list.write_text(test_list.read_text() + "99999999_000.png\n")
    line = len(test_list.read_text().splitlines())
    assert main(["nih", "--root", str(nih_root), "--out", str(tmp_path / "o"), "--split", "official"]) == 1
    assert f"{test_list}:{line}: image 99999999_000.png is not in Data_Entry_2017.csv" in capsys.readouterr().err
    with pytest.raises(PrepareError, match="unknown --split 'bogus'"):
        prepare_nih(nih_root, tmp_path / "o", split="bogus")
    csv_path = nih_root / "Data_Entry_2017.csv"
    lines = csv_path.read_text().splitlines()
    csv_path.write_text("\n".join([*lines, lines[3]]) + "\n")
    assert main(["nih", "--root", str(nih_root), "--out", str(tmp_path / "o")]) == 1
    name = lines[3].split(",")[0]
    assert f"{csv_path}:{len(lines) + 1}: image {name} listed twice (first on line 4)" in capsys.readouterr().err
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").glob("*.txt"))

"""``--split original`` keeps the published lines; the real metadata revisions each dataset ships.

The published lists define the benchmark: they are written line for line (order, text, labels, line
ends); where the metadata's labels differ the published ones are kept, counted and written to
``label_differences.tsv``. The metadata files are built here in each real revision's format.
"""

from __future__ import annotations

import csv
import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

from refers.cli.prepare import main
from refers.data.registry import NIH_CLASSES, VINBIG_CLASSES
from refers.prepare.common import read_dataset_yaml
from refers.prepare.resize import ResizeSpec
from tests.conftest import require_shared
from tests.prepare_helpers import grey_png, make_covid, make_vinbig_csv, nih_metadata, vindr_labels, write_dicom

SPLITS = ("train", "val", "test")
FINDINGS = ["No Finding", "Cardiomegaly", "Effusion|Mass", "Hernia", "Pneumonia"]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _nih_line(path: str, findings: str) -> str:
    labels = ["1" if c in findings.split("|") else "0" for c in NIH_CLASSES]
    return " ".join([path, *labels])


# --------------------------------------------------------------------------- NIH


def _nih_rows() -> list[tuple[str, str]]:
    """24 patients with 1-2 images each, in CSV order."""
    return [(f"{p:08d}_{f:03d}.png", FINDINGS[(p + f) % 5]) for p in range(1, 25) for f in range(1 + p % 2)]


def _nih_download(root: Path, revision: str, gz: bool = False, rows=None) -> Path:
    rows = rows or _nih_rows()
    for name, _ in rows:
        grey_png(root / "images_001" / "images" / name)
    return nih_metadata(root, rows, revision, gz)


def _published_nih(folder: Path) -> dict[str, list[tuple[str, str]]]:
    """val: patients 20, 3, 11 (out of CSV order), test: 24, 7, 1; one published label differs."""
    rows = dict(_nih_rows())
    chosen = {"val": [20, 3, 11], "test": [24, 7, 1]}
    lines = {}
    for split, patients in chosen.items():
        names = [n for p in patients for n in sorted(rows) if n.startswith(f"{p:08d}_")][::-1]
        lines[split] = [(n, rows[n]) for n in names]
    name, findings = lines["val"][-1]
    lines["val"][-1] = (name, "No Finding" if findings != "No Finding" else "Hernia")
    folder.mkdir(parents=True, exist_ok=True)
    for split, entries in lines.items():
        (folder / f"{split}.txt").write_text("".join(_nih_line(f"images_001/{n}", f) + "\n" for n, f in entries))
    return lines


@pytest.mark.parametrize("revision,gz", [("2017", False), ("2017", True), ("2020", False)])
def test_nih_original_keeps_the_published_lines(tmp_path, capsys, revision, gz):
    root = tmp_path / "NIH_ChestX-ray"
    csv_path = _nih_download(root, revision, gz)
    published = _published_nih(tmp_path / "published")
    out = tmp_path / "lists"
    assert main(["nih", "--root", str(root), "--out", str(out), "--split", "original", "--lists", str(tmp_path / "published"),
                 "--short-side", "0"]) == 0
    stdout = capsys.readouterr().out
    for split in ("val", "test"):  # line for line as published, byte for byte
        assert (out / f"{split}.txt").read_bytes() == (tmp_path / "published" / f"{split}.txt").read_bytes()
    # The one differing label: counted, said, and written class by class.
    assert f"1 published labels differ from {csv_path}; kept the published ones" in stdout
    name, kept = published["val"][-1]
    metadata = dict(_nih_rows())[name]
    line = len(published["val"])
    expected = [["split", "line", "image", "class", "published", "metadata"]]
    for c, cls in enumerate(NIH_CLASSES):
        p, m = int(cls in kept.split("|")), int(cls in metadata.split("|"))
        if p != m:
            expected.append(["val", str(line), f"images_001/{name}", cls, str(p), str(m)])
    with open(out / "label_differences.tsv", newline="") as handle:
        assert list(csv.reader(handle, delimiter="\t")) == expected
    # Train: every other image in metadata order, less the other images of val/test patients (none here:
    # the published lists hold all of their patients' images).
    held = {n for entries in published.values() for n, _ in entries}
    assert (out / "train.txt").read_text().splitlines() == [
        _nih_line(f"images_001/{n}", f) for n, f in _nih_rows() if n not in held]
    info = read_dataset_yaml(out)
    assert info["metadata"] == {"file": str(csv_path), "name": csv_path.name, "sha256": _sha(csv_path)}
    assert info["made_by"]["sources"][str(csv_path)] == _sha(csv_path)


def test_nih_labels_metadata_takes_the_metadata_labels(tmp_path, capsys):
    root = tmp_path / "NIH_ChestX-ray"
    csv_path = _nih_download(root, "2020")
    published = _published_nih(tmp_path / "published")
    out = tmp_path / "lists"
    assert main(["nih", "--root", str(root), "--out", str(out), "--split", "original", "--lists", str(tmp_path / "published"),
                 "--short-side", "0", "--labels", "metadata"]) == 0
    assert f"1 published labels differ from {csv_path}; took the metadata's (--labels metadata)" in capsys.readouterr().out
    rows = dict(_nih_rows())
    assert (out / "val.txt").read_text().splitlines() == [_nih_line(f"images_001/{n}", rows[n]) for n, _ in published["val"]]
    assert (out / "test.txt").read_bytes() == (tmp_path / "published" / "test.txt").read_bytes()
    assert len((out / "label_differences.tsv").read_text().splitlines()) > 1
    assert read_dataset_yaml(out)["made_by"]["options"]["labels"] == "metadata"
    # --labels is for --split original only: a bad flag.
    assert main(["nih", "--root", str(root), "--out", str(tmp_path / "x"), "--labels", "metadata"]) == 2


def test_nih_both_revisions_present_reads_v2020_and_metadata_chooses(tmp_path, capsys):
    root = tmp_path / "NIH_ChestX-ray"
    old = _nih_download(root, "2017")
    revised = [(n, "Hernia" if n == "00000002_000.png" else f) for n, f in _nih_rows()]  # 2020 revised one label
    new = nih_metadata(root, revised, "2020")
    assert main(["nih", "--root", str(root), "--out", str(tmp_path / "a"), "--short-side", "0"]) == 0
    stdout = capsys.readouterr().out
    assert "found Data_Entry_2017_v2020.csv and Data_Entry_2017.csv: read Data_Entry_2017_v2020.csv, the current revision" in stdout
    assert read_dataset_yaml(tmp_path / "a")["metadata"]["sha256"] == _sha(new)
    everything = {line.split()[0]: line.split()[1:] for s in SPLITS for line in (tmp_path / "a" / f"{s}.txt").read_text().splitlines()}
    assert everything["images_001/00000002_000.png"][NIH_CLASSES.index("Hernia")] == "1"
    # --metadata picks the other one (a name under --root, or a path).
    for chosen in ("Data_Entry_2017.csv", str(old)):
        out = tmp_path / f"b{len(chosen)}"
        assert main(["nih", "--root", str(root), "--out", str(out), "--short-side", "0", "--metadata", chosen]) == 0
        assert "current revision" not in capsys.readouterr().out
        assert read_dataset_yaml(out)["metadata"] == {"file": str(old), "name": old.name, "sha256": _sha(old)}
    assert main(["nih", "--root", str(root), "--out", str(tmp_path / "c"), "--metadata", "Data_Entry_2016.csv"]) == 1
    err = capsys.readouterr().err
    assert "--metadata Data_Entry_2016.csv not found" in err and len(err.strip().splitlines()) == 1
    # Neither revision: both names in one line.
    old.unlink(), new.unlink()
    assert main(["nih", "--root", str(root), "--out", str(tmp_path / "d")]) == 1
    err = capsys.readouterr().err
    assert "Data_Entry_2017_v2020.csv or" in err and "Data_Entry_2017.csv not found" in err and "Traceback" not in err


def test_nih_published_line_not_in_the_metadata_names_the_file_and_line(tmp_path, capsys):
    root = tmp_path / "NIH_ChestX-ray"
    csv_path = _nih_download(root, "2020")
    _published_nih(tmp_path / "published")
    with open(tmp_path / "published" / "test.txt", "a") as handle:
        handle.write(_nih_line("images_001/00000099_000.png", "Hernia") + "\n")
    assert main(["nih", "--root", str(root), "--out", str(tmp_path / "o"), "--split", "original",
                 "--lists", str(tmp_path / "published")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.endswith(f"{tmp_path / 'published' / 'test.txt'}:6: image 00000099_000.png is not in the dataset")
    assert len(err.splitlines()) == 1 and not (tmp_path / "o" / "val.txt").exists()
    assert csv_path.is_file()


# --------------------------------------------------------------------------- VinBigData

IDS = [f"{i:032x}" for i in range(1, 10)]


def _vinbig_images(root: Path, ids) -> None:
    """One tiny DICOM, hard-linked under every image id (fast, and each file is a real DICOM)."""
    first = write_dicom(root / "train" / "first.dicom", (np.arange(64, dtype=np.uint16).reshape(8, 8) * 60))
    for image in ids:
        os.link(first, root / "train" / f"{image}.dicom")
    first.unlink()


def _vinbig_line(image: str, classes: list[str]) -> str:
    return " ".join([f"{image}.png", *("1.0" if c in classes else "0.0" for c in VINBIG_CLASSES)])


def _published_vinbig(folder: Path, truth: dict[str, list[str]]) -> dict[str, list[str]]:
    """train/val/test in an order unlike the metadata's; written with their own labels."""
    order = {"train": IDS[8:2:-1], "val": [IDS[1], IDS[0]], "test": [IDS[2]]}
    folder.mkdir(parents=True, exist_ok=True)
    for split, ids in order.items():
        (folder / f"{split}.txt").write_text("".join(_vinbig_line(i, truth[i]) + "\n" for i in ids))
    return order


TRUTH = {image: [VINBIG_CLASSES[k % 14] for k in range(i % 3)] for i, image in enumerate(IDS)}


@pytest.mark.parametrize("layout", ["kaggle", "vindr"])
def test_vinbig_original_reproduces_the_given_lists(tmp_path, capsys, layout):
    root = tmp_path / "VinBigData_Chest_X-ray"
    _vinbig_images(root, IDS)
    if layout == "kaggle":
        label_file = make_vinbig_csv(root, [(i, c, "R1") for i in IDS for c in (TRUTH[i] or ["No finding"])]
                                     + [(i, "No finding", "R2") for i in IDS])
    else:
        label_file = vindr_labels(root, [(i, r, TRUTH[i] if r == "R1" else []) for i in IDS for r in ("R1", "R2", "R3")])
    published = tmp_path / "published"
    _published_vinbig(published, TRUTH)
    out = tmp_path / "lists"
    assert main(["vinbig", "--root", str(root), "--out", str(out), "--images-out", str(tmp_path / "png"),
                 "--split", "original", "--lists", str(published), "--workers", "1"]) == 0
    for split in SPLITS:
        assert (out / f"{split}.txt").read_bytes() == (published / f"{split}.txt").read_bytes()
    assert "published labels differ" not in capsys.readouterr().out and not (out / "label_differences.tsv").exists()
    assert sorted(p.name for p in (tmp_path / "png").glob("*.png")) == sorted(f"{i}.png" for i in IDS)
    info = read_dataset_yaml(out)
    assert info["metadata"] == {"file": str(label_file), "name": label_file.name, "sha256": _sha(label_file)}
    assert info["split"] == "original" and info["splits"]["val"]["images"] == 2


def test_vinbig_original_keeps_published_labels_and_says_where_they_differ(tmp_path, capsys):
    root = tmp_path / "VinBigData_Chest_X-ray"
    _vinbig_images(root, IDS)
    csv_path = make_vinbig_csv(root, [(i, c, "R1") for i in IDS for c in (TRUTH[i] or ["No finding"])])
    published = tmp_path / "published"
    _published_vinbig(published, {**TRUTH, IDS[0]: ["Cardiomegaly"]})  # the metadata says IDS[0] has no finding
    out = tmp_path / "lists"
    args = ["vinbig", "--root", str(root), "--images-out", str(tmp_path / "png"), "--split", "original", "--lists", str(published)]
    assert main([*args, "--out", str(out)]) == 0
    assert f"1 published labels differ from {csv_path}; kept the published ones" in capsys.readouterr().out
    for split in SPLITS:
        assert (out / f"{split}.txt").read_bytes() == (published / f"{split}.txt").read_bytes()
    assert (out / "label_differences.tsv").read_text().splitlines() == [
        "split\tline\timage\tclass\tpublished\tmetadata", f"val\t2\t{IDS[0]}.png\tCardiomegaly\t1.0\t0.0"]
    assert main([*args, "--out", str(tmp_path / "m"), "--labels", "metadata"]) == 0
    assert (tmp_path / "m" / "val.txt").read_text().splitlines()[1] == _vinbig_line(IDS[0], [])
    # Bad flags exit 2, bad data 1, each in one line naming the file and line.
    assert main([*args[:-2], "--out", str(tmp_path / "x")]) == 2
    assert "--split original needs --lists DIR" in capsys.readouterr().err
    (published / "test.txt").write_text(_vinbig_line("f" * 32, []) + "\n")
    assert main([*args, "--out", str(tmp_path / "y")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.endswith(f"{published / 'test.txt'}:1: image {'f' * 32}.png is not in the dataset") and len(err.splitlines()) == 1


def test_vindr_label_that_is_not_0_or_1_names_file_and_line(tmp_path, capsys):
    root = tmp_path / "VinBigData_Chest_X-ray"
    _vinbig_images(root, IDS[:2])
    path = vindr_labels(root, [(i, "R1", []) for i in IDS[:2]])
    lines = path.read_text().splitlines()
    lines[2] = lines[2].replace(",R1,0,", ",R1,2,", 1)
    path.write_text("\n".join(lines) + "\n")
    assert main(["vinbig", "--root", str(root), "--out", str(tmp_path / "o"), "--images-out", str(tmp_path / "png")]) == 1
    assert f"{path}:3: Aortic enlargement is '2', expected 0 or 1" in capsys.readouterr().err


@pytest.mark.slow  # 15,000 lines and images (about 10 s)
def test_vinbig_original_on_the_real_published_lists(tmp_path):
    """The original's 15,000 lines, rebuilt from a synthetic download made of their image ids and labels."""
    published = require_shared("original-DataProcessed/VinBigData_Chest_X-ray")
    rows, ids = [], []
    for split in SPLITS:
        for line in (published / f"{split}.txt").read_text().splitlines():
            name, *labels = line.split()
            image = name[: -len(".png")]
            ids.append(image)
            marked = [c for c, v in zip(VINBIG_CLASSES, labels) if float(v)]
            rows += [(image, c, "R1") for c in marked or ["No finding"]]
    root = tmp_path / "VinBigData_Chest_X-ray"
    _vinbig_images(root, ids[::-1])
    make_vinbig_csv(root, rows[::-1])  # the metadata in another order than the lists
    # A re-run: the PNGs are there already (converting 15,000 DICOMs is tested small elsewhere; here, the lists).
    png = grey_png(tmp_path / "png" / "first.png", size=ResizeSpec(scale=0.25).target(8, 8))
    for image in ids:
        os.link(png, tmp_path / "png" / f"{image}.png")
    png.unlink()
    out = tmp_path / "lists"
    assert main(["vinbig", "--root", str(root), "--out", str(out), "--images-out", str(tmp_path / "png"),
                 "--split", "original", "--lists", str(published), "--workers", "2"]) == 0
    for split in SPLITS:
        assert _sha(out / f"{split}.txt") == _sha(published / f"{split}.txt")
    assert [read_dataset_yaml(out)["splits"][s]["images"] for s in SPLITS] == [10500, 1500, 3000]


# --------------------------------------------------------------------------- COVID-19 and Shenzhen


@pytest.mark.parametrize("findings", ["flat", "hierarchical"])
def test_covid_original_keeps_the_published_lines(tmp_path, capsys, findings):
    covid, other = ("COVID-19", "Streptococcus") if findings == "flat" else ("Pneumonia/Viral/COVID-19", "Pneumonia/Bacterial/Streptococcus")
    rows = [(str(i // 2), [covid, other, "No Finding", "COVID-19, ARDS" if findings == "flat" else covid][i % 4], "PA", "X-ray",
             f"im-{i}.jpeg") for i in range(16)]
    root = make_covid(tmp_path / "COVID-19_Image_Data_Collection", rows)
    truth = {name: "COVID-19" in finding for _, finding, _, _, name in rows}
    published = tmp_path / "published"
    published.mkdir()
    order = {"train": [f"im-{i}.jpeg" for i in (11, 10, 9, 8, 7, 6, 5, 4, 3, 2)], "val": ["im-1.jpeg", "im-0.jpeg"],
             "test": ["im-13.jpeg", "im-12.jpeg"]}
    for split, names in order.items():  # CRLF, like the original's COVID-19 lists
        (published / f"{split}.txt").write_bytes(b"".join(f"{n} {int(not truth[n])} {int(truth[n])}\r\n".encode() for n in names))
    out = tmp_path / "lists"
    assert main(["covid", "--root", str(root), "--out", str(out), "--split", "original", "--lists", str(published)]) == 0
    for split in SPLITS:
        assert (out / f"{split}.txt").read_bytes() == (published / f"{split}.txt").read_bytes()
    stdout = capsys.readouterr().out
    assert "published labels differ" not in stdout and "2 images are in none of the lists" in stdout
    csv_path = root / "metadata.csv"
    assert read_dataset_yaml(out)["metadata"]["sha256"] == _sha(csv_path)
    assert read_dataset_yaml(out)["splits"]["train"]["covid"] == sum(truth[n] for n in order["train"])


def test_shenzhen_original_keeps_the_published_lines(tmp_path, capsys):
    root = tmp_path / "Shenzhen_Tuberculosis"
    names = [f"CHNCXR_{i:04d}_{int(i > 6)}.png" for i in range(1, 11)]
    for name in names:
        grey_png(root / "ChinaSet_AllFiles" / "CXR_png" / name)
    published = tmp_path / "published"
    published.mkdir()
    lines = {"train": names[7:1:-1], "valid": names[:1], "test": names[1:2]}
    for split, chosen in lines.items():
        text = "".join(f"{n} {1 - int(n[-5])} {n[-5]}\n" for n in chosen)
        (published / f"{split}.txt").write_text(text.replace(f"{names[2]} 1 0", f"{names[2]} 0 1"))  # a label that differs
    out = tmp_path / "lists"
    assert main(["shenzhen", "--root", str(root), "--out", str(out), "--split", "original", "--lists", str(published)]) == 0
    assert (out / "val.txt").read_bytes() == (published / "valid.txt").read_bytes()
    for split in ("train", "test"):
        assert (out / f"{split}.txt").read_bytes() == (published / f"{split}.txt").read_bytes()
    stdout = capsys.readouterr().out
    assert "1 published labels differ from the file names in" in stdout and "2 images are in none of the lists" in stdout
    assert (out / "label_differences.tsv").read_text().splitlines()[1:] == [
        f"train\t6\t{names[2]}\tnormal\t0\t1", f"train\t6\t{names[2]}\ttuberculosis\t1\t0"]


def _linked_images(folder: Path, names) -> None:
    first = grey_png(folder / "first.png", size=(8, 8))
    for name in names:
        os.link(first, folder / name)
    first.unlink()


def test_shenzhen_and_covid_original_on_the_real_published_lists(tmp_path, capsys):
    """The original's Shenzhen and COVID-19 lists, rebuilt line for line from downloads made of their names."""
    shenzhen = require_shared("original-DataProcessed/Shenzhen_Tuberculosis")
    names = [line.split()[0] for s in ("train", "valid", "test") for line in (shenzhen / f"{s}.txt").read_text().splitlines()]
    root = tmp_path / "Shenzhen_Tuberculosis"
    _linked_images(root / "ChinaSet_AllFiles" / "CXR_png", names)
    assert main(["shenzhen", "--root", str(root), "--out", str(tmp_path / "sz"), "--split", "original", "--lists", str(shenzhen)]) == 0
    for ours, theirs in (("train", "train"), ("val", "valid"), ("test", "test")):
        assert _sha(tmp_path / "sz" / f"{ours}.txt") == _sha(shenzhen / f"{theirs}.txt")

    covid = require_shared("original-DataProcessed/COVID-19_Image_Data_Collection")
    rows = []
    for split in SPLITS:
        for line in (covid / f"{split}.txt").read_text().splitlines():
            *name, _, positive = line.split()
            rows.append((str(len(rows)), "Pneumonia/Viral/COVID-19" if positive == "1" else "No Finding", "PA", "X-ray", " ".join(name)))
    root = tmp_path / "COVID-19_Image_Data_Collection"
    make_covid(root, rows[::-1])
    assert main(["covid", "--root", str(root), "--out", str(tmp_path / "cv"), "--split", "original", "--lists", str(covid)]) == 0
    for split in SPLITS:  # CRLF as published
        assert _sha(tmp_path / "cv" / f"{split}.txt") == _sha(covid / f"{split}.txt")
    assert "published labels differ" not in capsys.readouterr().out


@pytest.mark.slow  # 33,652 lines and images (about 10 s)
def test_nih_original_on_the_real_published_lists(tmp_path, capsys):
    """The original's 33,652 val/test lines, written line for line from a 2020-format metadata of their images."""
    published = require_shared("original-DataProcessed/NIH_ChestX-ray")
    root = tmp_path / "NIH_ChestX-ray"
    first = grey_png(root / "first.png", size=(8, 8))
    rows = []
    for split in ("test", "val"):
        for line in (published / f"{split}.txt").read_text().splitlines():
            path, *labels = line.split()
            folder, name = path.split("/")
            (root / folder / "images").mkdir(parents=True, exist_ok=True)
            os.link(first, root / folder / "images" / name)
            rows.append((name, "|".join(c for c, v in zip(NIH_CLASSES, labels) if v == "1") or "No Finding"))
    extra = [(f"{99990000 + k:08d}_000.png", "Hernia") for k in range(3)]  # train: patients in no published list
    for name, _ in extra:
        os.link(first, root / "images_001" / "images" / name)
    first.unlink()
    flipped = rows[5][0]  # the 2020 revision relabelled one published image
    csv_path = nih_metadata(root, sorted(rows + extra, key=lambda row: row[0])[::-1], "2020")  # not the lists' order
    text = csv_path.read_text().replace(f"{flipped},{dict(rows)[flipped]},", f"{flipped},Hernia|Mass,")
    csv_path.write_text(text)
    out = tmp_path / "lists"
    assert main(["nih", "--root", str(root), "--out", str(out), "--split", "original", "--lists", str(published),
                 "--short-side", "0"]) == 0
    for split in ("val", "test"):
        assert _sha(out / f"{split}.txt") == _sha(published / f"{split}.txt")
    assert f"1 published labels differ from {csv_path}; kept the published ones" in capsys.readouterr().out
    assert (out / "train.txt").read_text().splitlines() == [_nih_line(f"images_001/{n}", f) for n, f in extra[::-1]]

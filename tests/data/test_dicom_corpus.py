"""``refers prepare vinbig`` on a real DICOM corpus: the test files pydicom ships inside its package.

They are what hospitals and VinBigData ship and worse: CT/MR/NM images, big-endian, deflated, RLE,
JPEG baseline/extended/lossless, JPEG-LS, JPEG 2000, colour, multi-frame, structured reports, a
truncated file. They are read straight from the package folder (pydicom's downloader of further
files is never used). The oracle of "can be converted" is pydicom itself: a single-frame greyscale
data set whose ``pixel_array`` decodes.
"""

from __future__ import annotations

import csv
import importlib.metadata
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pydicom = pytest.importorskip("pydicom")

from refers.cli.prepare import main  # noqa: E402
from refers.data.dicom import REASONS  # noqa: E402
from refers.data.lists import read_list  # noqa: E402

CORPUS = Path(pydicom.__file__).parent / "data" / "test_files"


def decodable_greyscale(path: Path) -> bool:
    """The oracle: pydicom reads one greyscale frame from the file."""
    try:
        dataset = pydicom.dcmread(path)
    except pydicom.errors.InvalidDicomError:
        try:
            dataset = pydicom.dcmread(path, force=True)
        except Exception:
            return False
    try:
        if str(dataset.PhotometricInterpretation) not in ("MONOCHROME1", "MONOCHROME2"):
            return False
        if int(dataset.get("NumberOfFrames", 1) or 1) != 1 or int(dataset.get("SamplesPerPixel", 1)) != 1:
            return False
        return dataset.pixel_array.ndim == 2
    except Exception:
        return False


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, set[str], set[str]]:
    """The corpus laid out as a VinBigData download; (root, convertible ids, the other ids)."""
    files = sorted(CORPUS.glob("*.dcm"))
    if len(files) < 40:
        pytest.skip(f"pydicom's bundled test files are not all there ({len(files)} in {CORPUS})")
    root = tmp_path_factory.mktemp("vinbig") / "VinBigData_Chest_X-ray"
    (root / "train").mkdir(parents=True)
    ids = []
    for path in files:
        image_id = re.sub(r"[^A-Za-z0-9_-]", "_", path.stem)
        shutil.copyfile(path, root / "train" / f"{image_id}.dicom")
        ids.append(image_id)
    with open(root / "train.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image_id", "class_name", "class_id", "rad_id", "x_min", "y_min", "x_max", "y_max"])
        writer.writerows([image_id, "No finding", 14, "R1", "", "", "", ""] for image_id in ids)
    good = {i for i in ids if decodable_greyscale(root / "train" / f"{i}.dicom")}
    assert 15 <= len(good) <= len(ids) - 15, "the corpus should hold both kinds"
    return root, good, set(ids) - good


def _installed(package: str) -> bool:
    try:
        importlib.metadata.version(package)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


def _list_ids(out: Path) -> list[str]:
    return [Path(p).stem for split in ("train", "val", "test") for p in read_list(out / f"{split}.txt", num_labels=14).paths]


def test_every_convertible_file_is_converted_and_every_other_named(corpus, tmp_path, capsys):
    root, good, bad = corpus
    out, images = tmp_path / "lists", tmp_path / "prepared"
    argv = ["vinbig", "--root", str(root), "--out", str(out), "--images-out", str(images), "--max-size", "64", "--workers", "2"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"{len(bad)} image(s) gave no output" in err and "--skip-bad-images" in err
    for package in re.findall(r"pip install ([\w .-]+?)(?:[;)\n]|$)", err):
        assert not all(_installed(name) for name in package.split()), f"advised to install installed {package!r}"
    assert {p.stem for p in images.glob("*.png")} == good  # converted all the rest before stopping
    assert not (out / "train.txt").exists()  # no lists while files are unaccounted for

    with open(out / "conversion_failures.tsv", newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    assert {Path(r["file"]).stem for r in rows} == bad
    assert {r["reason"] for r in rows} <= set(REASONS) and all(r["what to do"] for r in rows)
    reasons = {Path(r["file"]).stem: r["reason"] for r in rows}
    assert reasons["MR_truncated"] == "corrupt or truncated"
    assert reasons["rtplan"] == reasons["SC_rgb_rle_2frame"] == reasons["examples_rgb_color"] == "not a greyscale radiograph"

    # Each converted file is the 8-bit picture of its pixels (same ordering of values; MONOCHROME2 here).
    ct = pydicom.dcmread(root / "train" / "CT_small.dicom").pixel_array.astype(float)
    png = np.asarray(Image.open(images / "CT_small.png"), dtype=float)
    assert png.shape == (64, 64) and np.corrcoef(png.ravel(), np.asarray(Image.fromarray(ct).resize((64, 64))).ravel())[0, 1] > 0.95


def test_skip_bad_images_keeps_only_converted_images_and_reruns_convert_nothing_again(corpus, tmp_path, capsys):
    root, good, bad = corpus
    out, images = tmp_path / "lists", tmp_path / "prepared"
    argv = ["vinbig", "--root", str(root), "--out", str(out), "--images-out", str(images), "--max-size", "64", "--workers", "2",
            "--skip-bad-images"]
    assert main(argv) == 0
    printed = capsys.readouterr()
    assert sorted(_list_ids(out)) == sorted(good)
    assert f"left out {len(bad)} image(s)" in printed.out and "Traceback" not in printed.err
    assert len((out / "conversion_failures.tsv").read_text().splitlines()) == len(bad) + 1
    assert main([*argv, "--force"]) == 0
    assert f"images kept {len(good)}" in capsys.readouterr().out  # the re-run converts only what is missing

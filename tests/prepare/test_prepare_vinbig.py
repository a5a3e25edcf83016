"""DICOM reading (windowing, MONOCHROME1, compression, errors) and ``refers prepare vinbig``."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.prepare_helpers import make_vinbig_csv, write_dicom
from refers.cli.prepare import main
from refers.data.dicom import DicomError, MissingDicomDecoder, read_dicom_uint8
from refers.base.errors import UnreadableImageError
from refers.data.lists import read_list
from refers.data.registry import VINBIG_CLASSES

RAMP = np.tile(np.arange(0, 4000, 100, dtype=np.uint16), (30, 1))  # [30, 40], 0 .. 3900


def test_monochrome1_is_inverted_and_scaled_to_8_bits(tmp_path):
    plain = read_dicom_uint8(write_dicom(tmp_path / "m2.dicom", RAMP))
    inverted = read_dicom_uint8(write_dicom(tmp_path / "m1.dicom", RAMP, photometric="MONOCHROME1"))
    assert plain.dtype == np.uint8 and plain.shape == (30, 40)
    expected = np.round(RAMP / 3900 * 255).astype(np.uint8)
    np.testing.assert_array_equal(plain, expected)
    np.testing.assert_array_equal(inverted, 255 - expected)


def test_window_is_applied(tmp_path):
    image = read_dicom_uint8(write_dicom(tmp_path / "w.dicom", RAMP, window=(2000, 1000)))[0]
    values = RAMP[0]
    assert (image[values <= 1400] == 0).all() and (image[values >= 2600] == 255).all()
    inside = (values > 1600) & (values < 2400)
    assert (np.diff(image[inside].astype(int)) > 0).all()  # linear ramp inside the window
    assert abs(int(image[values == 2000][0]) - 128) <= 3


@pytest.mark.parametrize("compress", ["rle", "jpegls"])
def test_compressed_transfer_syntaxes(tmp_path, compress):
    if compress == "jpegls" and importlib.util.find_spec("jpeg_ls") is None:
        pytest.skip("pyjpegls not installed")
    plain = read_dicom_uint8(write_dicom(tmp_path / "p.dicom", RAMP))
    np.testing.assert_array_equal(read_dicom_uint8(write_dicom(tmp_path / "c.dicom", RAMP, compress=compress)), plain)


def test_missing_decoder_only_when_the_decoder_is_really_absent(monkeypatch):
    """A decoder pydicom reports unavailable is named with its package; an installed one that fails is not."""
    import pydicom.pixels

    corpus = Path(pydicom.__file__).parent / "data" / "test_files"
    real = pydicom.pixels.get_decoder

    class Unavailable:
        is_available = False

    def without_jpeg2000(uid):
        return Unavailable() if str(uid).startswith("1.2.840.10008.1.2.4.9") else real(uid)

    lossy = corpus / "JPEG-lossy.dcm"  # JPEG extended, whose decoder is installed, but the data fail
    with pytest.raises(DicomError) as failed:
        read_dicom_uint8(lossy)
    assert failed.value.reason == "corrupt or truncated" and "pip install" not in str(failed.value)
    monkeypatch.setattr(pydicom.pixels, "get_decoder", without_jpeg2000)
    with pytest.raises(MissingDicomDecoder, match="pip install pylibjpeg pylibjpeg-openjpeg") as missing:
        read_dicom_uint8(corpus / "JPEG2000.dcm")
    assert missing.value.reason == "missing decoder" and "JPEG2000.dcm" in str(missing.value)


def test_missing_pydicom_and_truncated_file(tmp_path, monkeypatch):
    path = write_dicom(tmp_path / "t.dicom", RAMP)
    path.write_bytes(path.read_bytes()[:-1200])
    with pytest.raises(UnreadableImageError, match="t.dicom"):
        read_dicom_uint8(path)
    monkeypatch.setitem(sys.modules, "pydicom", None)
    with pytest.raises(MissingDicomDecoder, match="pip install pydicom"):
        read_dicom_uint8(path)


def _vinbig(root: Path, rows) -> Path:
    for image in sorted({r[0] for r in rows}):
        write_dicom(root / "train" / f"{image}.dicom", RAMP, photometric="MONOCHROME1" if image == "b" else "MONOCHROME2")
    make_vinbig_csv(root, rows)
    return root


ROWS = [
    ("a", "Aortic enlargement", "R1"), ("a", "Nodule/Mass", "R2"), ("a", "Nodule/Mass", "R3"), ("a", "Nodule/Mass", "R3"),
    ("b", "No finding", "R1"), ("b", "No finding", "R2"), ("b", "Pneumothorax", "R3"),
    ("c", "Cardiomegaly", "R4"), ("c", "Cardiomegaly", "R5"), ("c", "No finding", "R6"),
]


def _labels(out: Path) -> dict[str, list[str]]:
    found = {}
    for split in ("train", "val", "test"):
        image_list = read_list(out / f"{split}.txt", num_labels=14)
        for path, row in zip(image_list.paths, image_list.labels):
            found[path] = [VINBIG_CLASSES[i] for i in np.flatnonzero(row)]
    return found


def test_union_and_majority_rules_in_original_class_order(tmp_path):
    root = _vinbig(tmp_path / "vin", ROWS)
    assert main(["vinbig", "--root", str(root), "--out", str(tmp_path / "u"), "--scale", "0.5", "--workers", "1"]) == 0
    assert _labels(tmp_path / "u") == {"a.png": ["Aortic enlargement", "Nodule/Mass"], "b.png": ["Pneumothorax"], "c.png": ["Cardiomegaly"]}
    lines = [text for f in ("train.txt", "val.txt", "test.txt") for text in (tmp_path / "u" / f).read_text().splitlines()]
    line = next(text for text in lines if text.startswith("a.png"))
    assert line == "a.png 1.0 " + " ".join(["0.0"] * 11) + " 1.0 0.0"  # Nodule/Mass is column 13 of 14
    assert main(["vinbig", "--root", str(root), "--out", str(tmp_path / "m"), "--scale", "0.5", "--label-rule", "majority",
                 "--workers", "1"]) == 0
    assert _labels(tmp_path / "m") == {"a.png": ["Nodule/Mass"], "b.png": [], "c.png": ["Cardiomegaly"]}
    png = np.asarray(Image.open(root / "prepared" / "b.png"))
    assert png.shape == (15, 20) and png[0, 0] > png[0, -1]  # half size, MONOCHROME1 inverted
    assert "synthetic" in (tmp_path / "u" / "dataset.yaml").read_text()


@pytest.mark.parametrize("where", ["train/prepared", "train", "."])
def test_images_out_overlapping_the_dicom_folder_is_refused(tmp_path, capsys, where):
    root = _vinbig(tmp_path / "vin", ROWS)
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    images_out = root / where if where != "." else root.parent
    assert main(["vinbig", "--root", str(root), "--out", str(tmp_path / "o"), "--images-out", str(images_out),
                 "--workers", "1"]) == 1
    err = capsys.readouterr().err
    assert "--images-out" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before and not (tmp_path / "o").exists()


def test_bad_inputs_give_one_line_errors(tmp_path, capsys):
    root = _vinbig(tmp_path / "vin", ROWS)
    make_vinbig_csv(root, ROWS + [("c", "Alien", "R1")])
    assert main(["vinbig", "--root", str(root), "--out", str(tmp_path / "o"), "--workers", "1"]) == 1
    err = capsys.readouterr().err
    assert "train.csv:12: unknown class_name 'Alien'" in err and "Traceback" not in err
    (root / "train.csv").write_text("image_id,class_name,class_id\na,No finding,14\n")
    assert main(["vinbig", "--root", str(root), "--out", str(tmp_path / "o"), "--workers", "1"]) == 1
    assert "train.csv:1: missing column 'rad_id'" in capsys.readouterr().err

    make_vinbig_csv(root, ROWS)
    dicom = root / "train" / "c.dicom"
    dicom.write_bytes(dicom.read_bytes()[:-1000])
    assert main(["vinbig", "--root", str(root), "--out", str(tmp_path / "o"), "--workers", "1"]) == 1
    err = capsys.readouterr().err
    assert "c.dicom" in err and "--skip-bad-images" in err and "Traceback" not in err
    assert not (tmp_path / "o" / "train.txt").exists()
    assert main(["vinbig", "--root", str(root), "--out", str(tmp_path / "o"), "--workers", "1", "--skip-bad-images"]) == 0
    assert set(_labels(tmp_path / "o")) == {"a.png", "b.png"}
    assert main(["vinbig", "--root", str(root), "--out", str(tmp_path / "o"), "--scale", "2"]) == 2


def test_a_rerun_removes_what_an_interrupted_run_left_behind(tmp_path, capsys):
    import os
    import time

    root = _vinbig(tmp_path / "vin", ROWS)
    out, images = tmp_path / "o", root / "prepared"
    orphans = [out / ".train.txt.q1w2e3r4.tmp", images / ".a.png.x9y8z7w6.tmp"]
    for path in orphans:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half")
        os.utime(path, (time.time() - 600,) * 2)
    assert main(["vinbig", "--root", str(root), "--out", str(out), "--workers", "1"]) == 0
    assert "removed 2 temporary file(s) that an interrupted earlier run left behind" in capsys.readouterr().out
    assert not any(p.exists() for p in orphans) and (images / "a.png").is_file()

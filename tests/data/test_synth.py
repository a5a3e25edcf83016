"""``refers synth``: official on-disk layouts, determinism, safety, and images that show what labels say."""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import cross_val_predict

from refers.cli.synth import main
from refers.data.registry import CHEXPERT_CLASSES, NIH_CLASSES, VINBIG_CLASSES
from refers.data.synth import View, render_views, sample_patient
from tests.shared_data import SYNTH_ARGS

DATASETS = ("MIMIC-CXR", "NIH_ChestX-ray", "Shenzhen_Tuberculosis", "COVID-19_Image_Data_Collection",
            "VinBigData_Chest_X-ray")
SIZE = 64


def _run(out: Path, *extra: str) -> int:
    return main(["--out", str(out), "--no-progress", *extra])


@pytest.fixture
def root(synth_root) -> Path:
    """The session's shared ``refers synth`` output at SIZE px (tests/shared_data.py); read-only."""
    assert f"--image-size {SIZE}" in " ".join(SYNTH_ARGS)
    return synth_root


def _gz_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    raw = path.read_bytes()
    assert raw[:2] == b"\x1f\x8b" and raw[3] == 0 and raw[4:8] == b"\0\0\0\0", "gzip header must carry no name or time"
    rows = list(csv.reader(io.StringIO(gzip.decompress(raw).decode())))
    return rows[0], rows[1:]


def _csv_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    rows = list(csv.reader(io.StringIO(path.read_text())))
    return rows[0], rows[1:]


def _tree_hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_every_dataset_is_marked_synthetic(root):
    for name in DATASETS:
        marker = root / name / "SYNTHETIC.txt"
        assert marker.is_file() and "SYNTHETIC" in marker.read_text(), name
    assert not list(root.glob(".*.partial")), "partial folders must be renamed into place"


def test_mimic_layout_metadata_split_and_reports(root):
    base = root / "MIMIC-CXR"
    header, meta = _gz_rows(base / "mimic-cxr-2.0.0-metadata.csv.gz")
    assert header == ["dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition", "Rows",
                      "Columns", "StudyDate", "StudyTime", "ProcedureCodeSequence_CodeMeaning",
                      "ViewCodeSequence_CodeMeaning", "PatientOrientationCodeSequence_CodeMeaning"]
    views_per_study: dict[str, list[str]] = {}
    for dicom_id, subject, study, _, view, rows, cols, date, *_ in meta:
        assert re.fullmatch(r"[0-9a-f]{8}(-[0-9a-f]{8}){4}", dicom_id)
        assert re.fullmatch(r"1\d{7}", subject) and re.fullmatch(r"5\d{7}", study) and re.fullmatch(r"2\d{7}", date)
        image = base / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}" / f"{dicom_id}.jpg"
        with Image.open(image) as im:
            assert im.format == "JPEG" and im.size == (int(cols), int(rows)) == (SIZE, SIZE)
        assert (image.parent.parent / f"s{study}.txt").is_file()
        views_per_study.setdefault(study, []).append(view)
    assert all(1 <= len(v) <= 3 for v in views_per_study.values())
    assert {"PA", "AP"} & {v for vs in views_per_study.values() for v in vs}
    assert any("LATERAL" in vs or "LL" in vs for vs in views_per_study.values())

    header, split = _gz_rows(base / "mimic-cxr-2.0.0-split.csv.gz")
    assert header == ["dicom_id", "study_id", "subject_id", "split"]
    assert sorted(r[0] for r in split) == sorted(r[0] for r in meta)
    assert {r[3] for r in split} == {"train", "validate", "test"}
    by_subject: dict[str, set[str]] = {}
    for _, _, subject, name in split:
        by_subject.setdefault(subject, set()).add(name)
    assert all(len(names) == 1 for names in by_subject.values()), "splits are by subject"

    for name in ("chexpert", "negbio"):
        header, labels = _gz_rows(base / f"mimic-cxr-2.0.0-{name}.csv.gz")
        assert header == ["subject_id", "study_id", *CHEXPERT_CLASSES]
        assert sorted(r[1] for r in labels) == sorted(views_per_study)
        assert {v for r in labels for v in r[2:]} <= {"1.0", "0.0", "-1.0", ""}

    reports = list((base / "files").rglob("s*.txt"))
    assert len(reports) == len(views_per_study)
    texts = [p.read_text() for p in reports]
    assert all(t.startswith("                                 FINAL REPORT\n") for t in texts)
    assert all("IMPRESSION:" in t or "FINDINGS:" in t for t in texts)
    assert any("IMPRESSION:" not in t for t in texts) or any("FINDINGS:" not in t for t in texts) or len(texts) < 30
    lines = (base / "IMAGE_FILENAMES").read_text().splitlines()
    assert len(lines) == len(meta) and all((base / line).is_file() for line in lines)


def test_mimic_chexpert_labels_follow_the_report_text(root):
    base = root / "MIMIC-CXR"
    header, labels = _gz_rows(base / "mimic-cxr-2.0.0-chexpert.csv.gz")
    column = {name: header.index(name) for name in ("Pleural Effusion", "Pneumothorax", "No Finding")}
    seen = set()
    for row in labels:
        subject, study = row[0], row[1]
        text = (base / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}.txt").read_text().lower()
        # Labels come from the FINDINGS/IMPRESSION sections, as the CheXpert labeler reads them (not the indication).
        text = " ".join(re.split(r"\b(?:findings|impression):", text, maxsplit=1)[1].split())
        for name, word in (("Pleural Effusion", "effusion"), ("Pneumothorax", "pneumothorax")):
            value = row[column[name]]
            seen.add((name, value))
            if value == "":
                assert word not in text, (study, name)
            elif value == "0.0":
                assert re.search(rf"\bno\b[^.]*{word}", text), (study, name)
            else:
                assert word in text, (study, name)
        if row[column["No Finding"]] == "1.0":
            assert not {row[header.index(c)] for c in CHEXPERT_CLASSES if c not in ("No Finding", "Support Devices")} & {"1.0", "-1.0"}
    assert {("Pleural Effusion", "1.0"), ("Pleural Effusion", "0.0"), ("Pleural Effusion", "")} <= seen


def test_mimic_reports_and_their_labels_keep_their_bytes(tmp_path):
    # The digest of the reports and CheXpert table that `refers synth --studies 60 --seed 3` wrote
    # before the report writer was split into one wording per finding: same seed, same bytes.
    assert _run(tmp_path, "--studies", "60", "--image-size", "32", "--seed", "3", "--datasets", "mimic", "--workers", "1") == 0
    mimic = tmp_path / "MIMIC-CXR"
    reports = sorted(p for p in mimic.rglob("s*.txt") if p.parent.name.startswith("p"))
    digest = hashlib.sha256()
    for path in reports:
        digest.update(path.relative_to(mimic).as_posix().encode() + b"\0" + path.read_bytes())
    digest.update(gzip.decompress((mimic / "mimic-cxr-2.0.0-chexpert.csv.gz").read_bytes()))
    assert len(reports) == 60
    assert digest.hexdigest() == "03bdb92fd740463d27b5a7c0166f7cf1277f795661a668842e7cee7a75512726"


def test_nih_layout_header_and_official_split(root):
    base = root / "NIH_ChestX-ray"
    text = (base / "Data_Entry_2017.csv").read_text()
    assert text.split("\n")[0] == ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
                                   "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],")
    rows = [line.split(",") for line in text.splitlines()[1:]]
    assert rows and all(len(r) == 11 for r in rows)
    names = [r[0] for r in rows]
    for name, labels, follow_up, patient, age, sex, view, *_ in rows:
        assert re.fullmatch(r"\d{8}_\d{3}\.png", name) and int(name[:8]) == int(patient) and int(name[9:12]) == int(follow_up)
        assert labels == "No Finding" or set(labels.split("|")) <= set(NIH_CLASSES)
        assert sex in ("M", "F") and view in ("PA", "AP") and age.isdigit()
    found = {p.name: p for p in base.glob("images_0*/images/*.png")}
    assert sorted(found) == sorted(names)
    assert {p.parent.parent.name for p in found.values()} <= {f"images_{i:03d}" for i in range(1, 13)}
    train = (base / "train_val_list.txt").read_text().split()
    test = (base / "test_list.txt").read_text().split()
    assert sorted(train + test) == sorted(names) and not set(train) & set(test)
    assert not {n[:8] for n in train} & {n[:8] for n in test}, "the official split is by patient"
    assert 0.2 <= len(test) / len(names) <= 0.4


def test_shenzhen_layout_and_readings(root):
    base = root / "Shenzhen_Tuberculosis" / "ChinaSet_AllFiles"
    images = sorted((base / "CXR_png").glob("*.png"))
    assert images and all(re.fullmatch(r"CHNCXR_\d{4}_[01]\.png", p.name) for p in images)
    for image in images:
        first, reading = (base / "ClinicalReadings" / f"{image.stem}.txt").read_text().splitlines()[:2]
        assert re.fullmatch(r"(male|female) \d+yrs", first)
        assert (reading == "normal") == image.stem.endswith("_0")
    assert {p.stem[-1] for p in images} == {"0", "1"}


def test_covid_layout_metadata(root):
    base = root / "COVID-19_Image_Data_Collection"
    header, rows = _csv_rows(base / "metadata.csv")
    assert header[:5] == ["patientid", "offset", "sex", "age", "finding"]
    for column in ("RT_PCR_positive", "survival", "intubated", "view", "modality", "date", "location", "folder",
                   "filename", "doi", "url", "license", "clinical_notes", "other_notes"):
        assert column in header
    col = {name: header.index(name) for name in header}
    for row in rows:
        assert (base / row[col["folder"]] / row[col["filename"]]).is_file()
        assert re.fullmatch(r"(Pneumonia(/[A-Za-z0-9.\-]+)*|No Finding|Tuberculosis)", row[col["finding"]])
        assert (row[col["modality"]] == "CT") == (row[col["view"]] == "Axial")
    assert {r[col["modality"]] for r in rows} == {"X-ray", "CT"}
    assert "Pneumonia/Viral/COVID-19" in {r[col["finding"]] for r in rows}


def test_vinbig_csv_radiologists_and_dicom_files(root):
    import pydicom

    base = root / "VinBigData_Chest_X-ray"
    header, rows = _csv_rows(base / "train.csv")
    assert header == ["image_id", "class_name", "class_id", "rad_id", "x_min", "y_min", "x_max", "y_max"]
    per_image: dict[str, dict[str, set[str]]] = {}
    for image_id, name, class_id, rad, *box in rows:
        assert re.fullmatch(r"[0-9a-f]{32}", image_id) and re.fullmatch(r"R\d+", rad)
        if name == "No finding":
            assert class_id == "14" and box == ["", "", "", ""]
        else:
            assert int(class_id) == VINBIG_CLASSES.index(name)
            x0, y0, x1, y1 = map(float, box)
            assert 0 <= x0 < x1 <= SIZE and 0 <= y0 < y1 <= SIZE
        per_image.setdefault(image_id, {}).setdefault(rad, set()).add(name)
    assert all(len(rads) == 3 for rads in per_image.values())
    assert any(len({frozenset(c) for c in rads.values()}) > 1 for rads in per_image.values()), "readers disagree"
    files = sorted((base / "train").glob("*.dicom"))
    assert sorted(p.stem for p in files) == sorted(per_image)
    syntaxes, photometric, bits, windowed, uids = set(), set(), set(), 0, set()
    for path in files:
        ds = pydicom.dcmread(path)
        pixels = ds.pixel_array  # decodes RLE and JPEG-LS too
        assert pixels.shape == (SIZE, SIZE) and int(pixels.max()) < 2 ** ds.BitsStored
        syntaxes.add(ds.file_meta.TransferSyntaxUID.name)
        photometric.add(ds.PhotometricInterpretation)
        bits.add(int(ds.BitsStored))
        windowed += "WindowCenter" in ds
        uids.add(ds.SOPInstanceUID)
    assert {"RLE Lossless", "JPEG-LS Lossless Image Compression", "Explicit VR Little Endian"} <= syntaxes
    assert photometric == {"MONOCHROME1", "MONOCHROME2"} and bits <= {12, 14, 16} and len(bits) > 1
    assert windowed > 0 and len(uids) == len(files)


def test_same_seed_same_bytes_any_workers_and_other_seed_differs(tmp_path):
    args = ("--studies", "10", "--image-size", "32")
    assert _run(tmp_path / "a", *args, "--seed", "5", "--workers", "1") == 0
    assert _run(tmp_path / "b", *args, "--seed", "5", "--workers", "2") == 0
    assert _run(tmp_path / "c", *args, "--seed", "6", "--workers", "1") == 0
    a, b, c = (_tree_hashes(tmp_path / x) for x in "abc")
    assert len(a) > 100 and a == b
    assert a[str(Path("NIH_ChestX-ray") / "Data_Entry_2017.csv")] != c[str(Path("NIH_ChestX-ray") / "Data_Entry_2017.csv")]
    assert len(set(a.values()) & set(c.values())) < 0.05 * len(a)


def test_refuses_a_non_synthetic_folder_and_replaces_a_synthetic_one(tmp_path, capsys):
    real = tmp_path / "NIH_ChestX-ray" / "images_001" / "images" / "00000001_000.png"
    real.parent.mkdir(parents=True)
    real.write_bytes(b"real data")
    assert _run(tmp_path, "--studies", "10", "--image-size", "32") == 1
    assert "refusing" in capsys.readouterr().err
    assert real.read_bytes() == b"real data" and not (tmp_path / "MIMIC-CXR").exists()

    # A synthetic folder is replaced when it holds only what synth wrote, even a run of another size...
    other = tmp_path / "other"
    folder = other / "Shenzhen_Tuberculosis"
    assert _run(other, "--studies", "60", "--image-size", "32", "--datasets", "shenzhen") == 0
    larger = _tree_hashes(folder)
    assert _run(other, "--studies", "10", "--image-size", "32", "--datasets", "shenzhen") == 0
    assert _run(tmp_path / "fresh", "--studies", "10", "--image-size", "32", "--datasets", "shenzhen") == 0
    smaller = _tree_hashes(folder)
    assert smaller == _tree_hashes(tmp_path / "fresh" / "Shenzhen_Tuberculosis") and len(smaller) < len(larger)

    # ...but never when something else was put in it since (a user's file, prepare's prepared/ images).
    mine = [folder / "notes.txt", folder / "prepared" / "CHNCXR_0001_0.png"]
    for path in mine:
        path.parent.mkdir(exist_ok=True)
        path.write_text("mine")
    capsys.readouterr()
    assert _run(other, "--studies", "20", "--image-size", "32", "--datasets", "shenzhen") == 1
    err = capsys.readouterr().err
    assert f"{folder} holds notes.txt and 1 more, which refers synth did not write" in err and len(err.strip().splitlines()) == 1
    assert {k: v for k, v in _tree_hashes(folder).items() if k not in ("notes.txt", "prepared/CHNCXR_0001_0.png")} == smaller
    assert all(path.read_text() == "mine" for path in mine) and not list(other.glob(".*partial"))


@pytest.mark.parametrize("argv, message", [
    (["--studies", "0"], "--studies"),
    (["--image-size", "8"], "--image-size"),
    (["--datasets", "nope"], "unknown dataset"),
    (["--seed", "x"], "--seed"),
])
def test_bad_arguments_exit_2_with_a_clear_message(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["--out", str(tmp_path), *argv])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_out_that_is_a_file_is_a_usage_error(tmp_path, capsys):
    target = tmp_path / "file.txt"
    target.write_text("x")
    assert _run(target, "--studies", "10") == 2
    assert "is a file" in capsys.readouterr().err


def _centred(patients, size=SIZE):
    return render_views(patients, [View("PA", marker=False, noise=0.02) for _ in patients], size, 0).astype(float) / 255


def _patients(seed: int, n: int, forced: dict) -> list:
    """Patients with only the ``forced`` findings (anatomy, size and exposure still vary)."""
    return [sample_patient(np.random.default_rng([seed, i]), prevalence_scale=0.0, forced=forced) for i in range(n)]


def test_image_statistics_separate_findings_and_their_side():
    # Patient's left = image right on a frontal view.
    n, lo, mid, hi = 60, int(0.1 * SIZE), SIZE // 2, int(0.9 * SIZE)
    left = _centred(_patients(1, n, {"effusion": "L"}))
    right = _centred(_patients(2, n, {"effusion": "R"}))
    base = slice(int(0.6 * SIZE), int(0.8 * SIZE))
    asym = lambda x: x[:, base, mid:hi].mean((1, 2)) - x[:, base, lo:mid].mean((1, 2))  # noqa: E731
    assert roc_auc_score([1] * n + [0] * n, np.r_[asym(left), asym(right)]) > 0.95

    # Pneumothorax: the pleural line and the edge of the lucent rim add edges at that side's apex.
    left = _centred(_patients(3, n, {"pneumothorax": "L"}))
    right = _centred(_patients(4, n, {"pneumothorax": "R"}))
    apex = slice(int(0.1 * SIZE), int(0.45 * SIZE))

    def edges(x: np.ndarray, cols: slice) -> np.ndarray:
        r = x[:, apex, cols]
        return np.abs(np.diff(r, axis=2)).mean((1, 2)) + np.abs(np.diff(r, axis=1)).mean((1, 2))

    side = lambda x: edges(x, slice(mid, hi)) - edges(x, slice(lo, mid))  # noqa: E731
    assert roc_auc_score([1] * n + [0] * n, np.r_[side(left), side(right)]) > 0.9

    big = _centred(_patients(5, n, {"cardiomegaly": None}))
    normal = _centred(_patients(6, n, {}))

    def dense_fraction(x: np.ndarray) -> np.ndarray:
        """At heart level, the share of the chest that is dense (heart + mediastinum), not air: a CTR."""
        band = x[:, int(0.5 * SIZE):int(0.62 * SIZE), lo:hi]
        low, high = np.percentile(band, 5, axis=(1, 2), keepdims=True), np.percentile(band, 95, axis=(1, 2), keepdims=True)
        return (band > (low + high) / 2).mean((1, 2))

    assert roc_auc_score([1] * n + [0] * n, np.r_[dense_fraction(big), dense_fraction(normal)]) > 0.9


@pytest.mark.slow
def test_dataset_images_agree_with_labels_and_report_sides(tmp_path):
    assert _run(tmp_path, "--studies", "200", "--image-size", str(SIZE), "--datasets", "nih", "mimic", "--seed", "1") == 0
    # NIH: a linear probe on 24x24 thumbnails predicts the labels (cross-validated).
    base = tmp_path / "NIH_ChestX-ray"
    rows = [line.split(",") for line in (base / "Data_Entry_2017.csv").read_text().splitlines()[1:]]
    paths = {p.name: p for p in base.glob("images_0*/images/*.png")}
    pixels = np.stack([np.asarray(Image.open(paths[r[0]]).resize((24, 24), Image.BILINEAR), dtype=float).ravel()
                       for r in rows]) / 255
    for finding in ("Cardiomegaly", "Effusion", "Edema"):
        y = np.array([finding in r[1].split("|") for r in rows])
        scores = cross_val_predict(LogisticRegression(C=0.3, max_iter=1000), pixels, y, cv=3, method="decision_function")
        assert roc_auc_score(y, scores) > 0.8, finding
    # MIMIC: the side a report gives an effusion is the side the frontal image shows it on.
    base = tmp_path / "MIMIC-CXR"
    _, meta = _gz_rows(base / "mimic-cxr-2.0.0-metadata.csv.gz")
    asym, side = [], []
    for dicom_id, subject, study, _, view, *_ in meta:
        if view not in ("PA", "AP"):
            continue
        report = " ".join((base / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}.txt").read_text().split())
        sides = set(re.findall(r"\b(left|right)\b[^.]*\beffusion", report.lower()))
        if len(sides) != 1 or "bilateral" in report:
            continue
        image = np.asarray(Image.open(base / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}" / f"{dicom_id}.jpg"),
                           dtype=float)
        rows_ = slice(int(0.6 * SIZE), int(0.8 * SIZE))
        asym.append(image[rows_, SIZE // 2:int(0.9 * SIZE)].mean() - image[rows_, int(0.1 * SIZE):SIZE // 2].mean())
        side.append(sides == {"left"})
    assert 10 <= len(side) and 0 < sum(side) < len(side)
    assert roc_auc_score(side, asym) > 0.8

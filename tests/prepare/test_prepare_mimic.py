"""``refers prepare mimic``: report sections, resized images, the original's lists, the study index, resuming."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from refers.cli.prepare import main
from refers.data.mimic_lists import read_study_index
from refers.prepare import resize
from refers.prepare.common import read_dataset_yaml
from refers.prepare.reports import extract_sections, report_text, split_sections
from tests.prepare_helpers import make_mimic

SUBJECTS = {"10000032": "train", "10000764": "train", "11000011": "validate", "12000022": "test"}


@pytest.mark.parametrize("report, findings, impression", [
    ("FINAL REPORT\n EXAMINATION: CHEST\n\n FINDINGS:\n\n Heart is\n normal.\n\n IMPRESSION:\n\n No acute process.\n",
     "Heart is normal.", "No acute process."),
    ("Findings: Mild cardiomegaly. Impression text later.\nIMPRESSIONS: Cardiomegaly.", "Mild cardiomegaly. Impression text later.", "Cardiomegaly."),
    ("INDICATION: cough\n\nFINDINGS AND IMPRESSION: Clear lungs.", "Clear lungs.", "Clear lungs."),
    ("EXAM: CHEST\nCONCLUSION: Small left effusion.", "", "Small left effusion."),
    ("HISTORY: fever\n\nLungs are clear.\nNo pneumothorax.", "", "Lungs are clear. No pneumothorax."),
    ("FINDINGS:\n Hazy ill-\n defined opacity.\t Left -\n sided line.\nIMPRESSION: Opacity.", "Hazy ill-defined opacity. Left - sided line.",
     "Opacity."),
    ("FINDINGS: Note: right PICC tip in SVC.\nWET READ: ___\nIMPRESSION:\nNone.", "Note: right PICC tip in SVC.", "None."),
])
def test_section_extraction_on_report_variants(report, findings, impression):
    sections = extract_sections(report)
    assert sections == {"findings": findings, "impression": impression}
    assert report_text(sections) == " ".join(dict.fromkeys(t for t in (findings, impression) if t))


def test_only_known_section_names_open_a_section():
    # Issue 14: an unknown capitalised word before a colon is text (it used to open a section).
    sections = split_sections("COMPARISON: None.\nPA AND LATERAL VIEWS: heart normal.\nHeart size: normal.")
    assert sections == {"comparison": "None. PA AND LATERAL VIEWS: heart normal. Heart size: normal."}


@pytest.mark.parametrize("report, findings, impression", [
    # De-identified wrapped lines begin with XXXX: and must not end FINDINGS.
    ("FINDINGS: The heart is normal in size. There is\nXXXX: XXXX single view of the chest shows\nno effusion.\n"
     "IMPRESSION: No acute disease.",
     "The heart is normal in size. There is XXXX: XXXX single view of the chest shows no effusion.", "No acute disease."),
    ("FINDINGS:\n Lines and tubes as before.\n PA: the lungs are clear.\n LATERAL: no effusion.\n\n"
     " Impressions: Clear lungs.",
     "Lines and tubes as before. PA: the lungs are clear. LATERAL: no effusion.", "Clear lungs."),
    # Known names still open sections in any case and with their variants.
    ("clinical history: cough\nComparison exam: ___\nFindings: Small effusion.\nRECOMMENDATION(S): follow-up.",
     "Small effusion.", ""),
])
def test_wrapped_lines_with_a_colon_stay_in_their_section(report, findings, impression):
    assert extract_sections(report) == {"findings": findings, "impression": impression}
    sections = split_sections(report)
    assert set(sections) <= {"findings", "impression", "indication", "comparison", "recommendation"}


@pytest.fixture
def mimic_root(tmp_path) -> Path:
    root = make_mimic(tmp_path / "MIMIC-CXR", SUBJECTS)
    (root / "SYNTHETIC.txt").write_text("hand-made test data\n")
    return root


def test_prepare_mimic_writes_every_file(mimic_root, tmp_path):
    out, images = tmp_path / "lists", tmp_path / "cache"
    assert main(["mimic", "--root", str(mimic_root), "--out", str(out), "--images-out", str(images), "--short-side", "32",
                 "--workers", "2"]) == 0
    for split, studies in (("train", 4), ("val", 2), ("test", 2)):
        caption_lines = (out / f"{split}_img_caption_patients.txt").read_text().splitlines()
        assert len(caption_lines) == studies
        folder, text = caption_lines[0].split("\t")
        assert folder.startswith("files/p1") and folder.endswith("/") and "\t" not in text
        assert (out / f"{split}.txt").read_text().splitlines() == [f.split("\t")[0].rstrip("/") for f in caption_lines]
        assert np.load(out / f"{split}_label.npy").shape == (studies, 14)
    (study, *_) = read_study_index(out / "train_studies.jsonl", images)
    assert study.text == "The heart is enlarged. No pleural effusion. Cardiomegaly."
    assert study.findings == "The heart is enlarged. No pleural effusion." and study.impression == "Cardiomegaly."
    assert study.views == ["PA", "LATERAL"] and study.split == "train" and study.subject_id == "10000032"
    assert study.labels[0] == 1 and study.labels[1] == -1 and np.isnan(study.labels[2])
    assert all(Image.open(p).size == (32, 43) for p in study.images)  # 60x80 -> shorter side 32, bilinear
    assert np.load(out / "train_label.npy")[:, :2].tolist() == [[1, 0], [0, 0], [1, 0], [0, 0]]  # -1 and blank -> 0
    # The original's caption-list format reads back to the same studies.
    assert [s.folder for s in read_study_index(out / "train_img_caption_patients.txt", images)] == \
        [s.folder for s in read_study_index(out / "train_studies.jsonl", images)]
    info = read_dataset_yaml(out)
    assert info["synthetic"] is True and info["short_side"] == 32 and (out / "SYNTHETIC.txt").is_file()
    assert (tmp_path / "lists" / Path(info["image_root"])).resolve() == images.resolve()
    assert set(info["made_by"]["sources"]) == {str(mimic_root / f"mimic-cxr-2.0.0-{n}.csv.gz") for n in ("split", "metadata", "chexpert")}
    assert not list(mimic_root.glob("files/**/*.tmp"))


@pytest.mark.parametrize("where", ["files/prepared", "files"])
def test_images_out_overlapping_the_jpg_folder_is_refused(mimic_root, tmp_path, capsys, where):
    before = sorted(p.relative_to(mimic_root) for p in mimic_root.rglob("*"))
    images_out = mimic_root / where
    assert main(["mimic", "--root", str(mimic_root), "--out", str(tmp_path / "o"), "--images-out", str(images_out)]) == 1
    err = capsys.readouterr().err
    assert f"--images-out {images_out} overlaps the source folder {mimic_root / 'files'}" in err and "Traceback" not in err
    assert sorted(p.relative_to(mimic_root) for p in mimic_root.rglob("*")) == before and not (tmp_path / "o").exists()


def test_interrupted_run_resumes_without_redoing_images(mimic_root, tmp_path, monkeypatch, capsys):
    args = ["mimic", "--root", str(mimic_root), "--out", str(tmp_path / "lists"), "--short-side", "24", "--workers", "1"]
    real_save, calls = resize.save_atomic, []

    def dying_save(image, target, quality=95):
        if len(calls) == 5:
            raise KeyboardInterrupt  # a kill half-way through the 16 images
        calls.append(target)
        real_save(image, target, quality)

    monkeypatch.setattr(resize, "save_atomic", dying_save)
    assert main(args) == 130
    assert not (tmp_path / "lists" / "train.txt").exists()
    done = sorted((mimic_root / "prepared").rglob("*.jpg"))
    assert len(done) == 5 and not list((mimic_root / "prepared").rglob("*.tmp"))
    stamps = {p: p.stat().st_mtime_ns for p in done}

    monkeypatch.setattr(resize, "save_atomic", real_save)
    capsys.readouterr()
    assert main(args) == 0
    assert "images kept 5, images written 11" in capsys.readouterr().out
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())
    assert len(list((mimic_root / "prepared").rglob("*.jpg"))) == 16
    # Other settings: every image is redone at the new size, the lists need --force.
    assert main([*args[:-4], "--short-side", "16"]) == 1
    assert "pass --force" in capsys.readouterr().err
    assert main([*args[:-4], "--short-side", "16", "--force"]) == 0
    assert "images written 16" in capsys.readouterr().out


def test_reports_from_zip_and_bad_inputs(mimic_root, tmp_path, capsys):
    archive = tmp_path / "mimic-cxr-reports.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        for report in mimic_root.glob("files/p*/p*/s*.txt"):
            handle.write(report, report.relative_to(mimic_root).as_posix())
            report.unlink()
    out = tmp_path / "lists"
    assert main(["mimic", "--root", str(mimic_root), "--out", str(out), "--reports", str(archive), "--short-side", "16",
                 "--workers", "1", "--sections", "impression"]) == 0
    assert (out / "test_img_caption_patients.txt").read_text().splitlines()[0].split("\t")[1] == "Cardiomegaly."

    assert main(["mimic", "--root", str(mimic_root), "--out", str(out), "--sections", "findngs"]) == 2
    assert "unknown --sections findngs" in capsys.readouterr().err
    assert main(["mimic", "--root", str(mimic_root), "--out", str(mimic_root), "--force"]) == 1
    assert "never writes into the folder it reads" in capsys.readouterr().err
    split_csv = mimic_root / "mimic-cxr-2.0.0-split.csv.gz"
    import gzip

    with gzip.open(split_csv, "wt") as handle:
        handle.write("dicom_id,study_id,subject_id\nx,1,2\n")
    assert main(["mimic", "--root", str(mimic_root), "--out", str(out), "--force"]) == 1
    err = capsys.readouterr().err
    assert f"{split_csv}:1: missing column 'split'" in err and "Traceback" not in err

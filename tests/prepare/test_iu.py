"""IU X-ray (Open-i): the XML reader on the real files' variants, the MeSH labels, and
`refers synth --datasets iu` + `refers prepare iu` end to end, from the folder and from the .tgz."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

from refers.cli import main as refers_main
from refers.data.registry import CHEXPERT_CLASSES
from refers.prepare.common import PrepareError
from refers.prepare.iu import mesh_labels, read_report
from tests.shared_data import tree_digest

# Shaped like ecgen-radiology/1.xml of the real archive (trimmed), with its variants.
REAL_STYLE = """<?xml version="1.0" encoding="utf-8"?>
<eCitation><meta type="rr"/><uId id="CXR{uid}"/><pmcId id="{uid}"/>
<MedlineCitation Owner="Indiana University" Status="supplied"><Article PubModel="Electronic"><Abstract>
<AbstractText Label="COMPARISON">None.</AbstractText>
<AbstractText Label="INDICATION">Positive TB test</AbstractText>
<AbstractText Label="FINDINGS">{findings}</AbstractText>
<AbstractText Label="IMPRESSION">{impression}</AbstractText>
</Abstract></Article></MedlineCitation>
<MeSH>{mesh}</MeSH>
{images}
</eCitation>"""


def xml(uid=1, findings="", impression="", mesh=("normal",), images=()) -> bytes:
    parents = "".join(f'<parentImage id="{i}"><figureId>F1</figureId><caption>Xray Chest PA and Lateral</caption>'
                      f'<panel type="single"><url>/hadoop/storage/radiology/extract/{i}.jpg</url></panel></parentImage>'
                      for i in images)
    return REAL_STYLE.format(uid=uid, findings=findings, impression=impression, mesh="".join(f"<major>{m}</major>" for m in mesh),
                             images=parents).encode()


def test_reader_takes_several_images_xxxx_and_multi_line_sections():
    report = read_report(xml(1, "The cardiac silhouette and mediastinum size are within normal limits. There are no\n   XXXX "
                             "of a pleural effusion.", "Normal chest x-XXXX.", images=("CXR1_1_IM-0001-3001", "CXR1_1_IM-0001-4001")), "1.xml")
    assert report.uid == "CXR1" and report.images == ["CXR1_1_IM-0001-3001", "CXR1_1_IM-0001-4001"]
    assert report.findings.endswith("There are no XXXX of a pleural effusion.") and report.impression == "Normal chest x-XXXX."


def test_reader_takes_empty_sections_and_reports_without_images():
    empty = xml(7, images=()).replace(b'<AbstractText Label="FINDINGS"></AbstractText>', b'<AbstractText Label="FINDINGS"/>')
    report = read_report(empty, "7.xml")
    assert (report.findings, report.impression, report.images) == ("", "", [])
    no_uid = xml(9, "x").replace(b'<uId id="CXR9"/>', b"")
    assert read_report(no_uid, "ecgen-radiology/9.xml").uid == "CXR9"  # from the file name
    with pytest.raises(PrepareError, match="bad.xml: not a readable report XML"):
        read_report(b"<eCitation><uId", "bad.xml")


def test_mesh_terms_map_to_chexpert_values():
    row = mesh_labels(["Cardiomegaly/borderline", "Pleural Effusion/right", "Thickening/pleural/left", "Granuloma", "normal"])
    value = dict(zip(CHEXPERT_CLASSES, row))
    assert value["Cardiomegaly"] == -1 and value["Pleural Effusion"] == 1 and value["Pleural Other"] == 1
    assert np.isnan(value["No Finding"]) and np.isnan(value["Atelectasis"])  # normal does not stand beside findings
    normal = dict(zip(CHEXPERT_CLASSES, mesh_labels(["normal"])))
    assert normal["No Finding"] == 1 and sum(not np.isnan(v) for v in normal.values()) == 1


@pytest.fixture(scope="module")
def iu_download(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("iu_synth")
    assert refers_main.main(["synth", "--out", str(out), "--datasets", "iu", "--studies", "40", "--image-size", "48",
                             "--no-progress", "--workers", "1"]) == 0
    return out / "IU_X-ray"


def _prepare(root: Path, out: Path, *extra: str) -> list[dict]:
    assert refers_main.main(["prepare", "iu", "--root", str(root), "--out", str(out / "lists"), "--images-out",
                             str(out / "images"), "--workers", "1", "--short-side", "48", *extra]) == 0
    return [json.loads(line) for split in ("train", "val", "test")
            for line in (out / "lists" / f"{split}_studies.jsonl").read_text().splitlines()]


def test_synth_layout_is_the_official_one(iu_download):
    names = sorted(p.name for p in (iu_download / "NLMCXR_png").iterdir())
    assert names and all(n.startswith("CXR") and "_IM-" in n and n.endswith(".png") for n in names)
    reports = sorted((iu_download / "NLMCXR_reports" / "ecgen-radiology").glob("*.xml"))
    assert len(reports) == 40 and (iu_download / "SYNTHETIC.txt").is_file()
    parsed = [read_report(p.read_bytes(), str(p)) for p in reports]
    assert any(not r.images for r in parsed) and any(not (r.findings or r.impression) for r in parsed)
    assert all(f"{i}.png" in names for r in parsed for i in r.images)


def test_prepare_from_folder_and_from_tgz_give_the_same_studies(iu_download, tmp_path, capsys):
    studies = _prepare(iu_download, tmp_path / "a", "--projections", str(iu_download / "indiana_projections.csv"))
    reports = {p.stem: read_report(p.read_bytes(), str(p)) for p in (iu_download / "NLMCXR_reports" / "ecgen-radiology").glob("*.xml")}
    kept = {r.uid for r in reports.values() if r.images and (r.findings or r.impression)}
    assert {s["study_id"] for s in studies} == kept  # every report with an image and a section, each in one split
    assert len({s["study_id"] for s in studies}) == len(studies)
    for study in studies:
        report = next(r for r in reports.values() if r.uid == study["study_id"])
        assert study["text"] == " ".join(p for p in (report.findings, report.impression) if p)
        assert [Path(i).stem for i in study["images"]] == report.images
        assert set(study["views"]) <= {"FRONTAL", "LATERAL"} and study["views"][0] == "FRONTAL"
        assert study["labels"] == [None if np.isnan(v) else float(v) for v in mesh_labels(report.mesh)]
    info = (tmp_path / "a" / "lists" / "dataset.yaml").read_text()
    assert "CC BY-NC-ND 4.0" in info and "synthetic: true" in info
    caption = (tmp_path / "a" / "lists" / "train_img_caption_patients.txt").read_text().splitlines()[0]
    folder, text = caption.split("\t")
    assert (tmp_path / "a" / "images" / folder).is_dir() and text

    # The archive alone (the download as it comes) gives the same studies; views unknown without --projections.
    tgz_root = tmp_path / "tgz_root"
    (tgz_root / "NLMCXR_png").mkdir(parents=True)
    for png in (iu_download / "NLMCXR_png").iterdir():
        (tgz_root / "NLMCXR_png" / png.name).symlink_to(png)
    (tgz_root / "SYNTHETIC.txt").write_text("synthetic\n")
    with tarfile.open(tgz_root / "NLMCXR_reports.tgz", "w:gz") as tar:
        tar.add(iu_download / "NLMCXR_reports" / "ecgen-radiology", arcname="ecgen-radiology")
    from_tgz = _prepare(tgz_root, tmp_path / "b")
    assert [(s["study_id"], s["text"], s["labels"]) for s in from_tgz] == [(s["study_id"], s["text"], s["labels"]) for s in studies]
    assert all(set(s["views"]) == {""} for s in from_tgz)

    # A damaged archive is one line naming it.
    (tgz_root / "NLMCXR_reports.tgz").write_bytes(b"not a tar")
    capsys.readouterr()
    assert refers_main.main(["prepare", "iu", "--root", str(tgz_root), "--out", str(tmp_path / "c"), "--images-out",
                             str(tmp_path / "c_img"), "--workers", "1"]) == 1
    err = capsys.readouterr().err
    assert "NLMCXR_reports.tgz is damaged" in err and "Traceback" not in err


def test_prepared_iu_is_a_pretraining_source_and_a_retrieval_set(iu_download, tmp_path):
    """The study index loads in the pre-training reader, and the model card carries the licence."""
    from refers.engine.export import _training_data

    _prepare(iu_download, tmp_path)
    from refers.data.pretrain_dataset import resolve_image_root
    from refers.config import load_config
    from refers.data.study_table import load_study_table

    lists = tmp_path / "lists"
    cfg = load_config("configs/pretrain/iu_xray.yaml", ["DATA.TRAIN_LIST", str(lists / "train_studies.jsonl")])
    table = load_study_table(lists / "train_studies.jsonl", resolve_image_root(cfg, lists / "train_studies.jsonl"))
    assert len(table) > 0
    assert "CC BY-NC-ND 4.0" in _training_data(cfg.to_dict())["license"]


def test_retrieval_on_the_prepared_iu_test_split(iu_download, pretrain_run, tmp_path):
    _prepare(iu_download, tmp_path, "--projections", str(iu_download / "indiana_projections.csv"))
    out = tmp_path / "retrieval"
    assert refers_main.main(["retrieval", "--model", str(pretrain_run / "checkpoint_4.pth"), "--studies",
                             str(tmp_path / "lists" / "test_studies.jsonl"), "--out", str(out), "--bootstrap", "20",
                             "--per-class", "2", "--no-progress"]) == 0
    result = json.loads((out / "retrieval.json").read_text())
    assert result["all_studies"]["n"] == len((tmp_path / "lists" / "test.txt").read_text().splitlines())
    from refers.crossmodal.retrieval import default_out

    assert default_out(tmp_path / "lists" / "test_studies.jsonl", "REFERS", tmp_path / "R") == tmp_path / "R" / "retrieval" / "IU_X-ray_test" / "REFERS"


def _private_copy(iu_download: Path, tmp_path: Path) -> Path:
    """A writable copy of the module's synthetic download (these tests edit its reports)."""
    import shutil

    return Path(shutil.copytree(iu_download, tmp_path / "IU_X-ray"))


def _refused(root: Path, out: Path, capsys, *extra: str) -> str:
    """Run prepare iu into ``out``; assert exit 1, one error line, nothing written; return that line."""
    capsys.readouterr()
    code = refers_main.main(["prepare", "iu", "--root", str(root), "--out", str(out / "lists"), "--workers", "1", *extra])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not (out / "lists").exists() and not (out / "images").exists()
    return err


@pytest.mark.parametrize("field, hostile", [("uId", "../../escaped"), ("uId", "a/b"), ("uId", ".."),
                                            ("parentImage", "../../../escaped_IM-0001-1001")])
def test_an_id_that_is_not_a_file_name_is_refused_before_anything_is_written(iu_download, tmp_path, capsys, field, hostile):
    root = _private_copy(iu_download, tmp_path)
    report = root / "NLMCXR_reports" / "ecgen-radiology" / "1.xml"
    text = report.read_text()
    original = read_report(report.read_bytes(), str(report))
    assert original.images, "1.xml must list an image for this test"
    if field == "uId":
        text = text.replace(f'<uId id="{original.uid}"/>', f'<uId id="{hostile}"/>')
    else:
        text = text.replace(f'<parentImage id="{original.images[0]}">', f'<parentImage id="{hostile}">')
    report.write_text(text)
    before = {p for p in tmp_path.rglob("*")}
    err = _refused(root, tmp_path, capsys, "--images-out", str(tmp_path / "images"))
    assert f"{report}: {field}" in err and repr(hostile) in err
    assert {p for p in tmp_path.rglob("*")} == before  # nothing written anywhere, inside or outside


def test_a_uid_given_twice_is_refused_naming_both_files(iu_download, tmp_path, capsys):
    root = _private_copy(iu_download, tmp_path)
    folder = root / "NLMCXR_reports" / "ecgen-radiology"
    (folder / "2.xml").write_text((folder / "2.xml").read_text().replace('<uId id="CXR2"/>', '<uId id="CXR1"/>'))
    err = _refused(root, tmp_path, capsys, "--images-out", str(tmp_path / "images"))
    assert f"{folder / '2.xml'}: uId CXR1 is also the id of {folder / '1.xml'}" in err


@pytest.mark.parametrize("where", ["inside", "holding"])
def test_images_out_overlapping_the_source_images_is_refused(iu_download, tmp_path, capsys, where):
    root = _private_copy(iu_download, tmp_path)
    before = tree_digest(root)
    images_out = root / "NLMCXR_png" / "prepared" if where == "inside" else root.parent
    err = _refused(root, tmp_path, capsys, "--images-out", str(images_out))
    assert f"--images-out {images_out} overlaps the source folder {root / 'NLMCXR_png'}" in err
    assert tree_digest(root) == before


def test_projections_that_is_a_folder_is_one_line(iu_download, tmp_path, capsys):
    err = _refused(iu_download, tmp_path, capsys, "--images-out", str(tmp_path / "images"), "--projections", str(tmp_path))
    assert str(tmp_path) in err and "Is a directory" in err

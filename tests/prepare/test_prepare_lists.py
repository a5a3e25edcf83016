"""The list readers take the original's published files unchanged, and MIMIC's three study-list formats."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from refers.base.errors import ListFormatError
from refers.data.lists import find_split_file, read_list
from refers.data.mimic_lists import find_caption_list, read_study_index, reroot_folder, write_study_index
from refers.data.registry import get_dataset
from refers.prepare.splits import assignment_from_lists
from tests.conftest import require_shared

# Line counts of the published files (the recipe's table).
PUBLISHED_COUNTS = {
    "COVID-19_Image_Data_Collection": {"train": 664, "val": 93, "test": 172},
    "Shenzhen_Tuberculosis": {"train": 463, "val": 67, "test": 132},
    "NIH_ChestX-ray": {"val": 11219, "test": 22433},
    "VinBigData_Chest_X-ray": {"train": 10500, "val": 1500, "test": 3000},
}


def published() -> Path:
    """``../shared/reference/original-DataProcessed``: skipped when absent, a failure under CI."""
    return require_shared("original-DataProcessed")


def test_reader_takes_every_published_list_unchanged():
    root = published()
    read = set()
    for dataset, counts in PUBLISHED_COUNTS.items():
        spec = get_dataset(dataset)
        for split, expected in counts.items():
            path = find_split_file(root / dataset, split)
            image_list = read_list(path, num_labels=spec.label_columns)
            assert len(image_list) == expected, path
            assert set(np.unique(image_list.labels)) <= {0.0, 1.0}
            assert all(not p.endswith("\r") for p in image_list.paths)
            if spec.binary:  # one-hot: exactly one of the two columns
                assert (image_list.labels.sum(axis=1) == 1).all(), path
            read.add(path)
    mimic = read_study_index(root / "MIMIC" / "test.txt", "/nonexistent", require_images=False)
    assert len(mimic) == 4673
    assert mimic[0].folder == "files/p10/p10032725/s50331901" and mimic[0].subject_id == "10032725"
    labels = np.stack([s.labels for s in mimic])
    assert labels.shape == (4673, 12)
    assert np.array_equal(labels, np.load(root / "MIMIC" / "test_label.npy").astype(np.float32))
    read |= {root / "MIMIC" / "test.txt", root / "MIMIC" / "test_label.npy"}
    assert read == set(root.rglob("*.*")), "a published file is not covered by this test"


def test_published_nih_split_gives_every_other_image_to_train():
    root = published() / "NIH_ChestX-ray"
    listed = [Path(p).name for split in ("val", "test") for p in read_list(find_split_file(root, split)).paths]
    extra = [f"9999999{i}_000.png" for i in range(5)]
    assignment, sources = assignment_from_lists(root, listed + extra, 14, ("val", "test"))
    assert (assignment == 1).sum() == 11219 and (assignment == 2).sum() == 22433
    assert list(np.flatnonzero(assignment < 0)) == list(range(len(listed), len(listed) + 5))
    assert [s.name for s in sources] == ["val.txt", "test.txt"]


def test_crlf_and_float_labels_and_valid_txt(tmp_path):
    (tmp_path / "valid.txt").write_bytes(b"a.png 0 1\r\nb.png 1.0 0.0\r\n")
    image_list = read_list(find_split_file(tmp_path, "val"), num_labels=2)
    assert image_list.paths == ["a.png", "b.png"]
    assert image_list.labels.tolist() == [[0, 1], [1, 0]]


def test_reroot_original_folders():
    assert reroot_folder("./data/MIMIC//data/files/p10/p10032725/s50331901") == "files/p10/p10032725/s50331901"
    assert reroot_folder("/home/u/mimic/files/p11/p11000011/s5/") == "files/p11/p11000011/s5"
    assert reroot_folder("files/p10/p10000032/s50414267/") == "files/p10/p10000032/s50414267"


def _study_folder(root: Path, subject: str, study: str, names=("a-small.jpg", "b-small.jpg", "c.jpg")) -> Path:
    folder = root / f"files/p{subject[:2]}/p{subject}/s{study}"
    folder.mkdir(parents=True)
    for name in names:
        (folder / name).write_bytes(b"x")
    return folder


def test_caption_list_both_spellings_and_small_images(tmp_path):
    images = tmp_path / "img"
    _study_folder(images, "10000032", "50414267")
    _study_folder(images, "10000764", "57375967", names=("x.jpg",))
    text = ("./data/MIMIC//data/files/p10/p10000032/s50414267/\tFINDINGS: heart\tnormal.\n"
            "/somewhere/files/p10/p10000764/s57375967\tno effusion\n")
    (tmp_path / "train_img_captions_patients.txt").write_text(text)
    path = find_caption_list(tmp_path, "train")
    studies = read_study_index(path, images)
    assert [s.study_id for s in studies] == ["50414267", "57375967"]
    assert [p.name for p in studies[0].images] == ["a-small.jpg", "b-small.jpg"]  # the original's resized files win
    assert studies[0].text == "FINDINGS: heart normal."
    assert studies[1].images[0].name == "x.jpg" and studies[1].views == [""]


def test_study_list_errors_name_file_and_line(tmp_path):
    images = tmp_path / "img"
    _study_folder(images, "10000032", "50414267")
    escaping = tmp_path / "escape.txt"
    escaping.write_text("files/p10/p10000032/s50414267\n../../etc\n")
    with pytest.raises(ListFormatError, match=r"escape.txt:2: .*escapes"):
        read_study_index(escaping, images)
    missing = tmp_path / "missing.txt"
    missing.write_text("files/p10/p10000032/s50414267\nfiles/p10/p10000032/s1\n")
    with pytest.raises(ListFormatError, match=r"missing.txt:2: study folder files/p10/p10000032/s1 has no images"):
        read_study_index(missing, images)
    np.save(tmp_path / "missing_label.npy", np.zeros((3, 12)))
    with pytest.raises(ListFormatError, match=r"missing_label.npy:1: label matrix"):
        read_study_index(missing, images, require_images=False)
    bad_index = tmp_path / "train_studies.jsonl"
    bad_index.write_text('{"study_id": "1", "images": []}\nnot json\n')
    with pytest.raises(ListFormatError, match=r"train_studies.jsonl:1: study without images"):
        read_study_index(bad_index, images)
    with pytest.raises(ListFormatError, match=r"train_studies.jsonl:2: not a study record"):
        read_study_index(bad_index, images, require_images=False)


def test_study_index_round_trip(tmp_path):
    from refers.data.mimic_lists import Study

    images = tmp_path / "img"
    folder = _study_folder(images, "10000032", "50414267", names=("d1.jpg", "d2.jpg"))
    labels = np.array([1, np.nan, -1, 0] + [np.nan] * 10, dtype=np.float32)
    study = Study("50414267", "10000032", "files/p10/p10000032/s50414267", sorted(folder.iterdir()), ["PA", "LATERAL"],
                  "Heart big.", "Cardiomegaly.", "Heart big. Cardiomegaly.", labels, "train")
    path = write_study_index(tmp_path / "train_studies.jsonl", [study], images)
    record = json.loads(path.read_text())
    assert record["images"] == ["files/p10/p10000032/s50414267/d1.jpg", "files/p10/p10000032/s50414267/d2.jpg"]
    assert record["labels"][:4] == [1.0, None, -1.0, 0.0]
    (back,) = read_study_index(path, images)
    assert back.views == ["PA", "LATERAL"] and back.images == study.images and back.text == study.text
    np.testing.assert_array_equal(back.labels, labels)

"""The one parser of the ``{split}_studies.jsonl`` study index, seen through both of its readers:
the list of :class:`Study` objects (:func:`read_study_index`) and the columnar training table
(:func:`load_study_table`). Both must give the same studies, field by field, and refuse the same
lines with the same ``file:line`` message."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from refers.base.errors import ListFormatError
from refers.data.mimic_lists import read_study_index
from refers.data.study_table import StudyTable, cache_path, load_study_table


def _read_list(index, root, **kwargs):
    return read_study_index(index, root, **kwargs)


def _read_table(index, root, **kwargs):
    return list(load_study_table(index, root, use_cache=False, **kwargs))


def _read_cached_table(index, root, **kwargs):
    load_study_table(index, root, **kwargs)  # parses and writes the cache
    assert cache_path(index).is_dir()
    return list(load_study_table(index, root, **kwargs))  # memory-mapped


READERS = pytest.mark.parametrize("read", [_read_list, _read_table, _read_cached_table], ids=["list", "table", "cached"])

RECORDS = [
    {"study_id": "50414267", "subject_id": "10000032", "split": "train", "folder": "files/p10/p10000032/s50414267",
     "images": ["files/p10/p10000032/s50414267/a.jpg", "files/p10/p10000032/s50414267/b.jpg"], "views": ["PA", "LATERAL"],
     "findings": "Heart size normal.", "impression": "No effusion.", "text": "Heart size normal. No effusion.",
     "labels": [1.0, None, -1.0, 0.0]},
    {"study_id": "57375967", "subject_id": "10000764", "split": "val", "folder": "files/p10/p10000764/s57375967",
     "images": ["files/p10/p10000764/s57375967/c.jpg"], "views": [""], "findings": "", "impression": "Clear lungs.",
     "text": "Clear lungs.", "labels": None},
]


def _write(tmp_path, records, name="train_studies.jsonl"):
    """The index of ``records`` (dicts, or raw lines), with an empty file for each image of RECORDS."""
    root = tmp_path / "images"
    for record in RECORDS:
        for relative in record["images"]:
                (root / relative).parent.mkdir(parents=True, exist_ok=True)
                (root / relative).write_bytes(b"")
    index = tmp_path / name
    index.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return index, root


# Sections that are not plain ASCII, and a section that the training text does not contain.
UNICODE = {**RECORDS[1], "study_id": "3", "findings": "Cœur normal — élargi?", "impression": "Pas d'épanchement.",
           "text": "Cœur normal — élargi? Pas d'épanchement."}
NOT_IN_TEXT = {**RECORDS[1], "study_id": "4", "findings": "Findings left out of the text.", "impression": "Clear lungs.",
               "text": "Clear lungs."}


@READERS
def test_sections_inside_and_outside_the_training_text(tmp_path, read):
    index, root = _write(tmp_path, [UNICODE, NOT_IN_TEXT, {**RECORDS[1], "findings": "", "impression": "", "text": ""}])
    unicode, outside, empty = read(index, root)
    assert (unicode.findings, unicode.impression, unicode.text) == (UNICODE["findings"], UNICODE["impression"], UNICODE["text"])
    assert (outside.findings, outside.impression, outside.text) == (NOT_IN_TEXT["findings"], "Clear lungs.", "Clear lungs.")
    assert (empty.findings, empty.impression, empty.text) == ("", "", "")


@READERS
def test_every_field_and_every_report_section(tmp_path, read):
    index, root = _write(tmp_path, [RECORDS[0], "", RECORDS[1]])  # a blank line is skipped, line numbers kept
    first, second = read(index, root)
    resolved = root.resolve()
    assert (first.study_id, first.subject_id, first.folder, first.split, first.line_number) == \
        ("50414267", "10000032", "files/p10/p10000032/s50414267", "train", 1)
    assert first.images == [resolved / "files/p10/p10000032/s50414267/a.jpg", resolved / "files/p10/p10000032/s50414267/b.jpg"]
    assert first.views == ["PA", "LATERAL"]
    assert (first.findings, first.impression, first.text) == ("Heart size normal.", "No effusion.", "Heart size normal. No effusion.")
    assert first.labels.dtype == np.float32 and first.labels[[0, 2, 3]].tolist() == [1.0, -1.0, 0.0] and math.isnan(first.labels[1])
    assert (second.findings, second.impression, second.split, second.line_number, second.labels) == ("", "Clear lungs.", "val", 3, None)
    assert second.views == [""]


@READERS
@pytest.mark.parametrize("line, message", [
    ({"study_id": "2", "images": ["../outside.jpg"], "views": ["PA"], "text": "b"}, r"path .../outside.jpg. escapes the data root"),
    ({"study_id": "2", "images": ["/etc/passwd"], "views": ["PA"], "text": "b"}, r"absolute path ./etc/passwd. in a list file"),
    ({"study_id": "2", "images": ["files/p10/missing.jpg"], "views": ["PA"], "text": "b"}, r"image .*missing.jpg not found"),
    ({"study_id": "2", "images": [], "text": "b"}, r"study without images"),
    ({"study_id": "2", "images": ["files/x/d.jpg"], "views": ["PA", "AP"], "text": "b"}, r"1 images but 2 views"),
    ({"images": ["files/x/d.jpg"], "text": "b"}, r"not a study record: 'study_id'"),
    ("not json", r"not a study record"),
    ("[1, 2]", r"not a study record"),
])
def test_both_readers_refuse_a_bad_line_naming_file_and_line(tmp_path, read, line, message):
    index, root = _write(tmp_path, [RECORDS[0], line])
    (root / "files/x").mkdir(parents=True, exist_ok=True)
    (root / "files/x/d.jpg").write_bytes(b"")
    with pytest.raises(ListFormatError, match=r"train_studies.jsonl:2: " + message):
        read(index, root)


@READERS
def test_a_symlink_out_of_the_root_is_refused_not_only_dotdot(tmp_path, read):
    # A lexical test passes "files/link/x.jpg"; safe_join resolves the link and refuses it.
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "x.jpg").write_bytes(b"")
    index, root = _write(tmp_path, [RECORDS[0], {"study_id": "2", "images": ["files/link/x.jpg"], "views": ["PA"], "text": "b"}])
    (root / "files" / "link").symlink_to(outside, target_is_directory=True)
    with pytest.raises(ListFormatError, match=r"train_studies.jsonl:2: .*escapes the data root"):
        read(index, root)


@READERS
def test_without_the_image_check_missing_images_are_read(tmp_path, read):
    index, root = _write(tmp_path, [RECORDS[0]])
    (root / RECORDS[0]["images"][1]).unlink()
    with pytest.raises(ListFormatError, match=r"train_studies.jsonl:1: image .*b.jpg not found"):
        read(index, root)
    (study,) = read(index, root, require_images=False)
    assert [p.name for p in study.images] == ["a.jpg", "b.jpg"]


def test_a_cache_parsed_without_the_image_check_does_not_serve_a_checked_load(tmp_path):
    index, root = _write(tmp_path, [RECORDS[0]])
    (root / RECORDS[0]["images"][1]).unlink()
    assert len(load_study_table(index, root, require_images=False)) == 1 and cache_path(index).is_dir()
    with pytest.raises(ListFormatError, match=r"train_studies.jsonl:1: image .*b.jpg not found"):
        load_study_table(index, root)
    (root / RECORDS[0]["images"][1]).write_bytes(b"")
    assert len(load_study_table(index, root)) == 1  # now parsed with the check, and cached as checked
    assert json.loads((cache_path(index) / "key.json").read_text())["images_checked"] is True


def test_label_rows_of_different_widths_name_the_line(tmp_path):
    other = {**RECORDS[1], "labels": [1.0]}
    index, root = _write(tmp_path, [RECORDS[0], other])
    with pytest.raises(ListFormatError, match=r"train_studies.jsonl:2: 1 labels, expected 4"):
        StudyTable.from_jsonl(index, root)


def test_safe_join_with_a_folder_memo_resolves_as_without_it(tmp_path):
    from refers.base.paths import safe_join

    root = tmp_path / "root"
    (root / "a/b").mkdir(parents=True)
    (tmp_path / "out").mkdir()
    (root / "a/b/f").write_text("")
    (root / "a/link").symlink_to(tmp_path / "out", target_is_directory=True)
    (root / "a/flink").symlink_to(root / "a/b/f")
    (root / "a/badf").symlink_to(tmp_path / "out")
    cases = ["a/b/f", "a//b/f", "a/./b/f", "a/b/../b/f", "a/link/x", "a/flink", "a/badf", "a/b/..", "x/y/z",
             "a/b/../../../root/a/b/f", "a/../..", "", "a/b/", "../root/a/b/f", "a/link/../b/f"]
    memo: dict = {}

    def joined(relative, folders):
        try:
            return safe_join(root, relative, folders)
        except ValueError as error:
            return str(error)

    for _ in range(2):  # the second pass reads the memo
        for relative in cases:
            assert joined(relative, memo) == joined(relative, None), relative
    assert joined("a/flink", memo) == (root / "a/b/f").resolve()
    assert "escapes the data root" in joined("a/link/x", memo) and "escapes the data root" in joined("a/badf", memo)

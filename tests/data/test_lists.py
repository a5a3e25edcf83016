"""The one list-file reader: original formats unchanged, malformed lines named by file and line."""

from __future__ import annotations

import numpy as np
import pytest

from refers.base.errors import ListFormatError
from refers.data.lists import find_split_file, read_list, write_list
from refers.base.paths import safe_join
from tests.conftest import require_shared


def test_reads_crlf_int_and_float_labels(tmp_path):
    path = tmp_path / "train.txt"
    path.write_bytes(b"a.png 0 1\r\nb.png 1 0\r\n\r\n")
    items = read_list(path)
    assert items.paths == ["a.png", "b.png"]
    np.testing.assert_array_equal(items.labels, [[0, 1], [1, 0]])
    assert items.line_numbers.tolist() == [1, 2]
    path.write_text("x.png 1.0 0.0 1.0\n")
    assert read_list(path).labels.tolist() == [[1.0, 0.0, 1.0]]


def test_paths_with_spaces_when_label_count_known(tmp_path):
    path = tmp_path / "test.txt"
    path.write_text("my image 1.png 0 1\n")
    items = read_list(path, num_labels=2)
    assert items.paths == ["my image 1.png"]


@pytest.mark.parametrize(
    "content, expected",
    [
        ("a.png 0 1\nb.png 0\n", ":2: expected 2 labels"),
        ("a.png 0 x\n", ":1: label 'x' is not a number"),
        ("a.png 0 nan\n", ":1: label 'nan' is not 0 or 1"),
    ],
)
def test_malformed_lines_name_file_and_line(tmp_path, content, expected):
    path = tmp_path / "val.txt"
    path.write_text(content)
    with pytest.raises(ListFormatError) as info:
        read_list(path)
    assert str(path) in str(info.value) and expected in str(info.value)


def test_wrong_label_count_with_expected_count(tmp_path):
    path = tmp_path / "val.txt"
    path.write_text("a.png 0 1 0\n")
    with pytest.raises(ListFormatError, match=r"val.txt:1: expected an image path and 14 labels"):
        read_list(path, num_labels=14)


def test_write_read_round_trip_and_styles(tmp_path):
    labels = np.array([[1, 0], [0, 1]], dtype=np.float32)
    write_list(tmp_path / "a.txt", ["x.png", "y.png"], labels, style="float")
    assert (tmp_path / "a.txt").read_text() == "x.png 1.0 0.0\ny.png 0.0 1.0\n"
    write_list(tmp_path / "b.txt", ["x.png", "y.png"], labels, style="int")
    assert (tmp_path / "b.txt").read_text() == "x.png 1 0\ny.png 0 1\n"
    np.testing.assert_array_equal(read_list(tmp_path / "b.txt").labels, labels)


def test_find_split_file_accepts_valid_txt(tmp_path):
    (tmp_path / "valid.txt").write_text("a.png 1 0\n")
    assert find_split_file(tmp_path, "val").name == "valid.txt"
    with pytest.raises(FileNotFoundError, match="test.txt"):
        find_split_file(tmp_path, "test")


def test_safe_join_refuses_escapes(tmp_path):
    assert safe_join(tmp_path, "images_001/a.png") == (tmp_path / "images_001/a.png").resolve()
    for bad in ("../secret.png", "a/../../b.png", "/etc/passwd"):
        with pytest.raises(ValueError):
            safe_join(tmp_path, bad)


@pytest.mark.parametrize(
    "folder, columns",
    [("NIH_ChestX-ray", 14), ("VinBigData_Chest_X-ray", 14), ("Shenzhen_Tuberculosis", 2), ("COVID-19_Image_Data_Collection", 2)],
)
def test_reads_every_published_list_unchanged(folder, columns):
    root = require_shared(f"original-DataProcessed/{folder}")
    files = sorted(root.glob("*.txt"))
    assert files
    for path in files:
        items = read_list(path, num_labels=columns)
        assert len(items) == sum(1 for line in path.read_text().splitlines() if line.strip())
        assert set(np.unique(items.labels)) <= {0.0, 1.0}
    if columns == 2:  # one-hot: exactly one positive column per line
        assert (items.labels.sum(axis=1) == 1).all()


# --- hostile list files (issue 14): one clear line naming the file and the line ---------------------------------


@pytest.mark.parametrize("content, num_labels, one_hot, expected", [
    (b"a.png 0 1\nb.png 1 \xff0\n", None, False, ":2: byte 0xff at column 9 is not UTF-8; save the file as UTF-8"),
    (b"a.png 0 1\nb.png -1 0\n", None, False, ":2: label '-1' is not 0 or 1"),
    (b"a.png 0 1\nb.png 0.5 0\n", 2, False, ":2: label '0.5' is not 0 or 1"),
    (b"a.png 0 1\nb.png 1 1\n", 2, True, ":2: one-hot labels '1 1' must hold exactly one 1"),
    (b"a.png 0 1\nb.png 0 0\n", 2, True, ":2: one-hot labels '0 0' must hold exactly one 1"),
    (b"a.png 0 1\nb.png 1 0\na.png 0 1\n", 2, False, ":3: image a.png is listed twice (lines 1 and 3)"),
    (b"a.png 0 1 0\n", 2, False, ":1: expected 2 labels after the image path, found 3"),
    (b"0 1\n", 2, False, ":1: expected an image path and 2 labels, found 2 fields (no image path, or 1 too few)"),
])
def test_hostile_list_lines_are_named(tmp_path, content, num_labels, one_hot, expected):
    path = tmp_path / "train.txt"
    path.write_bytes(content)
    with pytest.raises(ListFormatError) as info:
        read_list(path, num_labels=num_labels, one_hot=one_hot)
    assert str(info.value) == f"{path}{expected}"


def test_a_byte_order_mark_and_any_line_end_are_accepted(tmp_path):
    path = tmp_path / "test.txt"
    path.write_bytes(b"\xef\xbb\xbfimages_001/a b.png 0 1\r\nimages_001/c.png 1 0\rimages_001/d.png 0 1")
    listed = read_list(path, num_labels=2, one_hot=True)
    assert listed.paths == ["images_001/a b.png", "images_001/c.png", "images_001/d.png"]  # no BOM glued to the first path
    assert listed.labels.tolist() == [[0, 1], [1, 0], [0, 1]] and listed.line_numbers.tolist() == [1, 2, 3]

"""Bad inputs through the real commands: one line naming the file and the line, exit 1, nothing half-made.

The readers themselves are tested where they live (tests/data/test_lists.py, tests/eval/test_eval_metrics.py);
these cases check that every command reaches them before it writes anything.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from refers.cli.finetune import main as finetune_main
from refers.cli.prepare import main as prepare_main
from refers.cli.test import main as evaluate_main
from tests.shared_data import copy_shared


def _args(lists: Path, data: Path, out: Path) -> list[str]:
    return ["--name", "run", "--dataset", "Shenzhen_Tuberculosis", "--list_dir", str(lists), "--data_root", str(data),
            "--output_dir", str(out / "output"), "--log_dir", str(out / "logs"), "--results_dir", str(out / "results"),
            "--model_type", "ViT-nano_8", "--img_size", "32", "--train_batch_size", "8", "--eval_batch_size", "16",
            "--num_workers", "0", "--warmup_steps", "1", "--init", "scratch", "--num_classes", "1"]


def _replace_line(path: Path, number: int, text: str) -> None:
    lines = path.read_bytes().split(b"\r\n")
    lines[number - 1] = text.encode("utf-8")
    path.write_bytes(b"\r\n".join(lines))


def _one_error_line(err: str, *expected: str) -> None:
    lines = [line for line in err.splitlines() if "error" in line]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert all(text in lines[0] for text in expected), lines[0]


@pytest.fixture
def shenzhen(finetune_datasets, tmp_path) -> tuple[Path, Path]:
    """A private, writable copy of the session's tiny Shenzhen dataset (these tests edit its lists)."""
    lists, _ = finetune_datasets["Shenzhen_Tuberculosis"]
    root = copy_shared(lists.parent, tmp_path)
    return root / "lists", root / "data"


@pytest.mark.parametrize("bad_line, message", [
    ("images_001/train_03.png -1 1", "label '-1' is not 0 or 1"),
    ("images_001/train_03.png 1 1", "one-hot labels '1 1' must hold exactly one 1"),
    ("images_001/train_00.png 1 0", "image images_001/train_00.png is listed twice (lines 1 and 4)"),
])
def test_fine_tuning_refuses_a_bad_training_list_before_training(shenzhen, tmp_path, capsys, bad_line, message):
    lists, data = shenzhen
    _replace_line(lists / "train.txt", 4, bad_line)
    assert finetune_main([*_args(lists, data, tmp_path), "--stage", "train", "--num_steps", "2"]) == 1
    _one_error_line(capsys.readouterr().err, f"{lists / 'train.txt'}:4", message)
    assert not (tmp_path / "output").exists() or not list((tmp_path / "output").glob("*.bin"))


def test_fine_tuning_reads_lists_saved_with_a_byte_order_mark(shenzhen, tmp_path):
    lists, data = shenzhen
    for name in ("train.txt", "valid.txt"):
        (lists / name).write_bytes(b"\xef\xbb\xbf" + (lists / name).read_bytes())
    assert finetune_main([*_args(lists, data, tmp_path), "--stage", "train", "--num_steps", "2"]) == 0


def test_testing_refuses_a_bad_test_list_before_writing_results(shenzhen, tmp_path, capsys):
    lists, data = shenzhen
    assert finetune_main([*_args(lists, data, tmp_path), "--stage", "train", "--num_steps", "2"]) == 0
    checkpoint = tmp_path / "output" / "run_bestauc_checkpoint.bin"
    _replace_line(lists / "test.txt", 2, "images_001/test_01.png 1 -1")
    capsys.readouterr()
    assert evaluate_main(["--pretrained_dir", str(checkpoint), "--results_dir", str(tmp_path / "results"), "--num_workers", "0"]) == 1
    _one_error_line(capsys.readouterr().err, f"{lists / 'test.txt'}:2", "label '-1' is not 0 or 1")
    assert not (tmp_path / "results").exists() or not list((tmp_path / "results").rglob("*.txt"))


def test_fractions_name_a_byte_that_is_not_utf8(shenzhen, capsys):
    lists, _ = shenzhen
    train = lists / "train.txt"
    train.write_bytes(train.read_bytes().replace(b"train_05", b"train_\xe905", 1))
    assert prepare_main(["fractions", "--dataset", "shenzhen", "--lists", str(lists), "--percent", "50", "--seeds", "0"]) == 1
    _one_error_line(capsys.readouterr().err, f"{train}:6", "byte 0xe9 at column 18 is not UTF-8")


def test_a_16_bit_copy_reads_as_the_8_bit_picture_and_check_reports_it(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    from refers.data.images import open_grey

    picture = np.random.default_rng(0).integers(0, 256, (40, 30)).astype(np.uint8)
    Image.fromarray(picture).save(tmp_path / "eight.png")
    Image.fromarray(picture.astype(np.uint16) * 257).save(tmp_path / "full.png")  # 0..65535
    Image.fromarray(picture.astype(np.uint16) << 8).save(tmp_path / "shifted.png")  # 0..65280
    for name in ("full.png", "shifted.png"):
        assert Image.open(tmp_path / name).mode.startswith("I")
        read = np.asarray(open_grey(tmp_path / name), dtype=int)
        assert np.abs(read - picture.astype(int)).max() <= 1, name  # used to be clipped to 255 (white)

    lists, images = tmp_path / "lists", tmp_path / "images"
    images.mkdir()
    Image.fromarray(picture.astype(np.uint16) * 257).save(images / "CHNCXR_0001_1.png")
    Image.fromarray(picture).save(images / "CHNCXR_0002_0.png")
    lists.mkdir()
    (lists / "train.txt").write_text("CHNCXR_0001_1.png 0 1\nCHNCXR_0002_0.png 1 0\n")
    assert prepare_main(["check", "--dataset", "shenzhen", "--lists", str(lists), "--images", str(images), "--workers", "1"]) == 0
    assert f"1 image(s) hold 16-bit grey (read scaled to 8 bits by their bit depth), e.g. {images / 'CHNCXR_0001_1.png'}" \
        in capsys.readouterr().out


def test_a_decompression_bomb_is_an_unreadable_image_that_can_be_skipped(shenzhen, tmp_path, capsys, monkeypatch):
    from PIL import Image

    from refers.base.errors import UnreadableImageError
    from refers.data.images import open_grey

    lists, data = shenzhen
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 300)  # 32 x 32 = 1024 > 2 x 300: PIL's bomb error, as for 30000 x 30000
    with pytest.raises(UnreadableImageError, match="train_00.png.*decompression bomb"):
        open_grey(data / "images_001" / "train_00.png")
    assert finetune_main([*_args(lists, data, tmp_path), "--stage", "train", "--num_steps", "1"]) == 1
    _one_error_line(capsys.readouterr().err, "cannot read image", "--skip_bad_images")

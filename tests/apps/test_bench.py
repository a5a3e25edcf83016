"""``refers bench`` and the fast data path: device normalisation, the packed cache, the compact study index."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from refers.bench import index_memory
from refers.bench.peaks import mfu, peak_tflops
from refers.bench.report import RESULTS_JSON, RESULTS_MD
from refers.cli.bench import main
from refers.data.device_transforms import IMAGENET_MEAN, IMAGENET_STD, DeviceNormalize, host_eval_transform, host_train_transform
from refers.base.errors import ListFormatError
from refers.data.lists import write_list
from refers.data.mimic_lists import read_study_index
from refers.data.packed_cache import PackError, PackedDataset, PackedImages, build_packed_cache, resized_grey
from refers.data.study_table import StudyTable, cache_path, load_study_table


def grey_image(height: int, width: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    pixels = 120 + 60 * np.sin(x / 7.0) * np.cos(y / 5.0) + rng.normal(0, 20, (height, width))
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8))


# --------------------------------------------------------------------------- device transforms


def original_transform(train: bool, size: int):
    """The original's float transforms on RGB images, written out independently of the project."""
    from torchvision import transforms

    geometry = [transforms.RandomResizedCrop((size, size)), transforms.RandomHorizontalFlip()] if train else \
        [transforms.Resize(size), transforms.CenterCrop((size, size))]
    return transforms.Compose([*geometry, transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


@pytest.mark.parametrize("train", [False, True])
def test_host_uint8_plus_device_normalisation_equals_the_original_rgb_transform(train):
    image, size = grey_image(90, 70), 48
    torch.manual_seed(3)
    expected = original_transform(train, size)(image.convert("RGB"))
    host = host_train_transform(size) if train else host_eval_transform(size)
    torch.manual_seed(3)  # same crop and flip draws
    grey = host(image)
    assert grey.dtype == torch.uint8 and grey.shape == (1, size, size)
    ours = DeviceNormalize()(grey.unsqueeze(0))[0]
    assert ours.shape == (3, size, size) and ours.dtype == torch.float32
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)


def test_device_normalise_formula_shapes_and_errors():
    pixels = torch.tensor([0, 128, 255], dtype=torch.uint8).reshape(1, 1, 1, 3)
    out = DeviceNormalize()(pixels)
    for c in range(3):
        want = (pixels.double() / 255 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]
        torch.testing.assert_close(out[0, c].double(), want[0, 0], atol=1e-6, rtol=0)
    views = torch.zeros(2, 3, 1, 4, 4, dtype=torch.uint8)  # [B, V, 1, S, S] pre-training batches
    assert DeviceNormalize()(views).shape == (2, 3, 3, 4, 4)
    already = torch.randn(2, 3, 4, 4)
    assert DeviceNormalize()(already) is already
    with pytest.raises(ValueError, match="1 or 3"):
        DeviceNormalize()(torch.zeros(1, 2, 4, 4, dtype=torch.uint8))
    with pytest.raises(TypeError):
        DeviceNormalize()(torch.zeros(1, 1, 4, 4, dtype=torch.int32))


# --------------------------------------------------------------------------- packed cache


@pytest.fixture
def small_dataset(tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "images"
    (root / "images_001" / "images").mkdir(parents=True)  # NIH's unpacked layout
    (root / "jpg").mkdir()
    grey_image(100, 80, 1).save(root / "images_001" / "images" / "a.png")
    grey_image(40, 30, 2).save(root / "images_001" / "images" / "small.png")  # smaller than the pack size
    grey_image(300, 200, 3).save(root / "jpg" / "c.jpg", quality=90)
    (root / "SYNTHETIC.txt").write_text("synthetic\n")
    lists = tmp_path / "lists"
    write_list(lists / "train.txt", ["images_001/a.png", "jpg/c.jpg"], np.array([[1, 0], [0, 1]], np.float32))
    write_list(lists / "test.txt", ["images_001/small.png", "jpg/c.jpg"], np.array([[0, 0], [1, 1]], np.float32))
    return root, lists


def test_packed_cache_round_trip(small_dataset, tmp_path):
    root, lists = small_dataset
    out = build_packed_cache([lists / "train.txt", lists / "test.txt"], root, tmp_path / "pack", size=48, progress=False)
    pack = PackedImages(out)
    assert len(pack) == 3 and list(pack.paths) == ["images_001/a.png", "images_001/small.png", "jpg/c.jpg"]
    assert pack.meta["synthetic"] and (out / "SYNTHETIC.txt").is_file()
    files = {"images_001/a.png": root / "images_001/images/a.png", "images_001/small.png": root / "images_001/images/small.png",
             "jpg/c.jpg": root / "jpg/c.jpg"}
    for row, (relative, file) in enumerate(files.items()):
        stored = pack.array(row)
        np.testing.assert_array_equal(stored, resized_grey(file, 48))
        assert min(stored.shape) == (30 if relative.endswith("small.png") else 48)  # never upscaled
    assert pack.array(0).shape == (60, 48)  # 100x80 (h x w): aspect kept
    dataset = PackedDataset(pack, ["jpg/c.jpg", "images_001/a.png"], np.eye(2, dtype=np.float32), host_eval_transform(32))
    image, label, index = dataset[1]
    assert image.dtype == torch.uint8 and image.shape == (1, 32, 32) and index == 1 and label.tolist() == [0.0, 1.0]
    assert torch.equal(image, host_eval_transform(32)(Image.fromarray(resized_grey(files["images_001/a.png"], 48))))
    with pytest.raises(PackError, match="not in the pack"):
        pack.rows(["images_001/nope.png"])
    for broken, message in (("[" * 100_000, "pack.json: unreadable .*nested too deeply"), (b"\xff", "pack.json: unreadable"),
                            ("[1]", "pack.json: not a pack of this version")):
        (out / "pack.json").write_bytes(broken if isinstance(broken, bytes) else broken.encode())
        with pytest.raises(PackError, match=message):
            PackedImages(out)
    (out / "pack.json").unlink()
    with pytest.raises(PackError, match="no complete pack"):
        PackedImages(out)


def test_packed_cache_refuses_missing_images(small_dataset, tmp_path):
    root, lists = small_dataset
    write_list(lists / "bad.txt", ["images_001/missing.png"], np.zeros((1, 2), np.float32))
    with pytest.raises(PackError, match="missing.png"):
        build_packed_cache([lists / "bad.txt"], root, tmp_path / "pack", size=48, progress=False)
    assert not (tmp_path / "pack" / "pack.json").exists()


# --------------------------------------------------------------------------- study index


def test_study_table_matches_the_study_list_and_caches(tmp_path):
    index = index_memory.write_index(tmp_path / "train_studies.jsonl", studies=40, images=70)
    expected = read_study_index(index, tmp_path, require_images=False)
    table = load_study_table(index, tmp_path, require_images=False)  # the generated index has no image files
    assert len(table) == len(expected) == 40 and table.nbytes() > 0
    for got, want in zip(table, expected):
        assert (got.study_id, got.subject_id, got.folder, got.images, got.views, got.findings, got.impression, got.text,
                got.split, got.line_number) == (want.study_id, want.subject_id, want.folder, want.images, want.views,
                                                want.findings, want.impression, want.text, want.split, want.line_number)
        np.testing.assert_array_equal(got.labels, want.labels)  # NaN = not mentioned, equal positions
    assert table.text(5) == expected[5].text
    cached = load_study_table(index, tmp_path, require_images=False)  # from the memory-mapped cache
    assert isinstance(cached.columns["text"], np.memmap) and cached[7].images == expected[7].images
    subset = cached.select(np.array([3, 1]))
    assert [s.study_id for s in subset] == [expected[3].study_id, expected[1].study_id]
    # A changed index invalidates the cache.
    lines = index.read_text().splitlines()
    index.write_text("\n".join(lines[:10]) + "\n")
    assert len(load_study_table(index, tmp_path, require_images=False)) == 10 and cache_path(index).is_dir()


def test_study_table_refuses_paths_leaving_the_root(tmp_path):
    index = tmp_path / "bad.jsonl"
    index.write_text(json.dumps({"study_id": "1", "images": ["files/ok.jpg"], "views": ["PA"], "text": "a"}) + "\n"
                     + json.dumps({"study_id": "2", "images": ["../../etc/x.jpg"], "views": ["PA"], "text": "b"}) + "\n")
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "ok.jpg").write_bytes(b"")
    with pytest.raises(ListFormatError, match=r"bad.jsonl:2"):
        StudyTable.from_jsonl(index, tmp_path)


def test_index_memory_does_not_grow_per_worker_unlike_a_list_of_objects(tmp_path):
    """Reduced scale (8,000 studies, 3.5% of MIMIC's): forked readers of the table copy almost nothing
    (a few MB of the interpreter's own, whatever the index's size), while readers of the list of
    Study objects copy the pages their reference counts touch (about 1.7 MB per 1,000 studies)."""
    index = index_memory.write_index(tmp_path / "train_studies.jsonl", studies=8_000, images=13_200)
    index_memory.measure_in_subprocess(index, tmp_path, workers=1)  # parses and writes the cache
    table = index_memory.measure_in_subprocess(index, tmp_path, workers=2)  # as every later run loads it
    baseline = index_memory.measure_in_subprocess(index, tmp_path, baseline=True, workers=1)
    assert table["kind"] == "StudyTable" and len(table["worker_growth_mb"]) == 2
    assert max(table["worker_growth_mb"]) < 4.0, (table, baseline)
    assert baseline["worker_growth_mb"][0] > max(table["worker_growth_mb"]) + 7.0, (table, baseline)
    assert table["rss_added_after_reading_all_mb"] < 0.5 * baseline["rss_added_mb"] + 5


def test_index_benchmark_reruns_over_its_cache(tmp_path):
    for _ in range(2):  # the second run finds the generated index and the cache of the first
        result = index_memory.index_benchmark(tmp_path, scale=0.004, workers=1)
    assert result["studies"] == int(index_memory.MIMIC_STUDIES * 0.004) and result["first_load"]["table_mb"] > 0
    assert result["load_s"] >= 0 and result["worker_growth_mb"] < 4.0


# --------------------------------------------------------------------------- refers bench


def test_peaks_and_mfu():
    assert peak_tflops("NVIDIA H100 80GB HBM3", "bf16") == 989.0
    assert peak_tflops("NVIDIA H100 PCIe", "bf16") == 756.0
    assert peak_tflops("cpu: AMD EPYC (2 cores)", "fp32") is None and mfu(1e12, "cpu: x", "fp32") is None
    assert math.isclose(mfu(494.5e12, "NVIDIA H200", "bf16"), 0.5)


def test_quick_bench_writes_results_and_keeps_gpu_figures(tmp_path):
    gpu = {"device": "NVIDIA H200", "device_type": "cuda", "preset": "vitb16", "precision": "bf16",
           "finetune": {"model_type": "ViT-B_16", "img_size": 224, "batch_size": 256, "images_per_s": 3000.0,
                        "bare_images_per_s": 3010.0, "gflops_per_image": 105.0, "tflops_per_s": 315.0, "mfu": 0.32,
                        "overhead_ratio": 1.01, "overhead_ratios": [1.01], "loader_dtype": "uint8"}}
    (tmp_path / RESULTS_JSON).write_text(json.dumps({"runs": {"cuda": gpu}}))
    code = main(["--quick", "--device", "cpu", "--only", "finetune", "pretrain", "eval", "--out", str(tmp_path)])
    assert code == 0
    document = json.loads((tmp_path / RESULTS_JSON).read_text())
    for key in ("overhead_ratio", "loader_speedup_png", "loader_speedup_jpeg", "device"):
        assert key in document
    assert document["device"].startswith("cpu") and 0 < document["overhead_ratio"] < 10
    run = document["runs"]["cpu"]
    assert run["finetune"]["flops_per_step"] > 0 and run["finetune"]["mfu"] is None
    ft = run["finetune"]
    # Forward + backward of a ViT: about 3 x (2 x weights x tokens) for the matrix products (attention adds a little).
    from refers.models.vit import build_vit

    vit = build_vit(ft["model_type"], ft["img_size"])
    tokens = (ft["img_size"] // 8) ** 2 + 1
    weights = sum(p.numel() for n, p in vit.blocks.named_parameters() if p.ndim == 2)
    assert 0.9 < ft["flops_per_step"] / (6 * weights * tokens * ft["batch_size"]) < 1.5
    assert run["pretrain"]["studies_per_s"] > 0 and math.isclose(run["pretrain"]["images_per_s"], 3 * run["pretrain"]["studies_per_s"])
    assert run["auc"]["images"] == 22_433 and run["auc"]["classes"] == 14 and 0.5 < run["auc"]["mean_auc"] < 1
    assert document["runs"]["cuda"] == gpu  # a CPU run never replaces GPU figures
    text = (tmp_path / RESULTS_MD).read_text()
    assert "## GPU" in text and "NVIDIA H200" in text and "## CPU" in text and "SYNTHETIC" in text


def test_quick_loader_bench_on_synthetic_data(tmp_path):
    code = main(["--quick", "--device", "cpu", "--only", "loader", "--workers", "0", "--out", str(tmp_path)])
    assert code == 0
    document = json.loads((tmp_path / RESULTS_JSON).read_text())
    loader = document["runs"]["cpu"]["loader"]
    for kind in ("png", "jpeg"):
        row = loader[kind]["rows"][0]
        assert row["workers"] == 0 and row["original"]["tensors_per_s"] > 0 and row["ours"]["tensors_per_s"] > 0
        assert document[f"loader_speedup_{kind}"] == loader[kind]["speedup"] > 0
    assert "packed" in loader["png"]["rows"][0]


def test_bench_usage_errors(capsys, monkeypatch):
    assert main(["--batch-size", "0"]) == 2
    # The no-GPU path runs on every machine: a GPU machine is made to look like one without.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    capsys.readouterr()
    assert main(["--device", "cuda", "--only", "eval"]) == 2
    err = capsys.readouterr().err
    assert "--device cuda: no GPU is visible" in err and "--device cpu" in err and "Traceback" not in err


# --------------------------------------------------------------------------- the default fast path after `refers prepare`


@pytest.fixture
def nih_synth(synth_root) -> Path:
    """NIH of the session's shared ``refers synth`` output (64 px; tests/shared_data.py); read-only."""
    return synth_root / "NIH_ChestX-ray"


def _nih_setup(lists: Path):
    import argparse

    from refers.finetune.data import resolve_data

    return resolve_data(argparse.Namespace(dataset="NIH_ChestX-ray", list_dir=str(lists), data_root=None, classes=None,
                                           num_classes=None))


def test_prepare_nih_resizes_and_the_loader_hands_over_uint8(nih_synth, tmp_path):
    from refers.cli.prepare import main as prepare_main
    from refers.data.images import open_grey
    from refers.finetune.data import build_dataset
    from refers.prepare.common import image_root_of
    from refers.prepare.layout import locate_image

    lists, prepared = tmp_path / "lists", tmp_path / "prepared"
    assert prepare_main(["nih", "--root", str(nih_synth), "--out", str(lists), "--images-out", str(prepared),
                         "--short-side", "40", "--workers", "1"]) == 0
    assert image_root_of(lists) == prepared.resolve() and (prepared / "SYNTHETIC.txt").is_file()
    dataset, images = build_dataset(_nih_setup(lists), lists / "train.txt", 32, train=False, skip_bad=False)
    image, label, index = dataset[0]
    assert image.dtype == torch.uint8 and image.shape == (1, 32, 32) and index == 0
    copy = open_grey(locate_image(prepared, images.paths[0]))
    original = open_grey(locate_image(nih_synth, images.paths[0]))
    assert min(copy.size) == 40 and original.size == (64, 64)
    np.testing.assert_array_equal(np.asarray(copy), np.asarray(original.resize(copy.size, Image.BILINEAR)))
    assert torch.equal(image, host_eval_transform(32)(copy))
    # --short-side 0 keeps the originals; images no larger than the short side are never copied.
    assert prepare_main(["nih", "--root", str(nih_synth), "--out", str(tmp_path / "l0"), "--short-side", "0"]) == 0
    assert image_root_of(tmp_path / "l0") == nih_synth.resolve()
    assert prepare_main(["nih", "--root", str(nih_synth), "--out", str(tmp_path / "l1"), "--images-out",
                         str(tmp_path / "p1"), "--short-side", "64"]) == 0
    assert image_root_of(tmp_path / "l1") == nih_synth.resolve() and not (tmp_path / "p1").exists()


def test_prepare_pack_and_fine_tuning_reads_it(nih_synth, tmp_path):
    from refers.cli.prepare import main as prepare_main
    from refers.data.lists import read_list
    from refers.finetune.data import build_dataset
    from refers.prepare.layout import locate_image

    lists = tmp_path / "lists"
    assert prepare_main(["nih", "--root", str(nih_synth), "--out", str(lists), "--short-side", "0"]) == 0
    pack = tmp_path / "packed"
    assert prepare_main(["pack", "--dataset", "nih", "--lists", str(lists), "--size", "24", "--workers", "1",
                         "--out", str(pack)]) == 0
    assert PackedImages(pack).meta["count"] == sum(len(read_list(lists / f"{s}.txt")) for s in ("train", "val", "test"))
    packed, images = build_dataset(_nih_setup(lists), lists / "test.txt", 16, train=False, skip_bad=False, packed=str(pack))
    image, label, index = packed[1]
    expected = host_eval_transform(16)(Image.fromarray(resized_grey(locate_image(nih_synth, images.paths[1]), 24)))
    assert torch.equal(image, expected) and torch.equal(label, torch.as_tensor(images.labels[1]))
    assert prepare_main(["pack", "--dataset", "nih", "--lists", str(lists), "--size", "4", "--out", str(pack)]) == 2

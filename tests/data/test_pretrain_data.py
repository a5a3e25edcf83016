"""The pre-training study dataset: view choice and order, the per-study flip, report pairing, batches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from refers.config import load_config
from refers.data.mimic_lists import Study, read_study_index, write_study_index
from refers.data.pretrain_dataset import FRONTAL, LATERAL, OTHER, StudyDataset, choose_views, collate_studies, view_kind
from refers.data.device_transforms import IMAGENET_MEAN, IMAGENET_STD, to_model_input
from refers.text.bert import train_wordpiece
from refers.text.report_tokenizer import ReportTokenizer, train_report_tokenizer

SIZE = 16
# study id -> (views, report)
STUDIES = {
    "1": (["LATERAL", "PA", "AP"], "Left pleural effusion. No right pneumothorax."),
    "2": (["PA"], "Normal chest."),
    "3": (["PA", "LATERAL"], "Right lower lobe opacity."),
    "4": (["AP", "PA", "AP", "LL"], "Mild cardiomegaly, left greater than right."),
    "5": (["LATERAL"], "Left sided effusion on the lateral view."),
}


def _image(value: int, half: bool) -> Image.Image:
    """A flat grey image; with ``half`` its left half is black (to see a flip)."""
    pixels = np.full((SIZE, SIZE), value, dtype=np.uint8)
    if half:
        pixels[:, : SIZE // 2] = 0
    return Image.fromarray(pixels)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("mimic")
    images_root = root / "prepared"
    studies = []
    for sid, (views, text) in STUDIES.items():
        folder = f"files/p10/p1000000{sid}/s5000000{sid}"
        paths = []
        for i, _ in enumerate(views):
            path = images_root / folder / f"view{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            _image(40 + 20 * i + int(sid), half=sid == "1").save(path)  # value identifies the image
            paths.append(path)
        studies.append(Study(sid, f"1000000{sid}", folder, paths, views, text=text, split="train"))
    index = root / "lists" / "train_studies.jsonl"
    index.parent.mkdir()
    write_study_index(index, studies, images_root)
    texts = [text for _, text in STUDIES.values()] * 10
    tokenizer = ReportTokenizer(train_report_tokenizer(texts, root / "tok" / "reports_bpe.model", vocab_size=80))
    from transformers import AutoTokenizer

    bert_tokenizer = AutoTokenizer.from_pretrained(str(train_wordpiece(texts, root / "tok" / "wordpiece", 80)))
    return {"root": root, "images": images_root, "index": index, "tokenizer": tokenizer, "bert": bert_tokenizer}


def _cfg(data, *overrides):
    return load_config(None, [
        "DATA.TRAIN_LIST", str(data["index"]), "DATA.VAL_LIST", str(data["index"]), "DATA.IMAGE_ROOT", str(data["images"]),
        "DATA.IMAGE_CROP_SIZE", str(SIZE), "DATA.MAX_CAPTION_LENGTH", "16", "DATA.BERT_MAX_LENGTH", "16",
        "DATA.CROP_SCALE", "[1, 1]", "DATA.CROP_RATIO", "[1, 1]", "DATA.COLOR_JITTER_PROB", "0", *overrides,
    ])


def _dataset(data, split="train", *overrides, **kwargs):
    return StudyDataset(_cfg(data, *overrides), split, data["tokenizer"], data["bert"], **kwargs)


def _pixel_values(images: torch.Tensor) -> list[int]:
    """The grey value of each view (normalised on the device as in training, then undone), read at the right edge."""
    assert images.dtype == torch.uint8 and images.shape[1] == 1  # handed over grey, as uint8
    images = to_model_input(images, "cpu")
    assert images.dtype == torch.float32 and images.shape[1] == 3
    grey = images[:, 0, :, -1] * IMAGENET_STD[0] + IMAGENET_MEAN[0]
    return [int(round(v * 255)) for v in grey.mean(dim=1).tolist()]


def test_view_kinds_and_choice():
    assert [view_kind(v) for v in ["PA", "AP", "AP AXIAL", "LATERAL", "LL", "", "LAO"]] == [
        FRONTAL, FRONTAL, FRONTAL, LATERAL, LATERAL, OTHER, OTHER]
    # One of each kind first, then the rest; sorted frontal, lateral, other; repetition only when short.
    assert choose_views([LATERAL, FRONTAL, FRONTAL], 3) == [1, 2, 0]
    assert choose_views([FRONTAL, FRONTAL, FRONTAL, LATERAL], 3) == [0, 1, 3]
    assert choose_views([FRONTAL, LATERAL], 3) == [0, 0, 1]
    assert choose_views([OTHER], 3) == [0, 0, 0]
    assert choose_views([FRONTAL, FRONTAL, LATERAL], 3, preference=[1, 2, 0]) == [1, 0, 2]


def test_validation_is_deterministic_and_ordered(data):
    dataset = _dataset(data, "val")
    first = dataset[0]
    assert first["images"].shape == (3, 1, SIZE, SIZE) and first["images"].dtype == torch.uint8 and first["views"] == [1, 2, 0]
    torch.testing.assert_close(first["images"], dataset[0]["images"])
    assert not first["flipped"] and first["report"] == STUDIES["1"][1]
    assert _pixel_values(dataset[1]["images"]) == [42] * 3  # one image, repeated
    assert dataset[2]["views"] == [0, 0, 1]
    # 3 frontal + 1 lateral: the lateral is always among the views.
    assert dataset[3]["views"] == [0, 1, 3]
    assert _pixel_values(dataset[3]["images"]) == [44, 64, 104]


def test_training_views_are_distinct_random_within_kind_and_frontal_first(data):
    dataset = _dataset(data, "train", "DATA.HORIZONTAL_FLIP", "false")
    torch.manual_seed(0)
    seen = set()
    for _ in range(30):
        views = dataset[3]["views"]
        assert len(set(views)) == 3 and views[-1] == 3  # distinct; the lateral last
        seen.add(tuple(views[:2]))
    assert len(seen) > 1  # frontal views drawn at random
    assert dataset[0]["views"] in ([1, 2, 0], [2, 1, 0])


def test_one_flip_per_study_and_the_report_follows(data):
    dataset = _dataset(data, "train")
    torch.manual_seed(1)
    outcomes = set()
    for _ in range(20):
        sample = dataset[0]
        sample["images"] = sample["images"].float()
        right_edge = sample["images"][:, 0, :, -1].mean().item()
        left_edge = sample["images"][:, 0, :, 0].mean().item()
        per_view_flipped = [(s[0, :, 0].mean() > s[0, :, -1].mean()).item() for s in sample["images"]]
        assert len(set(per_view_flipped)) == 1  # all views or none
        assert per_view_flipped[0] == sample["flipped"] == (left_edge > right_edge)
        expected = "Right pleural effusion. No left pneumothorax." if sample["flipped"] else STUDIES["1"][1]
        assert sample["report"] == expected
        ids = data["tokenizer"].encode(expected, 16)
        assert sample["caption_ids"][: len(ids)].tolist() == ids
        bert = data["bert"](expected, max_length=16, truncation=True, padding="max_length")
        assert sample["bert_input_ids"].tolist() == bert["input_ids"]  # also when read from the token cache
        assert sample["bert_attention_mask"].tolist() == bert["attention_mask"]
        outcomes.add(sample["flipped"])
    assert outcomes == {True, False}
    # A lateral-only study may flip, but its report keeps its sides.
    torch.manual_seed(2)
    assert {dataset[4]["report"] for _ in range(10)} == {STUDIES["5"][1]}
    no_flip = _dataset(data, "train", "DATA.HORIZONTAL_FLIP", "false")
    assert not any(no_flip[0]["flipped"] for _ in range(10))


def test_token_cache_is_bounded_and_returns_fresh_tensors(data, monkeypatch):
    import refers.data.pretrain_dataset as pretrain_dataset

    monkeypatch.setattr(pretrain_dataset, "TOKEN_CACHE_SIZE", 2)
    dataset = _dataset(data, "val")
    first = dataset[0]
    first["caption_ids"].fill_(0)  # a caller writing into its batch must not change the cache
    for i in range(len(dataset)):
        dataset[i]
        assert len(dataset._token_cache) <= 2
    again = dataset[0]
    ids = data["tokenizer"].encode(again["report"], 16)
    assert again["caption_ids"][: len(ids)].tolist() == ids


def test_shuffled_reports_are_a_fixed_permutation(data):
    plain = _dataset(data, "val")
    shuffled = _dataset(data, "val", shuffle_reports=True)
    again = _dataset(data, "val", shuffle_reports=True)
    reports = [shuffled[i]["report"] for i in range(len(shuffled))]
    assert reports == [again[i]["report"] for i in range(len(again))]
    assert sorted(reports) == sorted(plain[i]["report"] for i in range(len(plain)))
    assert reports != [plain[i]["report"] for i in range(len(plain))]
    other_seed = _dataset(data, "val", "RANDOM_SEED", "7", shuffle_reports=True)
    assert [other_seed[i]["report"] for i in range(len(other_seed))] != reports


def test_collate_trims_padding_columns(data):
    dataset = _dataset(data, "val")
    batch = collate_studies([dataset[i] for i in range(len(dataset))])
    assert batch["images"].shape == (5, 3, 1, SIZE, SIZE) and batch["images"].dtype == torch.uint8
    lengths = batch["caption_mask"].sum(dim=1)
    assert batch["caption_ids"].shape[1] == lengths.max() <= 16
    assert batch["caption_mask"].dtype == torch.bool and batch["bert_attention_mask"].dtype == torch.long
    for row, n in zip(batch["caption_ids"], lengths.tolist()):
        assert row[0] == 1 and row[n - 1] == 2 and set(row[n:].tolist()) <= {4}
    assert batch["bert_input_ids"].shape == batch["bert_attention_mask"].shape
    assert batch["bert_attention_mask"].sum(dim=1).max() == batch["bert_input_ids"].shape[1]
    assert batch["study_ids"] == ["1", "2", "3", "4", "5"]


def test_original_caption_list_and_errors(data, tmp_path):
    captions = tmp_path / "train_img_caption_patients.txt"
    captions.write_text("./data/MIMIC//data/files/p10/p10000003/s50000003/\tLeft effusion.\n")
    dataset = _dataset(data, "train", "DATA.TRAIN_LIST", str(captions))
    torch.manual_seed(0)
    samples = [dataset[0] for _ in range(12)]
    assert all(len(set(s["views"])) == 2 for s in samples)  # both images, one repeated
    # Unknown views count as frontal for the report swap (as the original did).
    assert {s["report"] for s in samples if s["flipped"]} == {"Right effusion."}
    with pytest.raises(ValueError, match="split"):
        _dataset(data, "test")
    with pytest.raises(FileNotFoundError):
        _dataset(data, "train", "DATA.TRAIN_LIST", str(tmp_path / "none.jsonl"))
    studies = read_study_index(data["index"], data["images"])
    for study in studies:
        study.text = ""
    with pytest.raises(ValueError, match="no usable"):
        StudyDataset(_cfg(data), "train", data["tokenizer"], data["bert"], studies=studies)


def test_image_root_from_dataset_yaml(data, tmp_path):
    import yaml

    from refers.data.pretrain_dataset import resolve_image_root

    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "dataset.yaml").write_text(yaml.safe_dump({"image_root": str(data["images"])}))
    cfg = _cfg(data, "DATA.IMAGE_ROOT", "")
    assert resolve_image_root(cfg, lists / "train_studies.jsonl") == Path(data["images"]).resolve()

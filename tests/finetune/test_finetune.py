"""Fine-tuning, testing and prediction on tiny synthetic list datasets (in-process, single process)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score

from refers.cli.finetune import main as finetune_main
from refers.cli.predict import main as predict_main
from refers.cli.test import main as evaluate_main
from refers.data.registry import get_dataset
from refers.eval.predictions import read_prediction_file
from tests.finetune_helpers import SIZES

@pytest.fixture
def datasets(finetune_datasets) -> dict[str, tuple[Path, Path]]:
    """The session's shared tiny datasets (tests/shared_data.py): read-only, copy before changing them."""
    return finetune_datasets


def common(datasets, dataset: str, out: Path, name: str = "run") -> list[str]:
    lists, data = datasets[dataset]
    return ["--name", name, "--dataset", dataset, "--list_dir", str(lists), "--data_root", str(data),
            "--output_dir", str(out / "output"), "--log_dir", str(out / "logs" / name), "--results_dir", str(out / "results"),
            "--model_type", "ViT-nano_8", "--img_size", "32", "--train_batch_size", "8", "--eval_batch_size", "16",
            "--num_workers", "0", "--warmup_steps", "1", "--learning_rate", "0.03"]


def flat_state(path: Path) -> dict[str, torch.Tensor]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    return state


def test_binary_train_test_predict(datasets, tmp_path, caplog):
    args = common(datasets, "Shenzhen_Tuberculosis", tmp_path)
    rc = finetune_main([*args, "--stage", "train", "--num_classes", "1", "--init", "scratch", "--num_steps", "4",
                        "--eval_every", "2", "--fp16", "--fp16_opt_level", "O2", "--loss_scale", "128"])
    assert rc == 0
    checkpoint = tmp_path / "output" / "run_bestauc_checkpoint.bin"
    state = flat_state(checkpoint)
    assert state["head.weight"].shape == (1, 64) and "blocks.1.attn.qkv.weight" in state
    meta = json.loads((tmp_path / "output" / "run_bestauc_checkpoint.bin.json").read_text())
    assert meta["classes"] == ["Tuberculosis"] and meta["img_size"] == 32 and meta["synthetic"] is True
    rows = (tmp_path / "logs" / "run" / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["2", "4"]  # validated at --eval_every and at the end
    assert "fp32 on the CPU" in caplog.text

    assert evaluate_main(["--pretrained_dir", str(checkpoint), "--results_dir", str(tmp_path / "results"), "--num_workers", "0"]) == 0
    folder = tmp_path / "results" / "Shenzhen_Tuberculosis" / "data100" / "REFERS" / "seed42"
    labels, probs = read_prediction_file(folder / "Tuberculosis.txt")
    lists, data = datasets["Shenzhen_Tuberculosis"]
    test_lines = (lists / "test.txt").read_text().split()
    expected = [float(test_lines[i + 2]) for i in range(0, len(test_lines), 3)]  # the second one-hot column
    assert labels.tolist() == expected
    # Independent forward pass of the first test image.
    from refers.models.vit import build_vit

    model = build_vit("ViT-nano_8", 32, num_classes=1)
    model.load_state_dict(state)
    pixels = np.asarray(Image.open(data / "images_001" / "test_00.png").convert("RGB"), dtype=np.float32) / 255
    mean, std = torch.tensor([0.485, 0.456, 0.406])[:, None, None], torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    x = (torch.from_numpy(pixels).permute(2, 0, 1) - mean) / std
    assert torch.sigmoid(model.eval()(x[None])).item() == pytest.approx(probs[0], abs=1e-5)
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["mean_auc"] == pytest.approx(roc_auc_score(labels, probs))
    assert summary["mean_auc_ci95"][0] <= summary["mean_auc"] <= summary["mean_auc_ci95"][1]
    assert (folder / "summary.txt").read_text().startswith("SYNTHETIC")
    assert (folder / "roc.png").stat().st_size > 1000
    record = json.loads((folder / "run_record.json").read_text())
    assert record["checkpoint"]["sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert record["test_list"]["sha256"] == hashlib.sha256((lists / "test.txt").read_bytes()).hexdigest()

    out = tmp_path / "preds.csv"
    assert predict_main(["--checkpoint", str(checkpoint), "--images", str(data / "images_001" / "test_00.png"),
                         str(data / "images_001" / "test_01.png"), "--out", str(out)]) == 0
    csv_rows = [line.split(",") for line in out.read_text().splitlines()]
    assert csv_rows[0] == ["image", "Tuberculosis"] and len(csv_rows) == 3
    assert float(csv_rows[1][1]) == pytest.approx(probs[0], abs=1e-6)

    # --method is joined onto the results folder: one that climbs out of it is refused before anything is written.
    escape = ["--pretrained_dir", str(checkpoint), "--results_dir", str(tmp_path / "results" / "deep"), "--num_workers", "0"]
    assert evaluate_main([*escape, "--method", "../../escaped"]) == 2
    assert not list(tmp_path.rglob("escaped")) and not (tmp_path / "results" / "deep").exists()


def test_multiclass_trains_and_writes_safe_names(datasets, tmp_path):
    args = common(datasets, "VinBigData_Chest_X-ray", tmp_path)
    assert finetune_main([*args, "--num_classes", "14", "--init", "scratch", "--num_steps", "3"]) == 0
    checkpoint = tmp_path / "output" / "run_bestloss_checkpoint.bin"
    from refers.engine.train_state import seed_everything
    from refers.models.vit import build_vit

    seed_everything(42)
    initial = build_vit("ViT-nano_8", 32, num_classes=14).state_dict()
    trained = flat_state(checkpoint)
    assert not torch.equal(initial["head.weight"], trained["head.weight"])  # the run trained
    assert evaluate_main(["--pretrained_dir", str(checkpoint), "--results_dir", str(tmp_path / "results"), "--num_workers", "0"]) == 0
    folder = tmp_path / "results" / "VinBigData_Chest_X-ray" / "data100" / "REFERS" / "seed42"
    names = sorted(p.name for p in folder.glob("*.txt") if p.name != "summary.txt" and p.name != "SYNTHETIC.txt")
    assert len(names) == 14 and "Nodule-Mass.txt" in names
    assert all(len(read_prediction_file(folder / n)[0]) == SIZES["test"] for n in names)
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["per_class_auc"]["Infiltration"] is None  # one label value: left out, not a crash
    assert "undefined" in (folder / "summary.txt").read_text()


def test_nih_layout_fraction_and_freeze(datasets, tmp_path, caplog):
    args = common(datasets, "NIH_ChestX-ray", tmp_path)
    caplog.set_level("INFO")
    rc = finetune_main([*args, "--init", "scratch", "--num_steps", "2", "--data_volume", "50", "--data_seed", "1", "--freeze_backbone"])
    assert rc == 0
    assert "train_50_seed1.txt (12 images)" in caplog.text
    meta = json.loads((tmp_path / "output" / "run_bestauc_checkpoint.bin.json").read_text())
    assert (meta["data_volume"], meta["data_seed"]) == (50, 1)
    trained = flat_state(tmp_path / "output" / "run_bestauc_checkpoint.bin")
    from refers.engine.train_state import seed_everything
    from refers.models.vit import build_vit

    seed_everything(42)
    initial = build_vit("ViT-nano_8", 32, num_classes=14).state_dict()
    assert torch.equal(initial["blocks.0.mlp.fc1.weight"], trained["blocks.0.mlp.fc1.weight"])  # frozen
    assert not torch.equal(initial["head.weight"], trained["head.weight"])


def test_missing_fraction_file_is_a_clear_error(datasets, tmp_path, capsys):
    args = common(datasets, "NIH_ChestX-ray", tmp_path)
    assert finetune_main([*args, "--init", "scratch", "--data_volume", "10", "--data_seed", "3"]) == 1
    assert "no train_10_seed3.txt" in capsys.readouterr().err


def test_seed_reproducible(datasets, tmp_path):
    def run(name: str, seed: str) -> dict[str, torch.Tensor]:
        args = common(datasets, "Shenzhen_Tuberculosis", tmp_path, name=name)
        assert finetune_main([*args, "--init", "scratch", "--num_steps", "2", "--seed", seed]) == 0
        return flat_state(tmp_path / "output" / f"{name}_bestloss_checkpoint.bin")

    a, b, c = run("a", "1"), run("b", "1"), run("c", "2")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["head.weight"], c["head.weight"])


@contextlib.contextmanager
def interrupted_at(monkeypatch, call: int):
    """Inside the block, the ``call``-th training loss raises KeyboardInterrupt (Ctrl-C mid-run)."""
    import refers.finetune.train as train_module

    real_loss, calls = train_module.classification_loss, []

    def interrupted(*a, **k):
        calls.append(1)
        if len(calls) == call:
            raise KeyboardInterrupt
        return real_loss(*a, **k)

    monkeypatch.setattr(train_module, "classification_loss", interrupted)
    yield
    monkeypatch.setattr(train_module, "classification_loss", real_loss)


def test_resume_continues_exactly(datasets, tmp_path, monkeypatch):
    """An interrupted run resumed with --resume ends where the uninterrupted one does (bit for bit)."""

    def run(name: str, *extra: str) -> int:
        args = common(datasets, "Shenzhen_Tuberculosis", tmp_path, name=name)
        return finetune_main([*args, "--init", "scratch", "--num_steps", "6", "--eval_every", "3", *extra])

    assert run("full") == 0
    with interrupted_at(monkeypatch, 5):
        assert run("cut") == 130
    assert torch.load(tmp_path / "output" / "cut_last.pth", weights_only=True)["step"] == 3
    assert run("cut", "--resume") == 0
    full = torch.load(tmp_path / "output" / "full_last.pth", weights_only=True)
    cut = torch.load(tmp_path / "output" / "cut_last.pth", weights_only=True)
    assert cut["step"] == 6
    assert all(torch.equal(full["model"][k], cut["model"][k]) for k in full["model"])


def test_non_finite_loss_stops(datasets, tmp_path, monkeypatch, capsys):
    real = torch.nn.functional.binary_cross_entropy_with_logits
    monkeypatch.setattr(torch.nn.functional, "binary_cross_entropy_with_logits", lambda *a, **k: real(*a, **k) * float("nan"))
    args = common(datasets, "Shenzhen_Tuberculosis", tmp_path)
    assert finetune_main([*args, "--init", "scratch", "--num_steps", "3"]) == 1
    assert "training loss is nan at step 1" in capsys.readouterr().err


def test_mean_patch_token_head_is_kept_through_test(datasets, tmp_path):
    args = common(datasets, "Shenzhen_Tuberculosis", tmp_path)
    assert finetune_main([*args, "--num_classes", "1", "--init", "scratch", "--num_steps", "2",
                          "--global_pool", "avg", "--min_crop_area", "0.5"]) == 0
    checkpoint = tmp_path / "output" / "run_bestauc_checkpoint.bin"
    meta = json.loads((tmp_path / "output" / "run_bestauc_checkpoint.bin.json").read_text())
    assert meta["global_pool"] == "avg" and meta["config"]["min_crop_area"] == 0.5
    assert evaluate_main(["--pretrained_dir", str(checkpoint), "--results_dir", str(tmp_path / "results"), "--num_workers", "0"]) == 0
    _, probs = read_prediction_file(tmp_path / "results" / "Shenzhen_Tuberculosis" / "data100" / "REFERS" / "seed42" / "Tuberculosis.txt")
    # Independent forward pass: the head reads the mean of the normalised patch tokens.
    from refers.models.vit import build_vit

    model = build_vit("ViT-nano_8", 32, num_classes=1).eval()
    model.load_state_dict(flat_state(checkpoint))
    lists, data = datasets["Shenzhen_Tuberculosis"]
    pixels = np.asarray(Image.open(data / "images_001" / "test_00.png").convert("RGB"), dtype=np.float32) / 255
    mean, std = torch.tensor([0.485, 0.456, 0.406])[:, None, None], torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    x = ((torch.from_numpy(pixels).permute(2, 0, 1) - mean) / std)[None]
    with torch.no_grad():
        tokens = model.forward_features(x)
        by_mean = torch.sigmoid(model.head(tokens[:, 1:].mean(dim=1))).item()
        by_cls = torch.sigmoid(model.head(tokens[:, 0])).item()
    assert probs[0] == pytest.approx(by_mean, abs=1e-5) and by_mean != pytest.approx(by_cls, abs=1e-4)


def test_min_crop_area_bounds_the_random_crop():
    from refers.data.device_transforms import host_train_transform

    pattern = np.zeros((40, 40), dtype=np.uint8)
    pattern[:, :10] = 255  # a left-edge stripe: any crop smaller than the image changes the picture
    image = Image.fromarray(pattern)
    whole = torch.from_numpy(pattern)[None]
    torch.manual_seed(0)
    crops = [host_train_transform(40, min_crop_area=1.0)(image) for _ in range(20)]
    assert all(torch.equal(c, whole) or torch.equal(c, whole.flip(-1)) for c in crops)
    small = [host_train_transform(40, min_crop_area=0.1)(image) for _ in range(20)]
    assert not all(torch.equal(c, whole) or torch.equal(c, whole.flip(-1)) for c in small)


def test_min_crop_area_defaults_to_the_original_everywhere():
    from refers.data.device_transforms import ORIGINAL_MIN_CROP_AREA
    from refers.finetune.config import build_parser

    assert ORIGINAL_MIN_CROP_AREA == 0.08  # torchvision's RandomResizedCrop default
    assert build_parser("train.py").parse_args(["--name", "x"]).min_crop_area == ORIGINAL_MIN_CROP_AREA


def test_bad_inputs_are_clear_errors(datasets, tmp_path, capsys):
    args = common(datasets, "Shenzhen_Tuberculosis", tmp_path)
    assert finetune_main([*args, "--num_classes", "2", "--init", "scratch"]) == 2
    assert "--num_classes 2 does not fit Shenzhen_Tuberculosis" in capsys.readouterr().err
    assert finetune_main([*args, "--pretrained_dir", str(tmp_path / "nope.pth")]) == 1
    assert "--init scratch" in capsys.readouterr().err
    assert finetune_main(args) == 2
    assert "--pretrained_dir is required" in capsys.readouterr().err
    assert finetune_main([*args, "--init", "scratch", "--min_crop_area", "0"]) == 2
    assert "--min_crop_area must be in (0, 1]" in capsys.readouterr().err
    assert finetune_main([*args, "--init", "scratch", "--model_type", "resnet18", "--global_pool", "avg"]) == 2
    assert "--global_pool avg applies to the ViTs" in capsys.readouterr().err
    lists, data = datasets["Shenzhen_Tuberculosis"]
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("valid.txt", "test.txt"):
        (broken / name).write_text((lists / name).read_text())
    (broken / "train.txt").write_text((lists / "train.txt").read_text().replace("train_02.png", "gone.png"))
    bad = [a if a != str(lists) else str(broken) for a in args]
    assert finetune_main([*bad, "--init", "scratch", "--num_steps", "1"]) == 1
    err = capsys.readouterr().err
    assert "image images_001/gone.png not found" in err and "train.txt:3" in err


def test_unreadable_images_stop_or_are_skipped(datasets, tmp_path, caplog, capsys):
    lists, data = datasets["Shenzhen_Tuberculosis"]
    shutil.copytree(lists.parent, tmp_path / "copy")
    lists, data = tmp_path / "copy" / "lists", tmp_path / "copy" / "data"
    (data / "images_001" / "train_03.png").write_bytes(b"not a png")
    (data / "images_001" / "test_05.png").write_bytes(b"")
    args = common({"Shenzhen_Tuberculosis": (lists, data)}, "Shenzhen_Tuberculosis", tmp_path)
    assert finetune_main([*args, "--init", "scratch", "--num_steps", "3"]) == 1  # one epoch: every image is read
    err = capsys.readouterr().err
    assert "train_03.png" in err and "train.txt:4" in err
    caplog.set_level("WARNING")
    assert finetune_main([*args, "--init", "scratch", "--num_steps", "3", "--skip_bad_images"]) == 0
    assert "skipped unreadable image" in caplog.text and "train_03.png" in caplog.text
    checkpoint = str(tmp_path / "output" / "run_bestauc_checkpoint.bin")
    assert evaluate_main(["--pretrained_dir", checkpoint, "--results_dir", str(tmp_path / "results"), "--num_workers", "0"]) == 1
    assert "test.txt:6" in capsys.readouterr().err
    assert evaluate_main(["--pretrained_dir", checkpoint, "--results_dir", str(tmp_path / "results"), "--num_workers", "0",
                          "--skip_bad_images"]) == 0
    folder = tmp_path / "results" / "Shenzhen_Tuberculosis" / "data100" / "REFERS" / "seed42"
    assert len((folder / "Tuberculosis.txt").read_text().splitlines()) == SIZES["test"] - 1


def test_early_stopping_rule():
    """The original's rule: a counter of validations below the best (a tie resets it); stop when it exceeds the patience."""
    from refers.finetune.early_stopping import EarlyStopping

    stopper = EarlyStopping(patience=2)
    decisions = [stopper.update(auc, loss) for auc, loss in
                 [(0.0, 0.9), (0.4, 1.0), (0.3, 0.8), (0.4, 0.8), (0.3, 0.9), (float("nan"), 0.9), (0.3, 0.9)]]
    assert [d.new_best_auc for d in decisions] == [True, True, False, False, False, False, False]  # a first AUC of 0 is saved
    assert [d.new_best_loss for d in decisions] == [True, False, True, False, False, False, False]
    assert [d.counter for d in decisions] == [0, 0, 1, 0, 1, 2, 3]  # the tie at 0.4 resets; NaN counts as below
    assert [d.stop for d in decisions] == [False] * 6 + [True]


def test_readme_command_and_presets_parse(tmp_path):
    from refers.base.errors import UserError as UserError
    from refers.finetune.config import parse_args, presets_dir

    readme = ("--name caption_100 --stage train --model_type ViT-B_16 --num_classes 14 --pretrained_dir ../checkpoint/refers_checkpoint.pth "
              "--output_dir ./output/ --data_volume 100 --num_steps 60000 --eval_batch_size 512 --img_size 224 "
              "--learning_rate 1e-2 --warmup_steps 1000 --fp16 --fp16_opt_level O2 --train_batch_size 128").split()
    args = parse_args([*readme, "--local-rank=1"], "t")
    assert (args.num_steps, args.learning_rate, args.local_rank, args.fp16_opt_level, args.seed) == (60000, 0.01, 1, "O2", 42)
    assert parse_args([*readme, "--local_rank", "0"], "t").local_rank == 0
    assert parse_args(["--name", "x", "--config", "nih"], "t").num_steps == 60000
    assert parse_args(["--name", "x", "--config", "nih", "--data_volume", "1"], "t").num_steps == 3000
    assert parse_args(["--name", "x", "--config", "nih", "--num_steps", "7"], "t").num_steps == 7
    for preset in presets_dir().glob("*.yaml"):
        args = parse_args(["--name", "x", "--config", str(preset)], "t")
        assert args.num_classes == get_dataset(args.dataset).num_classes
    bad = tmp_path / "bad.yaml"
    bad.write_text("learning_rat: 0.1\n")
    with pytest.raises(UserError, match="learning_rat"):
        parse_args(["--name", "x", "--config", str(bad)], "t")


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_make_optimizer_first_step_matches_the_update_rule(name):
    """One step from zero state, against the update rules written out by hand (lr 0.1, weight decay 0.5)."""
    from refers.engine.optim import make_optimizer

    start, grad = torch.tensor([1.0, -2.0, 3.0]), torch.tensor([0.4, -0.1, 0.0])
    param = torch.nn.Parameter(start.clone())
    optimizer = make_optimizer([param], name, lr=0.1, weight_decay=0.5)
    param.grad = grad.clone()
    optimizer.step()
    if name == "sgd":  # coupled decay: the step is lr * (g + wd * p); the momentum buffer starts as that
        expected = start - 0.1 * (grad + 0.5 * start)
    else:  # decoupled decay, then m/sqrt(v) = g/|g| after bias correction on the first step
        expected = start * (1 - 0.1 * 0.5) - 0.1 * grad / (grad.abs() + 1e-8)
    assert torch.allclose(param.detach(), expected, atol=1e-6)


def test_adamw_fine_tuning_keeps_its_state_and_resumes_exactly(datasets, tmp_path, monkeypatch):
    """--optimizer adamw: the checkpoint holds AdamW's moments, and a resumed run ends bit for bit where the
    uninterrupted one does."""

    def run(name: str, *extra: str) -> int:
        args = common(datasets, "Shenzhen_Tuberculosis", tmp_path, name=name)
        return finetune_main([*args, "--init", "scratch", "--optimizer", "adamw", "--learning_rate", "0.001",
                              "--num_steps", "4", "--eval_every", "2", *extra])

    assert run("full") == 0
    full = torch.load(tmp_path / "output" / "full_last.pth", weights_only=True)
    moments = next(iter(full["optimizer"]["state"].values()))
    assert {"exp_avg", "exp_avg_sq"} <= set(moments) and "momentum_buffer" not in moments
    with interrupted_at(monkeypatch, 3):
        assert run("cut") == 130
    assert run("cut", "--resume") == 0
    cut = torch.load(tmp_path / "output" / "cut_last.pth", weights_only=True)
    assert all(torch.equal(full["model"][k], cut["model"][k]) for k in full["model"])

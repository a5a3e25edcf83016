"""The configuration engine: typed values and ranges, one ``_BASE_`` reader, did-you-mean errors that
exit 2 in one line, the frozen fine-tuning arguments, and sweep files checked before any run starts."""

from __future__ import annotations

import dataclasses
import math
import shutil
from pathlib import Path

import pytest
import yaml

from refers import sweep_runner
from refers.base.errors import UserError
from refers.base.paths import project_root
from refers.config import ConfigError, load_config
from refers.config.engine import Spec, read_yaml
from refers.finetune import config as fc

ROOT = project_root()


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err.strip()


# --- the engine ----------------------------------------------------------------------------------


def test_specs_check_types_choices_and_ranges():
    assert Spec(float, low=0, open_low=True).check("LR", 3) == 3.0 and isinstance(Spec(float).check("x", 3), float)
    assert Spec(list, item=float, length=2, ordered=True).check("R", [0, 1]) == [0.0, 1.0]
    assert Spec(int, nullable=True).check("n", None) is None
    cases = [
        (Spec(int), True, "n must be int, got True"),  # a YAML boolean is not a number
        (Spec(float, low=0, open_low=True), -1, "n must be > 0, got -1"),
        (Spec(float, low=0, open_low=True), 0.0, "n must be > 0, got 0.0"),
        (Spec(float), math.nan, "n must be a finite number, got nan"),
        (Spec(float), math.inf, "n must be a finite number, got inf"),
        (Spec(float, low=0, high=1, open_high=True), 1.0, "n must be in [0, 1), got 1.0"),
        (Spec(int, choices=(1, 10, 50, 100)), 7, "n must be 1, 10, 50 or 100, got 7"),
        (Spec(str, choices=("sgd", "adamw")), "adam", "n must be 'sgd' or 'adamw', got 'adam' (did you mean 'adamw'?)"),
        (Spec(list, item=float, length=2), [1], "n must be a list of 2 numbers, got [1]"),
        (Spec(list, item=float, ordered=True), [0.9, 0.1], "n must be [min, max] with min <= max"),
        (Spec(list, item=int, low=0), [0, -1], "n must be >= 0, got -1"),
        (Spec(str), None, "n must be str, got None"),
    ]
    for spec, value, message in cases:
        with pytest.raises(ConfigError) as caught:
            spec.check("n", value, "f.yaml")
        assert str(caught.value).startswith(f"f.yaml: {message}"), (str(caught.value), message)
        assert isinstance(caught.value, UserError) and caught.value.exit_code == 2


def test_one_base_reader_for_every_kind_of_file(tmp_path):
    (tmp_path / "a.yaml").write_text("x: {y: 1, z: 2}\nw: [1, 2]\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.yaml").write_text("_BASE_: ../a.yaml\nx: {y: 3}\nw: [5]\n")
    assert read_yaml(tmp_path / "sub" / "b.yaml") == {"x": {"y": 3, "z": 2}, "w": [5]}  # mappings merge, lists replace
    (tmp_path / "loop1.yaml").write_text("_BASE_: loop2.yaml\n")
    (tmp_path / "loop2.yaml").write_text("_BASE_: loop1.yaml\n")
    for text, message in [("[1, 2]\n", "must be a mapping of keys, not list"), ("a: [\n", "not valid YAML"),
                          ("_BASE_: 3\n", "_BASE_ must be the file name")]:
        (tmp_path / "bad.yaml").write_text(text)
        with pytest.raises(ConfigError, match=message) as caught:
            read_yaml(tmp_path / "bad.yaml")
        assert "\n" not in str(caught.value)
    (tmp_path / "latin1.yaml").write_bytes("name: Ä\n".encode("latin-1"))  # a byte that is not UTF-8
    with pytest.raises(ConfigError, match="byte 0xc4 at offset 6 is not UTF-8") as caught:
        read_yaml(tmp_path / "latin1.yaml")
    assert str(tmp_path / "latin1.yaml") in str(caught.value) and caught.value.exit_code == 2
    with pytest.raises(ConfigError, match="_BASE_ cycle"):
        read_yaml(tmp_path / "loop1.yaml")
    with pytest.raises(FileNotFoundError, match="sweep file not found"):
        read_yaml(tmp_path / "none.yaml", "sweep file")


# --- pre-training ranges (stretch: every numeric value checked at load time) -----------------------


@pytest.mark.parametrize("key, value, message", [
    ("OPTIM.LR", "nan", "OPTIM.LR must be a finite number, got nan"),
    ("OPTIM.LR", "-1", "OPTIM.LR must be > 0, got -1.0"),
    ("OPTIM.BATCH_SIZE", "0", "OPTIM.BATCH_SIZE must be > 0, got 0"),
    ("OPTIM.WARMUP_STEPS", "-5", "OPTIM.WARMUP_STEPS must be >= 0, got -5"),
    ("LOSS.LAMBDA", "1.5", "LOSS.LAMBDA must be in [0, 1], got 1.5"),
    ("OPTIM.MOMENTUM", "1", "OPTIM.MOMENTUM must be in [0, 1), got 1.0"),
    ("DATA.FLIP_PROB", "inf", "DATA.FLIP_PROB must be a finite number"),
    ("OPTIM.LOOKAHEAD.ALPHA", "0", "OPTIM.LOOKAHEAD.ALPHA must be in (0, 1], got 0.0"),
    ("DATA.CROP_RATIO", "1.0,0.5", "DATA.CROP_RATIO must be [min, max] with min <= max"),
])
def test_pretraining_values_are_range_checked_with_one_line_exit_2(key, value, message, capsys):
    from refers.cli.pretrain import main

    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        load_config(None, [key, value])
    assert main(["--config-override", key, value, "--num-gpus-per-machine", "0"]) == 2
    assert message in one_line_error(capsys)


def test_every_pretraining_rule_names_a_key_and_the_presets_fit_them():
    from refers.config import RULES, specs

    assert set(RULES) <= set(specs())
    for path in [*(ROOT / "configs" / "pretrain").glob("*.yaml"), ROOT / "configs" / "demo" / "pretrain.yaml"]:
        load_config(path)  # every value of every preset passes its rule


def test_a_yaml_value_of_the_wrong_type_names_the_file_and_key(tmp_path):
    (tmp_path / "p.yaml").write_text("OPTIM:\n  BATCH_SIZE: 8.5\n")
    with pytest.raises(ConfigError, match=r"p.yaml: OPTIM.BATCH_SIZE must be int, got 8.5"):
        load_config(tmp_path / "p.yaml")


# --- fine-tuning: frozen, resolved once --------------------------------------------------------------


README_NIH = ("--name caption_100 --stage train --model_type ViT-B_16 --num_classes 14 --pretrained_dir "
              "../checkpoint/refers_checkpoint.pth --output_dir ./output/ --data_volume 100 --num_steps 60000 "
              "--eval_batch_size 512 --img_size 224 --learning_rate 1e-2 --warmup_steps 1000 --fp16 --fp16_opt_level O2 "
              "--train_batch_size 128").split()


def test_parsed_arguments_are_frozen_with_the_namespace_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = fc.parse_args([*README_NIH, "--local-rank=1", "--list_dir", "lists", "--data_root", "img"], "train.py")
    assert isinstance(args, fc.FinetuneArgs)
    with pytest.raises(dataclasses.FrozenInstanceError):
        args.img_size = 64  # type: ignore[misc]
    namespace = fc.build_parser("train.py").parse_args(README_NIH)  # what argparse alone gives
    assert [f.name for f in dataclasses.fields(args)] == list(vars(namespace))
    # what train() used to change itself is resolved here: absolute folders, the default image size
    assert (args.list_dir, args.data_root) == (str(tmp_path / "lists"), str(tmp_path / "img"))
    assert fc.parse_args(["--name", "x"], "t").img_size == 224
    assert (args.local_rank, args.fp16_opt_level, args.fp16, args.learning_rate) == (1, "O2", True, 0.01)
    tested = fc.parse_args(["--list_dir", "mine"], "test.py", "test")
    assert (tested.img_size, tested.list_dir, tested.name) == (None, "mine", "caption_100")  # the checkpoint tells


def test_test_arguments_are_completed_from_the_checkpoint_without_changing_the_parsed_ones():
    args = fc.parse_args(["--pretrained_dir", "a.bin", "--data_seed", "0"], "test.py", "test")
    settings = {"model_type": "ViT-micro_8", "img_size": 64, "num_classes": 2,
                "metadata": {"dataset": "custom", "classes": ["p", "q"], "data_volume": 10, "seed": 5, "data_seed": 1,
                             "config": {"list_dir": "/abs/lists", "data_root": "/abs/root"}}}
    done = fc.with_checkpoint(args, settings)
    assert (done.dataset, done.classes, done.list_dir, done.data_root, done.data_volume, done.seed, done.data_seed) == \
        ("custom", "p,q", "/abs/lists", "/abs/root", 10, 5, 0)  # --data_seed 0 given: kept
    assert (done.model_type, done.img_size, done.num_classes) == ("ViT-micro_8", 64, 2)
    assert (args.dataset, args.img_size, args.seed) == (None, None, None)


@pytest.mark.parametrize("flags, message", [
    (["--learning_rate", "nan"], "--learning_rate must be a finite number, got nan"),
    (["--learning_rate", "-1"], "--learning_rate must be > 0, got -1.0"),
    (["--train_batch_size", "0"], "--train_batch_size must be >= 1, got 0"),
    (["--eval_batch_size", "-2"], "--eval_batch_size must be >= 1, got -2"),
    (["--weight_decay", "-0.1"], "--weight_decay must be >= 0, got -0.1"),
    (["--max_grad_norm", "inf"], "--max_grad_norm must be a finite number, got inf"),
    (["--num_classes", "0"], "--num_classes must be >= 1, got 0"),
    (["--min_crop_area", "1.5"], "--min_crop_area must be in (0, 1], got 1.5"),
    (["--fp16", "--bf16"], "--fp16 and --bf16 exclude each other"),
])
def test_finetuning_values_are_range_checked_with_one_line_exit_2(flags, message, capsys):
    from refers.cli.finetune import main

    assert main(["--name", "x", "--dataset", "NIH_ChestX-ray", *flags]) == 2
    assert one_line_error(capsys) == f"refers finetune: error: {message}"


def test_a_misspelt_flag_on_the_command_line_names_the_nearest_one(capsys):
    from refers.cli.finetune import main

    with pytest.raises(SystemExit) as caught:  # argparse's usage error, as before, with a hint
        main(["--name", "x", "--num_stepz", "3"])
    assert caught.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "refers finetune: error: unrecognized arguments: --num_stepz 3 (did you mean '--num_steps'?)")


def write_preset(tmp_path: Path, text: str) -> str:
    path = tmp_path / "preset.yaml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("text, message", [
    ("learning_rat: 0.1\n", "unknown fine-tuning flag 'learning_rat' (did you mean 'learning_rate'?)"),
    ("num_steps: many\n", "num_steps must be int, got 'many'"),
    ("data_volume: 7\n", "data_volume must be 1, 10, 50 or 100, got 7"),
    ("decay_type: cosin\n", "decay_type must be 'cosine' or 'linear', got 'cosin' (did you mean 'cosine'?)"),
    ("fp16: yes please\n", "fp16 must be bool, got 'yes please'"),
    ("train_batch_size: null\n", "train_batch_size must be int, got None"),
    ("by_data_volume:\n  5: {num_steps: 3}\n", "by_data_volume: unknown data volume '5'"),
    ("by_data_volume:\n  10: {num_step: 3}\n", "by_data_volume.10: unknown fine-tuning flag 'num_step' (did you mean 'num_steps'?)"),
    ("config: nih\n", "unknown fine-tuning flag 'config'"),
])
def test_bad_presets_are_refused_naming_the_key(tmp_path, capsys, text, message):
    from refers.cli.finetune import main

    assert main(["--name", "x", "--config", write_preset(tmp_path, text)]) == 2
    assert message in one_line_error(capsys)


def test_preset_numbers_written_as_text_and_base_files(tmp_path):
    (tmp_path / "base.yaml").write_text("learning_rate: 3e-2\nnum_steps: 9\n")  # YAML reads 3e-2 as text
    preset = write_preset(tmp_path, "_BASE_: base.yaml\nnum_steps: 5\nby_data_volume:\n  1: {num_steps: 2}\n")
    args = fc.parse_args(["--name", "x", "--config", preset], "t")
    assert (args.learning_rate, args.num_steps) == (0.03, 5)
    assert fc.parse_args(["--name", "x", "--config", preset, "--data_volume", "1"], "t").num_steps == 2


# --- sweep files: checked when they load, before any run ------------------------------------------


GRID = {"name": "t", "seeds": [0, 1], "train": {"model_type": "ViT-nano_8", "num_steps": 4},
        "search": {"learning_rate": [0.1, 0.01]},
        "arms": {"REFERS": {"train": {"pretrained_dir": "enc.pth"}}, "scratch": {"train": {"init": "scratch"}}},
        "datasets": {"NIH_ChestX-ray": {"fractions": [1, 100]}, "Shenzhen_Tuberculosis": {}}}


def write_grid(tmp_path: Path, grid: dict) -> Path:
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump({"execution": "in-process", **grid, "output_dir": str(tmp_path / "runs"),
                                    "results_dir": str(tmp_path / "res")}), encoding="utf-8")
    return path


def with_change(path: tuple, value) -> dict:
    grid = yaml.safe_load(yaml.safe_dump(GRID))
    node = grid
    for part in path[:-1]:
        node = node.setdefault(part, {})
    node[path[-1]] = value
    return grid


BAD_GRIDS = [
    (("train", "num_stepz"), 5, "grid.yaml: train: unknown fine-tuning flag 'num_stepz' (did you mean 'num_steps'?)"),
    (("test", "eval_batch_siz"), 5, "grid.yaml: test: unknown fine-tuning flag 'eval_batch_siz' (did you mean 'eval_batch_size'?)"),
    (("datasets", "NIH_ChestX-ray", "train"), {"num_stepz": 5},
     "grid.yaml: datasets.NIH_ChestX-ray.train: unknown fine-tuning flag 'num_stepz' (did you mean 'num_steps'?)"),
    (("arms", "scratch", "test"), {"devic": "cpu"}, "arms.scratch.test: unknown fine-tuning flag 'devic' (did you mean 'device'?)"),
    (("datasets", "NIH_ChestX-ray", "by_fraction"), {1: {"train": {"warmup_step": 1}}},
     "datasets.NIH_ChestX-ray.by_fraction.1.train: unknown fine-tuning flag 'warmup_step' (did you mean 'warmup_steps'?)"),
    (("search",), {"learning_rat": [0.1]}, "grid.yaml: search: unknown fine-tuning flag 'learning_rat' (did you mean 'learning_rate'?)"),
    (("search",), [{"learning_rate": 0.1}, {"freeze_backbon": True}],
     "grid.yaml: search[1]: unknown fine-tuning flag 'freeze_backbon' (did you mean 'freeze_backbone'?)"),
    (("train", "data_volume"), 7, "grid.yaml: train: data_volume must be 1, 10, 50 or 100, got 7"),
    (("train", "num_steps"), 2.5, "grid.yaml: train: num_steps must be int, got '2.5'"),
    (("train", "num_steps"), True, "grid.yaml: train: num_steps takes one value (int), got True"),
    (("train", "freeze_backbone"), 3, "grid.yaml: train: freeze_backbone is a switch"),
    (("train", "decay_type"), "cosin", "train: decay_type must be 'cosine' or 'linear', got 'cosin'"),
    (("search",), {"learning_rate": [0.1, -1]}, "grid.yaml: search: learning_rate must be > 0, got -1.0"),
    (("search",), {"learning_rate": [0.1, "fast"]}, "grid.yaml: search: learning_rate must be float, got 'fast'"),
    (("datasets", "NIH_ChestX-ray", "fractions"), [1, 7], "datasets.NIH_ChestX-ray.fractions must be 1, 10, 50 or 100, got 7"),
    (("seeds",), [0, "one"], "grid.yaml: seeds must be a list of integers"),
    (("execution",), "threads", "execution must be 'subprocess' or 'in-process', got 'threads'"),
    (("arms", "scratch", "tran"), {}, "arms.scratch: unknown key 'tran' (did you mean 'train'?)"),
    # what only the whole command line shows: parsed as train.py / test.py will parse it
    (("train", "fp16"), True, "]: --fp16 and --bf16 exclude each other"),
    (("train", "config"), "nhi", "--config nhi: no such file or preset"),
]


@pytest.mark.parametrize("dry_run", [True, False])
@pytest.mark.parametrize("where, value, message", BAD_GRIDS)
def test_bad_sweep_files_are_refused_before_any_run(tmp_path, monkeypatch, capsys, where, value, message, dry_run):
    from refers.cli.sweep import main

    grid = with_change(where, value)
    if where == ("train", "fp16"):
        grid["arms"]["REFERS"]["train"]["bf16"] = True
    started = []
    monkeypatch.setattr(sweep_runner, "run_sweep", lambda *a, **k: started.append(a))  # nothing may start
    assert main([str(write_grid(tmp_path, grid)), *(["--dry-run"] if dry_run else [])]) == 2
    assert message in one_line_error(capsys)
    assert not started and not (tmp_path / "runs").exists()


def test_good_sweep_values_as_yaml_writes_them(tmp_path):
    from refers.sweep import load_config, plan_training

    grid = with_change(("train", "learning_rate"), "3e-2")  # YAML 1.1 reads 3e-2 as text; train.py reads it as 0.03
    grid["train"].update({"fp16": False, "eval_every": None, "freeze_backbone": True, "device": "cpu", "data_volume": 10})
    runs = plan_training(load_config(write_grid(tmp_path, grid)))
    assert runs and all("--fp16" not in r.args and "--freeze_backbone" in r.args for r in runs)


def test_shipped_sweeps_and_demo_profiles_load(monkeypatch):
    from refers.demo import load_profile
    from refers.sweep import load_config

    for path in (ROOT / "configs" / "sweep").glob("*.yaml"):
        load_config(path, placeholders={"${OUT}": "out"})  # the demo's templates; the others have none
    for name in ("default", "full", "quick"):
        load_profile(name)


# --- demo profiles -------------------------------------------------------------------------------


@pytest.mark.parametrize("change, message", [
    ("studys: 10\n", "unknown key 'studys' (did you mean 'studies'?)"),
    ("studies: lots\n", "studies must be int, got 'lots'"),
    ("seeds: [0, -1]\n", "seeds must be >= 0, got -1"),
    ("pretrain_overrides: {OPTIM.LRR: 1}\n", "unknown config key 'OPTIM.LRR' (did you mean 'OPTIM.LR'?)"),
    ("pretrain_overrides: {OPTIM.LR: -1}\n", "OPTIM.LR must be > 0"),
    ("sweep: configs/sweep/bad.yaml\n", "train: unknown fine-tuning flag 'num_stepz' (did you mean 'num_steps'?)"),
])
def test_bad_demo_profiles_are_refused_before_any_stage(tmp_path, monkeypatch, capsys, change, message):
    import refers.base.paths as paths
    from refers.cli.demo import main

    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    bad_sweep = yaml.safe_load((ROOT / "configs" / "sweep" / "demo_quick.yaml").read_text())
    bad_sweep["train"]["num_stepz"] = 3
    (tmp_path / "configs" / "sweep" / "bad.yaml").write_text(yaml.safe_dump(bad_sweep))
    quick = tmp_path / "configs" / "demo" / "quick.yaml"
    quick.write_text(quick.read_text() + change)
    monkeypatch.setattr(paths, "project_root", lambda: tmp_path)
    for module in ("refers.demo", "refers.sweep", "refers.finetune.config"):
        monkeypatch.setattr(f"{module}.project_root", lambda: tmp_path)
    assert main(["--quick", "--out", str(tmp_path / "out")]) == 2
    assert message in one_line_error(capsys)
    assert not (tmp_path / "out").exists()


def test_demo_studies_are_checked_by_the_profile_schema(capsys):
    from refers.cli.demo import main

    assert main(["--quick", "--studies", "3"]) == 2
    assert one_line_error(capsys) == "refers demo: error: --studies must be >= 50, got 3"

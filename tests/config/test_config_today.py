"""Every shipped YAML and the original README's fine-tuning commands resolve as they did before the
configuration engine (tests/data/config_today.json, recorded from commit dbf1aaf's four loaders by
tests/data/record_config_today.py of commit ce5dbeb).

Recorded: the pre-training presets (and overrides), the fine-tuning command lines and presets as
``train()`` read them once it had changed them (image size 224, folders made absolute), the test
stage as ``run_test()`` read it after completing it from a checkpoint, both ``--help`` texts, every
command of every sweep file, and the demo profiles. Keys added since (new features) may appear; every
recorded key keeps its value.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shlex
import sys
from pathlib import Path

import pytest

from refers import sweep
from refers.base.paths import project_root
from refers.config import load_config as load_pretrain
from refers.demo import Demo, load_profile
from refers.finetune import config as fc

ROOT = project_root()
PRETRAIN_OVERRIDES = ["OPTIM.NUM_ITERATIONS", "20", "OPTIM.LR", "3e-2", "LOSS.TAU", "1", "DATA.HORIZONTAL_FLIP", "false",
                      "DATA.CROP_SCALE", "[0.3, 1]", "DATA.CROP_RATIO", "0.5,0.9", "OPTIM.SGD_MOMENTUM", "0.5",
                      "OPTIM.LOOKAHEAD_STEPS", "7", "DATA.ROOT", "/data", "MODEL.TEXTUAL.BERT_DIR", "x/y"]
TODAY = json.loads((Path(__file__).resolve().parents[1] / "data" / "config_today.json").read_text(encoding="utf-8"))


OUT_STANDIN = "__OUT_STANDIN__"


def portable(value):
    """``value`` as JSON data with this checkout's root and interpreter replaced by placeholders."""
    text = json.dumps(value, sort_keys=True, default=str)
    # The interpreter first: a checkout's own .venv lies under its root (as in CI's fresh clone).
    text = text.replace(OUT_STANDIN, "${OUT}")  # the demo templates' placeholder, filled to load them (see below)
    return json.loads(text.replace(sys.executable, "<PYTHON>").replace(str(ROOT), "<ROOT>"))


def relative_to_cwd(args) -> dict:
    """The plain arguments with the working folder (the project root here) as ``<CWD>``."""
    return json.loads(json.dumps(fc.to_plain(args)).replace(str(ROOT), "<CWD>"))


def assert_keeps(recorded, now, where=""):
    """Every recorded key has the same value now (nested dicts compared key by key; new keys allowed)."""
    if isinstance(recorded, dict) and isinstance(now, dict):
        missing = sorted(set(recorded) - set(now))
        assert not missing, f"{where}: keys gone: {missing}"
        for key in recorded:
            assert_keeps(recorded[key], now[key], f"{where}.{key}")
    else:
        assert recorded == now, f"{where}: {recorded!r} -> {now!r}"


@pytest.mark.parametrize("name", sorted(TODAY["pretrain"]))
def test_pretraining_presets_resolve_as_before(name):
    if name == "<defaults>":
        cfg = load_pretrain(None)
    elif name == "<defaults+overrides>":
        cfg = load_pretrain(None, PRETRAIN_OVERRIDES)
    else:
        cfg = load_pretrain(ROOT / name)
    assert_keeps(TODAY["pretrain"][name], portable(cfg.to_dict()), name)


def test_finetuning_command_lines_and_presets_resolve_as_before(monkeypatch):
    monkeypatch.chdir(ROOT)
    assert len(TODAY["finetune"]) == 79
    for case in TODAY["finetune"]:
        args = fc.parse_args(case["argv"], "t", case["stage"])
        assert dataclasses.is_dataclass(args) and args.__dataclass_params__.frozen
        if case["stage"] == "train":
            expected = case["as_train_reads_it"]
        else:
            assert_keeps(case["parsed"], relative_to_cwd(args), shlex.join(case["argv"]))
            args = fc.with_checkpoint(args, case["settings"])
            expected = case["as_test_reads_it"]
        assert_keeps(expected, relative_to_cwd(args), shlex.join(case["argv"]))


def test_help_texts_keep_every_recorded_line(monkeypatch):
    """Every line of the recorded help below the usage block is still there, in the same order
    (flags added since, e.g. --overwrite, add lines; the wrapped usage block changes with them)."""
    monkeypatch.setenv("COLUMNS", "120")
    for stage, prog in (("train", "refers finetune"), ("test", "refers test")):
        today = fc.build_parser(prog, stage).format_help().splitlines()
        recorded = TODAY["finetune_help"][stage].splitlines()
        body = recorded[recorded.index("") + 1:]  # after the usage block
        assert len(body) > 50
        remaining = iter(today)
        lost = [line for line in body if not any(line == candidate for candidate in remaining)]
        assert lost == [], lost  # each recorded line found after the one before it


@pytest.mark.parametrize("name", sorted(TODAY["sweep"]))
def test_sweep_files_plan_the_same_commands(name):
    recorded = TODAY["sweep"][name]
    # A sweep file with an unresolved ${OUT} is refused now; the demo templates load with it filled by a
    # stand-in that portable() turns back, so that everything recorded before compares as it was.
    config = sweep.load_config(ROOT / name, placeholders={"${OUT}": OUT_STANDIN})
    runs = sweep.plan_training(config)
    fields = {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(config).items()}
    assert_keeps(recorded["config"], portable(fields), name)
    assert portable(sweep.read_sweep_file(ROOT / name)) == recorded["read_sweep_file"]

    def join(args):  # back to the placeholder before quoting, which quotes it as it did before
        return shlex.join(a.replace(OUT_STANDIN, "${OUT}") for a in args)

    def line(run):
        return f"{run.label} | {run.run_dir} | " + join(sweep.command_line(config, run))

    train = [line(r) + " | in-process: " + join(sweep.in_process_argv(r)) for r in runs]
    test = [line(sweep.plan_test(config, r, r.run_dir / "CKPT.bin")) for r in runs]
    train, test = portable(train), portable(test)
    assert train[:8] + train[-3:] == recorded["train_sample"] and test[:4] + test[-2:] == recorded["test_sample"]
    assert (len(train), len(test)) == (recorded["train_count"], recorded["test_count"])
    assert hashlib.sha256("\n".join(train).encode()).hexdigest() == recorded["train_sha256"]
    assert hashlib.sha256("\n".join(test).encode()).hexdigest() == recorded["test_sha256"]


@pytest.mark.parametrize("name", ["default", "full", "quick"])
def test_demo_profiles_resolve_as_before(name):
    recorded = TODAY["demo"][name]
    profile = load_profile(name)
    demo = Demo(Path("/OUT"), profile)
    assert portable(dataclasses.asdict(profile)) == recorded["profile"]
    assert dataclasses.asdict(load_profile(name, 321)) == TODAY["demo"][name + "+studies"]["profile"]
    assert portable(demo.pretrain_overrides()) == recorded["pretrain_overrides"]
    assert portable(demo.pretrain_overrides("shuffled")) == recorded["pretrain_overrides_shuffled"]
    cfg = load_pretrain(ROOT / profile.pretrain_config, demo.pretrain_overrides())
    assert_keeps(recorded["pretrain_config"], portable(cfg.to_dict()), name)
    assert portable(sweep.fill_placeholders(sweep.read_sweep_file(ROOT / profile.sweep), {"${OUT}": "/OUT"})) == recorded["sweep_filled"]

"""`refers demo --quick`: the whole pipeline, reduced, end to end; every stage's outputs checked.

One real run (a few hundred synthetic studies, a few steps per stage) shared by the checks below.
The AUCs of summary.json are recomputed here from the prediction files with scikit-learn.
"""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from refers.cli.demo import main
from refers.data.lists import read_list
from refers.demo import MARKER, Demo, load_profile
from refers.base.checkpoints import safe_load

DATASETS = ("MIMIC-CXR", "NIH_ChestX-ray", "VinBigData_Chest_X-ray", "Shenzhen_Tuberculosis", "COVID-19_Image_Data_Collection")


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "out"
    assert main(["--quick", "--quiet", "--out", str(out)]) == 0
    return out


def mean_auc_from_files(folder: Path) -> float:
    aucs = []
    for path in sorted(folder.glob("*.txt")):
        if path.name in ("SYNTHETIC.txt", "summary.txt"):
            continue
        rows = np.loadtxt(path, ndmin=2)
        labels, probs = rows[:, 0], rows[:, 1]
        assert ((probs >= 0) & (probs <= 1)).all()
        if 0 < labels.sum() < len(labels):
            aucs.append(roc_auc_score(labels, probs))
    return float(np.mean(aucs))


@pytest.mark.slow
def test_data_stages(demo_out):
    for name in DATASETS:
        assert (demo_out / "Data" / name / "SYNTHETIC.txt").is_file()
    mimic = demo_out / "DataProcessed" / "MIMIC"
    for split in ("train", "val"):
        assert (mimic / f"{split}_img_caption_patients.txt").stat().st_size > 0
        assert (mimic / f"{split}_studies.jsonl").stat().st_size > 0
    nih = demo_out / "DataProcessed" / "NIH_ChestX-ray"
    train = read_list(nih / "train.txt", 14)
    for seed in (0, 1):
        subset = read_list(nih / f"train_10_seed{seed}.txt", 14)
        assert 0 < len(subset) < len(train) and set(subset.paths) <= set(train.paths)
    # The pack the sweep reads holds every image of the NIH-format lists once, at the demo's size.
    pack = json.loads((demo_out / "Data" / "NIH_ChestX-ray" / "packed" / "pack.json").read_text())
    listed = {p for f in nih.glob("*.txt") if f.name != "SYNTHETIC.txt" for p in read_list(f, 14).paths}
    assert pack["count"] == len(listed) and pack["size"] == 32


@pytest.mark.slow
def test_pretraining_and_export(demo_out):
    assert (demo_out / "tokenizer" / "reports_bpe.model").is_file()
    assert list((demo_out / "pretrain" / "REFERS").glob("checkpoint_*.pth"))
    encoder = safe_load(demo_out / "checkpoints" / "REFERS" / "refers_checkpoint.pth")
    assert "transformer.embeddings.position_embeddings" in encoder
    assert "transformer.encoder.layer.0.attn.query.weight" in encoder
    assert (demo_out / "generated_report.txt").read_text().strip()


@pytest.mark.slow
def test_finetuning_predictions_and_summary(demo_out):
    summary = json.loads((demo_out / "summary.json").read_text())
    assert summary["synthetic"] is True and summary["seconds"] > 0
    assert 0.0 <= summary["retrieval_recall_at_5"] <= 1.0
    # zero-shot on the NIH-format test set, from the prediction files refers zeroshot wrote (the results tree's zero-shot row)
    zeroshot = summary["zeroshot_auc"]["NIH_ChestX-ray"]
    folder = demo_out / "Results_of_fine-tuning" / "NIH_ChestX-ray" / "zeroshot" / "REFERS" / "seed0"
    assert zeroshot["mean_auc"] == pytest.approx(mean_auc_from_files(folder), abs=1e-6)
    assert zeroshot["ci95"][0] <= zeroshot["mean_auc"] <= zeroshot["ci95"][1]
    test = summary["test_retrieval"]
    assert "skipped" in test or (0 <= test["image_to_report_R@5"] <= 1 and test["chance_R@5"] == pytest.approx(min(1, 5 / test["studies"])))
    assert set(summary["auc"]) == {"NIH_ChestX-ray", "Shenzhen_Tuberculosis"}
    assert set(summary["auc"]["NIH_ChestX-ray"]) == {"10"}
    results = demo_out / "Results_of_fine-tuning"
    test_lines = len(read_list(demo_out / "DataProcessed" / "NIH_ChestX-ray" / "test.txt", 14))
    for dataset, fractions in summary["auc"].items():
        for percent, arms in fractions.items():
            assert set(arms) == {"REFERS", "scratch"}
            for arm, value in arms.items():
                seeds = sorted((results / dataset / f"data{percent}" / arm).glob("seed*"))
                assert len(seeds) == (2 if dataset == "NIH_ChestX-ray" else 1)
                expected = np.mean([mean_auc_from_files(folder) for folder in seeds])
                assert value == pytest.approx(expected, abs=1e-5)
                if dataset == "NIH_ChestX-ray":
                    assert len((seeds[0] / "Atelectasis.txt").read_text().splitlines()) == test_lines
    # each arm's candidate (full fine-tuning or a linear probe) was chosen among the sweep's, on validation
    selection = json.loads((demo_out / "finetune" / "selection.json").read_text())
    nih = [s for s in selection if s["dataset"] == "NIH_ChestX-ray"]
    assert {s["arm"] for s in nih} == {"REFERS", "scratch"}
    assert all(sorted(s["mean_val_auc"]) == ["learning_rate=0.01,freeze_backbone=True", "learning_rate=0.1"]
               and s["candidate"] in s["mean_val_auc"] for s in nih)


@pytest.mark.slow
def test_results_and_command_log(demo_out):
    with (demo_out / "results" / "mean_auc.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert {r["method"] for r in rows} == {"REFERS", "scratch"}
    assert {r["task"] for r in rows if r["method"] == "REFERS"} >= {"zeroshot", "data10"}
    assert list((demo_out / "results" / "figures").glob("roc_*.png"))
    commands = (demo_out / "commands.sh").read_text()
    for needle in ("refers synth", "refers prepare mimic", "refers prepare fractions", "refers tokenizer train",
                   "Pre-train/pretrain_refers.py", "refers export", "refers sweep", "refers results", "refers generate",
                   "--dual-encoder", "refers zeroshot"):
        assert needle in commands, needle
    assert subprocess.run(["sh", "-n", str(demo_out / "commands.sh")]).returncode == 0
    # scratch needs no pre-training: its sweep ran in stage 3 beside it (the quick profile: two jobs at a
    # time), the pre-trained arm's in stage 5; both choices are in the one selection.json (checked above)
    assert "refers sweep" in commands and commands.index("--arms scratch") < commands.index("--arms REFERS")
    stage3 = commands.split("# [3/")[1].split("# [4/")[0]
    assert "--arms scratch" in stage3 and "Pre-train/pretrain_refers.py" in stage3
    assert set(json.loads((demo_out / "summary.json").read_text())["stage_seconds"]) >= {"pretrain-REFERS", "sweep-beside", "sweep"}
    sweep_log = (demo_out / "finetune" / "commands.log").read_text()
    assert "Fine-tune/NIH_ChestX-ray/train.py" in sweep_log and "Fine-tune/NIH_ChestX-ray/test.py" in sweep_log
    assert "--freeze_backbone" in sweep_log
    assert (demo_out / MARKER).is_file()


def test_output_folder_rules(tmp_path, capsys):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    assert main(["--quick", "--out", str(foreign)]) == 1
    assert "not a demo output folder" in capsys.readouterr().err
    assert (foreign / "thesis.tex").read_text() == "precious"

    earlier = tmp_path / "earlier"
    earlier.mkdir()
    (earlier / MARKER).write_text("demo")
    (earlier / "stale.txt").write_text("old")
    Demo(earlier, load_profile("quick")).start_clean()
    assert not (earlier / "stale.txt").exists() and (earlier / MARKER).is_file()
    assert "removing the previous demo output" in capsys.readouterr().out

    assert main(["--quick", "--full"]) == 2
    assert main(["--studies", "3"]) == 2


def test_the_full_profile_names_the_ablation_arms_and_its_table_is_read_from_the_auc_table(tmp_path):
    from refers.config.engine import ConfigError
    from refers.demo import ABLATION_ARMS, ablation_table

    profile = load_profile("full")
    assert profile.ablation == ["caption_only", "contrast_only", "shuffled", "two_view"] and set(profile.ablation) == set(ABLATION_ARMS)
    demo = Demo(tmp_path / "out", profile)
    overrides = dict(zip(*[iter(demo.pretrain_overrides("contrast_only"))] * 2))
    assert overrides["LOSS.CAPTION_WEIGHT"] == "0.0" and "LOSS.CONTRAST_WEIGHT" not in overrides
    auc = {"NIH_ChestX-ray": {"1": {"REFERS": 0.62, "caption_only": 0.55, "scratch": 0.52}},
           "Shenzhen_Tuberculosis": {"100": {"REFERS": 0.9, "scratch": 0.8}}}
    table = ablation_table(auc, ["REFERS", "caption_only", "two_view"])
    assert table == {"1": {"REFERS": 0.62, "caption_only": 0.55, "scratch": 0.52, "REFERS - scratch": 0.1,
                           "caption_only - scratch": 0.03}}
    import refers.demo as demo_module

    bad = tmp_path / "configs" / "demo"
    bad.mkdir(parents=True)
    (bad / "bad.yaml").write_text("ablation: [captions_only]\n")
    original = demo_module.project_root
    demo_module.project_root = lambda: tmp_path
    try:
        with pytest.raises(ConfigError, match="did you mean 'caption_only'"):
            load_profile("bad")
        (bad / "bad.yaml").write_text("pretrain_jobs: 0\n")
        with pytest.raises(ConfigError, match=r"bad\.yaml.*pretrain_jobs.*0"):
            load_profile("bad")
        real = original() / "configs"
        preset = f"pretrain_config: {real / 'demo/pretrain.yaml'}\n"
        (bad / "bad.yaml").write_text(f"{preset}sweep: {real / 'sweep/demo.yaml'}\nablation: [caption_only]\n")
        with pytest.raises(ConfigError, match=r"bad\.yaml: ablation: the demo pre-trains 'caption_only', which .*demo\.yaml "
                                              r"does not fine-tune \(its arms: REFERS, scratch\)"):
            load_profile("bad")
        (bad / "bad.yaml").write_text(f"{preset}sweep: {real / 'sweep/demo_full.yaml'}\nablation: [shuffled]\n")
        with pytest.raises(ConfigError, match=r"bad\.yaml: the sweep .*demo_full\.yaml fine-tunes 'caption_only' from the "
                                              r"demo's pre-training \(\$\{OUT\}/checkpoints/caption_only/.*add it to ablation"):
            load_profile("bad")
    finally:
        demo_module.project_root = original


def test_the_demo_grid_trains_every_arm_alike_and_longer_with_more_labels():
    """configs/sweep/demo(_full).yaml: per fraction, every arm of the NIH-format set has the same steps,
    batch and schedule, and the steps grow with the fraction; pre-trained arms train a probe on the mean
    patch token, scratch fine-tunes fully with AdamW on the CLS token (README, "What the demo shows")."""
    from refers import sweep
    from refers.base.paths import project_root

    def option(run, flag):
        return run.args[run.args.index(flag) + 1] if flag in run.args else None

    config = sweep.load_config(project_root() / "configs/sweep/demo_full.yaml", placeholders={"${OUT}": "/OUT"})
    runs = [r for r in sweep.plan_training(config) if r.dataset == "NIH_ChestX-ray"]
    assert {r.arm for r in runs} == {"REFERS", "scratch", "caption_only", "contrast_only", "shuffled", "two_view"}
    steps = {}
    for percent in (1, 10, 100):
        cell = [r for r in runs if r.percent == percent]
        budgets = {(option(r, "--num_steps"), option(r, "--train_batch_size"), option(r, "--warmup_steps")) for r in cell}
        assert len(budgets) == 1, (percent, budgets)
        steps[percent] = int(next(iter(budgets))[0])
        for run in cell:
            probe = run.arm != "scratch"
            assert ("--freeze_backbone" in run.args) == probe
            assert option(run, "--global_pool") == ("avg" if probe else "token")
            assert option(run, "--optimizer") == (None if probe else "adamw")  # None: the original's SGD
            assert option(run, "--packed_cache") == "/OUT/Data/NIH_ChestX-ray/packed"
    assert steps[1] < steps[10] < steps[100]


def test_independent_commands_run_together_with_the_cores_shared_out(tmp_path, capsys):
    """Demo.run_together: jobs overlap in time (each waits until the other has started), each gets
    cores // jobs threads (OMP_NUM_THREADS), has its own log and its line in commands.sh; a failing
    job is raised, naming its log, after the running ones have finished, and no job starts after it."""
    import os
    import sys

    from refers.demo import DemoError

    demo = Demo(tmp_path / "out", load_profile("full"), stream=False)
    demo.start_clean()
    flags = tmp_path / "flags"
    flags.mkdir()
    wait_for_other = ("import os, pathlib, sys, time; here, other = sys.argv[1:3]; d = pathlib.Path(sys.argv[3]);"
                      "(d / here).touch(); deadline = time.time() + 60\n"
                      "while not (d / other).exists() and time.time() < deadline: time.sleep(0.05)\n"
                      "print('threads', os.environ.get('OMP_NUM_THREADS'), (d / other).exists())")
    jobs = [([sys.executable, "-c", wait_for_other, "a", "b", flags], "job-a"),
            ([sys.executable, "-c", wait_for_other, "b", "a", flags], "job-b")]
    demo.run_together(jobs, at_once=2)
    threads = str(max(1, len(os.sched_getaffinity(0)) // 2))
    for name in ("a", "b"):
        assert (tmp_path / "out" / "logs" / f"00-job-{name}.log").read_text().split() == ["threads", threads, "True"]
    assert (tmp_path / "out" / "commands.sh").read_text().count(wait_for_other.splitlines()[0][:20]) == 2

    finished, started = tmp_path / "finished", tmp_path / "started"
    jobs = [([sys.executable, "-c", "import sys; sys.exit(3)"], "fails"),
            ([sys.executable, "-c", f"import time, pathlib; time.sleep(1); pathlib.Path({str(finished)!r}).touch()"], "slow"),
            ([sys.executable, "-c", f"import pathlib; pathlib.Path({str(started)!r}).touch()"], "after")]
    with pytest.raises(DemoError, match=r"exit status 3 .*00-fails\.log"):
        demo.run_together(jobs, at_once=2)
    assert finished.exists() and not started.exists()  # the running job finished; none started after the failure

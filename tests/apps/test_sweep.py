"""`refers sweep`: the grid, flag precedence, dry run, selection on validation, skipping, the command log.

The fine-tuning commands are replaced here by a fake that writes what `train.py`/`test.py` write
(a checkpoint, a metrics CSV, prediction summaries); tests/apps/test_demo.py drives the real ones.
"""

from __future__ import annotations

import json
import shlex
import shutil
import textwrap
from pathlib import Path

import pytest
import yaml

from refers import sweep_runner
from refers.cli.sweep import main
from refers.sweep import SweepConfigError, candidates, flags, load_config, plan_training
from refers.sweep_runner import best_validation_auc, checkpoint_path, select, result_summary_path
from refers.finetune.train import CSV_FIELDS  # the header the real trainer writes

GRID = {
    "name": "t",
    "seeds": [0, 1, 2],
    "train": {"model_type": "ViT-nano_8", "num_steps": 7, "fp16": False},
    "test": {"eval_batch_size": 9},
    "search": {"learning_rate": [0.1, 0.01]},
    "arms": {"REFERS": {"train": {"pretrained_dir": "enc.pth"}},
             "scratch": {"train": {"init": "scratch"}, "search": {"learning_rate": [0.3, 0.1, 0.01]}}},
    "datasets": {
        "NIH_ChestX-ray": {"fractions": [1, 100], "train": {"num_steps": 11},
                           "by_fraction": {1: {"train": {"freeze_backbone": True}, "seeds": [0, 1]}}},
        "Shenzhen_Tuberculosis": {},
    },
}


def write_grid(tmp_path: Path, grid: dict = GRID, **top) -> Path:
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump({**grid, "output_dir": str(tmp_path / "runs"),
                                    "results_dir": str(tmp_path / "results"), **top}), encoding="utf-8")
    return path


def option(args: tuple[str, ...], name: str) -> str | None:
    args = list(args)
    return args[args.index(f"--{name}") + 1] if f"--{name}" in args else None


def test_flags_and_candidates():
    assert flags({"learning_rate": 0.01, "freeze_backbone": True, "fp16": False, "init": None, "x": [1, 2]}) == \
        ["--learning_rate", "0.01", "--freeze_backbone", "--x", "1", "2"]
    assert candidates({"a": [1, 2], "b": [True, False]}) == [
        {"a": 1, "b": True}, {"a": 1, "b": False}, {"a": 2, "b": True}, {"a": 2, "b": False}]
    assert candidates({}) == [{}]
    points = [{"learning_rate": 0.3}, {"learning_rate": 1.0, "freeze_backbone": True}]
    assert candidates(points) == points and candidates([]) == [{}]


def test_search_list_names_candidates_and_replaces_grids_above(tmp_path, capsys):
    probe_or_finetune = [{"learning_rate": 0.3}, {"learning_rate": 0.1}, {"learning_rate": 0.3, "freeze_backbone": True}]
    grid = {**GRID, "search": probe_or_finetune,
            "arms": {"REFERS": GRID["arms"]["REFERS"], "scratch": {"train": {"init": "scratch"}}},
            "datasets": {"NIH_ChestX-ray": {"fractions": [100]},
                         "Shenzhen_Tuberculosis": {"search": [{"learning_rate": 0.05}]}}}
    runs = plan_training(load_config(write_grid(tmp_path, grid)))
    nih_refers = [r for r in runs if r.dataset == "NIH_ChestX-ray" and r.arm == "REFERS"]
    assert [(option(r.args, "learning_rate"), "--freeze_backbone" in r.args) for r in nih_refers] == \
        [("0.3", False), ("0.1", False), ("0.3", True)]
    assert set(nih_refers[2].candidate.split(",")) == {"learning_rate=0.3", "freeze_backbone=True"}
    assert len([r for r in runs if r.dataset == "NIH_ChestX-ray"]) == 2 * 3
    # a list at a more specific level replaces the one above it...
    assert {option(r.args, "learning_rate") for r in runs if r.dataset == "Shenzhen_Tuberculosis"} == {"0.05"}
    # ...but a grid (here scratch's, at the arm level) cannot refine a list
    grid["arms"] = GRID["arms"]
    assert main([str(write_grid(tmp_path, grid)), "--dry-run"]) == 2
    assert "a search grid cannot refine a search list" in capsys.readouterr().err


def test_grid_size_and_precedence(tmp_path):
    runs = plan_training(load_config(write_grid(tmp_path)))
    # NIH 1%: 2 seeds (fraction level), NIH 100% and Shenzhen 100%: one run; REFERS 2 rates, scratch 3.
    assert len(runs) == (2 + 1 + 1) * (2 + 3)
    nih1 = [r for r in runs if r.dataset == "NIH_ChestX-ray" and r.percent == 1]
    assert {r.seed for r in nih1} == {0, 1}
    for run in runs:
        assert option(run.args, "model_type") == "ViT-nano_8"
        assert "--fp16" not in run.args
        # the dataset's num_steps wins over the top level, for that dataset only
        assert option(run.args, "num_steps") == ("11" if run.dataset == "NIH_ChestX-ray" else "7")
        assert ("--freeze_backbone" in run.args) == (run.percent == 1)
        assert option(run.args, "data_volume") == str(run.percent)
        assert option(run.args, "data_seed") == (None if run.percent == 100 else str(run.seed))
        assert option(run.args, "seed") == str(run.seed)
        assert Path(option(run.args, "output_dir")) == run.run_dir
        if run.arm == "REFERS":
            assert option(run.args, "pretrained_dir") == "enc.pth" and option(run.args, "init") is None
        else:
            assert option(run.args, "init") == "scratch"
    assert sorted({option(r.args, "learning_rate") for r in runs if r.arm == "scratch"}) == ["0.01", "0.1", "0.3"]
    assert len({r.run_dir for r in runs}) == len(runs)  # no two runs share a folder


@pytest.mark.parametrize("change, message", [
    ({"bogus": 1}, "unknown key 'bogus'; allowed: arms, datasets, entry"),
    ({"datasets": {"Nowhere": {}}}, "unknown dataset 'Nowhere'"),
    ({"datasets": {"nih": {}}}, "write 'nih' as 'NIH_ChestX-ray'"),
    ({"datasets": {"NIH_ChestX-ray": {"fraction": [1]}}}, "datasets.NIH_ChestX-ray: unknown key 'fraction' (did you mean 'fractions'?)"),
    ({"entry": "other"}, "entry must be"),
    ({"datasets": {}}, "the grid is empty"),
    ({"search": [0.1, 0.3]}, "a search list must hold mappings"),
    ({"arms": {"../escaped": {}}}, "arms: '../escaped' must be one folder name"),
])
def test_bad_sweep_files_are_usage_errors(tmp_path, capsys, change, message):
    assert main([str(write_grid(tmp_path, {**GRID, **change})), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_missing_file_and_bad_jobs(tmp_path, capsys):
    assert main([str(tmp_path / "none.yaml")]) == 1
    assert "sweep file not found" in capsys.readouterr().err
    assert main([str(write_grid(tmp_path)), "--jobs", "0"]) == 2
    assert main([str(write_grid(tmp_path)), "--jobs", "2", "--in-process"]) == 2


def test_base_file_is_merged(tmp_path):
    base = write_grid(tmp_path)
    child = tmp_path / "child.yaml"
    child.write_text(yaml.safe_dump({"_BASE_": base.name, "arms": {"shuffled": {"train": {"pretrained_dir": "s.pth"}}}}))
    runs = plan_training(load_config(child))
    assert {r.arm for r in runs} == {"REFERS", "scratch", "shuffled"}
    assert {option(r.args, "model_type") for r in runs} == {"ViT-nano_8"}


def test_a_dataset_may_run_a_subset_of_the_arms(tmp_path):
    grid = {**GRID, "datasets": {**GRID["datasets"], "Shenzhen_Tuberculosis": {"arms": ["scratch"]}}}
    runs = plan_training(load_config(write_grid(tmp_path, grid)))
    assert {r.arm for r in runs if r.dataset == "Shenzhen_Tuberculosis"} == {"scratch"}
    assert {r.arm for r in runs if r.dataset == "NIH_ChestX-ray"} == {"REFERS", "scratch"}
    wrong = {**GRID, "datasets": {"Shenzhen_Tuberculosis": {"arms": ["scrach"]}}}
    with pytest.raises(SweepConfigError, match="unknown arm 'scrach' \\(did you mean 'scratch'"):
        load_config(write_grid(tmp_path, wrong))


# --- running, with a fake train.py / test.py -----------------------------------------------------

# Validation AUC the fake reports: depends on the arm, the learning rate and the seed, so that the
# test knows which rate must win (mean over seeds, not one lucky seed).
def fake_val_auc(arm: str, lr: float, seed: int) -> float:
    table = {("REFERS", 0.1): [0.70, 0.70], ("REFERS", 0.01): [0.90, 0.60],  # mean 0.70 vs 0.75
             ("scratch", 0.3): [0.5, 0.5], ("scratch", 0.1): [0.6, 0.62], ("scratch", 0.01): [0.61, 0.55]}
    return table[(arm, lr)][seed % 2]


def write_metrics_csv(path: Path, aucs: list[float | str]) -> None:
    """A metrics CSV as the trainer writes it: its own header (CSV_FIELDS), one row per validation.

    The AUC goes under the trainer's own column name (whatever CSV_FIELDS calls the mean validation
    AUC), so a reader that looks for another name finds nothing and the test fails.
    """
    [auc_field] = [f for f in CSV_FIELDS if f.startswith("val_") and "auc" in f]  # exactly one
    rows = []
    for step, auc in enumerate(aucs, 1):
        row = {field: "0" for field in CSV_FIELDS}
        # the trainer writes f"{auc:.6f}" ("nan" when undefined); a string goes in as it is; best_auc is a decoy
        row.update(step=str(step), **{auc_field: auc if isinstance(auc, str) else f"{auc:.6f}"}, best_auc="0.999000")
        rows.append(",".join(row[field] for field in CSV_FIELDS))
    path.write_text(",".join(CSV_FIELDS) + "\n" + "".join(line + "\n" for line in rows))


def fake_command(calls: list[list[str]], fail: set[str] = frozenset()):
    """A stand-in for `refers finetune` / `refers test` run in-process."""

    def run(argv, workdir, log_file):
        calls.append(list(argv))
        args = tuple(argv)
        name = option(args, "name")
        if any(f in name + str(option(args, "learning_rate")) for f in fail):
            log_file.write_text("boom\n")
            return 1
        if argv[0] == "finetune":
            out, logs = Path(option(args, "output_dir")), Path(option(args, "log_dir"))
            out.mkdir(parents=True, exist_ok=True)
            logs.mkdir(parents=True, exist_ok=True)
            (out / f"{name}_bestauc_checkpoint.bin").write_bytes(b"weights")
            auc = fake_val_auc(name.split("_")[2], float(option(args, "learning_rate")), int(option(args, "seed")))
            write_metrics_csv(logs / "metrics.csv", [auc - 0.1, auc])
        else:
            dataset = argv[2]
            folder = Path(option(args, "results_dir")) / dataset / f"data{option(args, 'data_volume')}" / option(args, "method") / f"seed{option(args, 'seed')}"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "summary.json").write_text(json.dumps({"mean_auc": 0.5, "checkpoint": option(args, "pretrained_dir")}))
        return 0

    return run


def small_grid(tmp_path: Path) -> Path:
    grid = {**GRID, "datasets": {"NIH_ChestX-ray": {"fractions": [1], "by_fraction": {1: {"seeds": [0, 1]}}}}}
    return write_grid(tmp_path, grid, execution="in-process")


def test_sweep_selects_on_mean_validation_auc_and_tests_only_the_choice(tmp_path, monkeypatch, capsys):
    calls: list[list[str]] = []
    monkeypatch.setattr(sweep_runner, "_run_in_process", fake_command(calls))
    path = small_grid(tmp_path)
    assert main([str(path)]) == 0
    trains = [c for c in calls if c[0] == "finetune"]
    tests = [c for c in calls if c[0] == "test"]
    assert len(trains) == 2 * (2 + 3) and len(tests) == 2 * 2
    chosen = {(option(tuple(c), "method"), option(tuple(c), "seed")): option(tuple(c), "pretrained_dir") for c in tests}
    for seed in ("0", "1"):
        assert "learning_rate=0.01" in chosen[("REFERS", seed)]  # mean 0.75 beats 0.70
        assert "learning_rate=0.1" in chosen[("scratch", seed)]  # mean 0.61 beats 0.58 and 0.5
    selection = json.loads((tmp_path / "runs" / "selection.json").read_text())
    refers = next(s for s in selection if s["arm"] == "REFERS")
    assert refers["mean_val_auc"]["learning_rate=0.01"] == pytest.approx(0.75)
    # every command is in the log, as a shell line that names the real script
    log = (tmp_path / "runs" / "commands.log").read_text()
    lines = [line for line in log.splitlines() if "Fine-tune/NIH_ChestX-ray/" in line]
    assert len(lines) == len(calls)
    assert sum("train.py" in line for line in lines) == len(trains)
    assert "# exit 0" in log
    first = shlex.split(lines[0].split("&& ", 1)[1])
    assert first[1:] == ["Fine-tune/NIH_ChestX-ray/train.py", *calls[0][3:]]

    # A second run reuses everything and says so.
    calls.clear()
    assert main([str(path)]) == 0
    assert calls == []
    out = capsys.readouterr().out
    assert "reusing 10 finished training run(s)" in out and "4 test result(s) already exist" in out


def test_a_sweep_of_some_arms_runs_only_them_and_keeps_the_others_choices(tmp_path, monkeypatch, capsys):
    """`--arms scratch` then `--arms REFERS` (the demo runs scratch beside pre-training): the same
    commands and the same selection.json as one sweep of both arms."""
    calls: list[list[str]] = []
    monkeypatch.setattr(sweep_runner, "_run_in_process", fake_command(calls))
    for folder in ("whole", "split"):
        (tmp_path / folder).mkdir()
    whole = small_grid(tmp_path / "whole")
    assert main([str(whole)]) == 0
    whole_calls, calls[:] = list(calls), []
    split = small_grid(tmp_path / "split")
    assert main([str(split), "--arms", "scratch"]) == 0
    assert {option(tuple(c), "name").split("_")[2] for c in calls} == {"scratch"}
    assert [row["arm"] for row in json.loads((tmp_path / "split" / "runs" / "selection.json").read_text())] == ["scratch"]
    assert main([str(split), "--arms", "REFERS"]) == 0
    assert "reusing" not in capsys.readouterr().out  # the REFERS sweep planned no scratch run
    assert sorted(calls) == sorted(json.loads(json.dumps(whole_calls).replace("/whole/", "/split/")))
    read = lambda folder: json.loads((tmp_path / folder / "runs" / "selection.json").read_text())  # noqa: E731
    assert read("split") == read("whole")  # both arms, in the file's order
    # --status of one arm shows only its runs
    assert main([str(split), "--arms", "REFERS", "--status"]) == 0
    status = capsys.readouterr().out
    assert "REFERS" in status and "scratch" not in status
    # A misspelt arm is refused before anything runs, with the nearest name
    calls.clear()
    assert main([str(split), "--arms", "scrach"]) == 2
    assert "unknown arm 'scrach' (did you mean 'scratch'" in capsys.readouterr().err and calls == []


def test_a_broken_selection_file_is_named_before_anything_runs(tmp_path, monkeypatch, capsys):
    calls: list[list[str]] = []
    monkeypatch.setattr(sweep_runner, "_run_in_process", fake_command(calls))
    path = small_grid(tmp_path)
    (tmp_path / "runs").mkdir()
    row = {"dataset": "NIH_ChestX-ray", "percent": 1, "arm": "REFERS", "candidate": "default"}
    for broken in ("{not json", b"[\xff]", '[{"dataset": "NIH_ChestX-ray"}]', '{"arm": "REFERS"}', "[{}]", "[1]",
                   json.dumps([{k: v for k, v in row.items() if k != "candidate"}]), json.dumps([{**row, "percent": 1.7}]),
                   json.dumps([{**row, "percent": True}]), json.dumps([{**row, "candidate": 3}]),
                   json.dumps([row, {**row, "candidate": "learning_rate=0.1"}]), "[" * 100_000, None):
        target = tmp_path / "runs" / "selection.json"
        if target.is_dir():
            target.rmdir()
        if broken is None:  # a folder of that name
            target.unlink()
            target.mkdir()
        else:
            target.write_bytes(broken) if isinstance(broken, bytes) else target.write_text(broken)
        for extra in (["--arms", "scratch"], ["--status"]):
            assert main([str(path), *extra]) == 1, (broken, extra)
            err = capsys.readouterr().err
            assert f"{target}: not a sweep's selection file" in err and "Traceback" not in err, err
            assert len(err.strip().splitlines()) == 1, err
        assert calls == []


def test_a_sweep_keeps_another_arms_choice_only_while_it_is_one_of_the_grids_candidates(tmp_path, monkeypatch, capsys):
    calls: list[list[str]] = []
    monkeypatch.setattr(sweep_runner, "_run_in_process", fake_command(calls))
    path = small_grid(tmp_path)
    assert main([str(path)]) == 0
    selection = tmp_path / "runs" / "selection.json"
    assert [row["arm"] for row in json.loads(selection.read_text())] == ["REFERS", "scratch"]
    # Another sweep of REFERS keeps scratch's choice, which is still among scratch's candidates.
    assert main([str(path), "--arms", "REFERS"]) == 0
    assert [row["arm"] for row in json.loads(selection.read_text())] == ["REFERS", "scratch"]
    # scratch's grid changes: its earlier choice is no longer a candidate, so a REFERS sweep drops it
    # and --status shows scratch's test waiting for its new runs.
    grid = yaml.safe_load(path.read_text())
    grid["arms"]["scratch"]["search"] = {"learning_rate": [0.3]}
    path.write_text(yaml.safe_dump(grid))
    capsys.readouterr()
    assert main([str(path), "--status"]) == 0  # before any sweep runs again, the old choice is not shown as current
    assert "waiting      test NIH_ChestX-ray 1% scratch" in capsys.readouterr().out
    assert main([str(path), "--arms", "REFERS"]) == 0
    assert [row["arm"] for row in json.loads(selection.read_text())] == ["REFERS"]
    capsys.readouterr()
    assert main([str(path), "--status"]) == 0
    assert "waiting      test NIH_ChestX-ray 1% scratch" in capsys.readouterr().out
    # A group whose candidates all failed shows as a failed test, not as nothing.
    rows = json.loads(selection.read_text())
    selection.write_text(json.dumps([{**rows[0], "candidate": None}]))
    assert main([str(path), "--arms", "REFERS", "--status"]) == 0
    assert "failed       test NIH_ChestX-ray 1% REFERS  (no candidate finished on every seed" in capsys.readouterr().out


LRS = {"REFERS": (0.1, 0.01), "scratch": (0.3, 0.1)}  # two candidates of each arm of GRID


def _write_choices(path: str, arm: str, times: int) -> None:
    """Write this arm's choice ``times`` times; after each, the file must hold it (no other writer put
    back an older copy of it, as one that read the file before this write and replaced it after would)."""
    config = load_config(path, arms=[arm])
    for i in range(times):
        sweep_runner.write_selection(config, {("NIH_ChestX-ray", 1, arm): {"candidate": f"learning_rate={LRS[arm][i % 2]}",
                                                                           "mean_val_auc": {}, "write": i}})
        rows = sweep_runner.read_selection(config)
        assert rows[("NIH_ChestX-ray", 1, arm)]["write"] == i, f"{arm}: write {i} was lost"


def test_two_sweeps_of_other_arms_replacing_the_selection_at_once_keep_both_choices(tmp_path):
    import multiprocessing

    path = small_grid(tmp_path)
    times = 150
    context = multiprocessing.get_context("fork")
    writers = [context.Process(target=_write_choices, args=(str(path), arm, times)) for arm in ("REFERS", "scratch")]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(timeout=120)
        assert writer.exitcode == 0
    rows = json.loads((tmp_path / "runs" / "selection.json").read_text())
    assert [(row["arm"], row["write"]) for row in rows] == [("REFERS", times - 1), ("scratch", times - 1)]


def test_failed_runs_are_reported_and_excluded(tmp_path, monkeypatch, capsys):
    calls: list[list[str]] = []
    # REFERS seed 1 at lr 0.01 fails: that rate has no score for every seed, so 0.1 is chosen.
    monkeypatch.setattr(sweep_runner, "_run_in_process", fake_command(calls, fail={"REFERS_s10.01"}))
    assert main([str(small_grid(tmp_path))]) == 1
    err = capsys.readouterr().err
    assert "1 run(s) failed" in err and "REFERS" in err
    tests = [c for c in calls if c[0] == "test" and option(tuple(c), "method") == "REFERS"]
    assert all("learning_rate=0.1" in option(tuple(c), "pretrained_dir") for c in tests) and len(tests) == 2


def test_select_rules():
    class R:  # the fields select() reads
        def __init__(self, group, candidate):
            self.group, self.candidate = group, candidate

    a0, a1, b0, b1 = R(("D", 1, "X"), "a"), R(("D", 1, "X"), "a"), R(("D", 1, "X"), "b"), R(("D", 1, "X"), "b")
    chosen = select([a0, a1, b0, b1], {a0: 0.6, a1: 0.6, b0: 0.6, b1: 0.6})
    assert chosen[("D", 1, "X")]["candidate"] == "a"  # tie: first listed
    chosen = select([a0, a1, b0, b1], {a0: 0.9, a1: None, b0: 0.6, b1: 0.6})
    assert chosen[("D", 1, "X")]["candidate"] == "b"  # a lacks a seed
    assert select([a0, a1], {a0: None, a1: None})[("D", 1, "X")]["candidate"] == "a"  # single candidate


def test_dry_run_prints_every_command_and_marks_finished_ones(tmp_path, monkeypatch, capsys):
    path = small_grid(tmp_path)
    assert main([str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    commands = [line for line in out if not line.startswith("#")]
    assert sum("train.py" in line for line in commands) == 10
    assert sum("test.py" in line and "<SELECTED>" in line for line in commands) == 4
    assert not (tmp_path / "runs").exists()  # a dry run writes nothing

    monkeypatch.setattr(sweep_runner, "_run_in_process", fake_command([]))
    assert main([str(path)]) == 0
    capsys.readouterr()
    assert main([str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert sum(line.startswith("# done: ") and "train.py" in line for line in out) == 10


def test_output_readers(tmp_path):
    runs = plan_training(load_config(small_grid(tmp_path)))
    run = runs[0]
    logs = Path(option(run.args, "log_dir"))
    logs.mkdir(parents=True)
    assert best_validation_auc(run) is None
    write_metrics_csv(logs / "metrics.csv", [0.61, "", 0.72, "nan", 0.70])
    assert best_validation_auc(run) == pytest.approx(0.72)  # not best_auc's 0.999; blank and "nan" skipped
    assert checkpoint_path(run).name == f"{option(run.args, 'name')}_bestauc_checkpoint.bin"
    assert result_summary_path(load_config(small_grid(tmp_path)), run).parts[-5:-1] == ("NIH_ChestX-ray", "data1", "REFERS", "seed0")


def test_subprocess_execution_runs_the_command_from_workdir(tmp_path):
    # A real subprocess: a launcher that records its arguments instead of training.
    recorder = tmp_path / "rec.py"
    recorder.write_text("import sys, pathlib; pathlib.Path('argv.txt').write_text(' '.join(sys.argv[1:])); sys.exit(3)\n")
    path = write_grid(tmp_path, {**GRID, "datasets": {"Shenzhen_Tuberculosis": {}}, "arms": {"scratch": {"train": {"init": "scratch"}}},
                                 "search": {}}, launcher=["python", str(recorder)], workdir=str(tmp_path))
    config = load_config(path)
    outcome = sweep_runner.run_sweep(config, print_fn=lambda line: None)
    assert len(outcome.failures) == 1 and "exit 3" in outcome.failures[0]
    assert (tmp_path / "argv.txt").read_text().startswith("Fine-tune/Shenzhen_Tuberculosis/train.py --model_type ViT-nano_8")
    assert "exit 3" in config.log_path.read_text()


def test_in_process_runs_each_log_to_their_own_file(tmp_path, monkeypatch):
    # A command that configures logging on first use, as the fine-tuning CLI does: the second
    # in-process run must log into its own file, not into the first run's closed one.
    import logging
    import sys

    from refers.finetune import stages

    def fake_run(argv, prog, stage):  # what run_command calls: the fine-tuning stage itself
        logging.basicConfig(level=logging.INFO, format="%(message)s")
        logging.getLogger("refers.fake").info("hello from %s", argv[0])
        return 0

    monkeypatch.setattr(stages, "run", fake_run)
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])
    monkeypatch.setattr(root, "level", logging.WARNING)
    for name in ("first", "second"):
        assert sweep_runner._run_in_process(["test", name], tmp_path, tmp_path / f"{name}.log") == 0
    # Other tests may have configured a formatter on the "refers" logger: check content, not format.
    first, second = (tmp_path / "first.log").read_text(), (tmp_path / "second.log").read_text()
    assert first.rstrip().endswith("hello from first") and "second" not in first
    assert second.rstrip().endswith("hello from second") and "first" not in second
    assert all(h.stream is sys.stderr for h in root.handlers)


def test_in_process_runs_report_errors_as_the_command_does(tmp_path, capsys, monkeypatch):
    # The sweep runs the fine-tuning stage through the library, not the command line: the same
    # one-line error and exit code as `refers finetune`, and argparse's exit 2 for a bad flag.
    from refers.cli.finetune import main as finetune_main

    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):  # one process, no group
        monkeypatch.delenv(key, raising=False)

    argv = ["--name", "x", "--dataset", "Shenzhen_Tuberculosis", "--list_dir", str(tmp_path / "nowhere"), "--device", "cpu",
            "--output_dir", str(tmp_path / "out")]
    assert finetune_main(argv) == 1
    expected = capsys.readouterr().err.strip().splitlines()[-1]
    assert expected.startswith("refers finetune: error: list folder not found")
    assert sweep_runner._run_in_process(["finetune", *argv], tmp_path, tmp_path / "train.log") == 1
    assert (tmp_path / "train.log").read_text().strip().splitlines()[-1] == expected
    assert sweep_runner._run_in_process(["test", "--no_such_flag"], tmp_path, tmp_path / "test.log") == 2
    assert "refers test: error: unrecognized arguments: --no_such_flag" in (tmp_path / "test.log").read_text()


def test_parallel_jobs_get_their_own_device(tmp_path):
    # Two subprocesses at a time, each job slot with its own CUDA_VISIBLE_DEVICES. The recorder
    # notes its device and start time, then waits (up to 30 s) until two recorders have started:
    # the first two jobs are then provably running at the same time, and must hold different GPUs.
    recorder = tmp_path / "rec.py"
    recorder.write_text(textwrap.dedent("""\
        import os, sys, time, pathlib
        here = pathlib.Path(".")
        note = f"{os.environ.get('CUDA_VISIBLE_DEVICES', '-')} {time.time()!r} {sys.argv[-1]}"
        (here / f"{os.getpid()}.tmp").write_text(note)
        mine = (here / f"{os.getpid()}.tmp").rename(here / f"{os.getpid()}.rec")  # whole files only
        deadline = time.time() + 30
        while len(list(here.glob("*.rec"))) < 2 and time.time() < deadline:
            time.sleep(0.02)
        if len(list(here.glob("*.rec"))) < 2:
            mine.write_text(note + " alone")
        """))
    grid = {**GRID, "datasets": {"Shenzhen_Tuberculosis": {}}, "arms": {"scratch": {"train": {"init": "scratch"}}},
            "search": {"learning_rate": [0.1, 0.01, 0.001, 0.0001]}}
    config = load_config(write_grid(tmp_path, grid, launcher=["python", str(recorder)], workdir=str(tmp_path)))
    outcome = sweep_runner.run_sweep(config, jobs=2, devices=["0", "1"], print_fn=lambda line: None)
    records = sorted((p.read_text().split() for p in tmp_path.glob("*.rec")), key=lambda r: float(r[1]))
    assert len(records) == 4 and not [r for r in records if "alone" in r], records  # two ran at once
    first, second = records[0][0], records[1][0]
    assert {first, second} == {"0", "1"}, records  # the two concurrent jobs are on different GPUs
    assert {device for device, *_ in records} == {"0", "1"}  # every job on one of the given devices
    # the recorder writes no checkpoint: four failed runs, and no candidate to test
    assert len(outcome.failures) == 5 and "Shenzhen_Tuberculosis 100% scratch: no candidate finished" in outcome.failures[-1]
    log = config.log_path.read_text()
    assert log.count("CUDA_VISIBLE_DEVICES=") == 4
    assert sorted(line.split()[0] for line in log.splitlines() if line.startswith("CUDA_VISIBLE_DEVICES=")) == \
        sorted(f"CUDA_VISIBLE_DEVICES={device}" for device, *_ in records)  # the log names the device each job had


@pytest.mark.parametrize("dry_run", [True, False])
def test_unresolved_placeholder_is_refused_before_anything_runs(tmp_path, capsys, monkeypatch, dry_run):
    """A ``${OUT}`` left in a sweep value: one line naming the file, the key and the placeholder, exit 2, with
    --dry-run too; a real run no longer creates a folder literally named ``${OUT}``."""
    grid = {**GRID, "datasets": {"Shenzhen_Tuberculosis": {"train": {"pretrained_dir": "${OUT}/enc.pth"}}}}
    path = write_grid(tmp_path, grid)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sweep_runner, "_run_in_process", fake_command([]))
    assert main([str(path), *(["--dry-run"] if dry_run else ["--in-process"])]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in captured.err
    assert str(path) in lines[0] and "datasets.Shenzhen_Tuberculosis.train.pretrained_dir" in lines[0] and "${OUT}" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.yaml"]  # no runs/, no ${OUT}/
    assert main([str(write_grid(tmp_path, {**GRID, "seeds": [0]}, workdir="${HOME}")), "--dry-run"]) == 2
    assert "workdir: unresolved placeholder ${HOME}" in capsys.readouterr().err


def test_a_rerun_resumes_the_interrupted_run_and_replaces_the_failed_attempt(tmp_path, monkeypatch, capsys):
    """Run 1: one run is interrupted after saving its resume state (exit 143), one fails after a
    validation but before any resume state (exit 1). Run 2 continues the first with --resume,
    replaces the second with --overwrite, and starts none of the finished ones again."""
    calls: list[list[str]] = []
    finish = fake_command(calls)

    def first(argv, workdir, log_file):
        args = tuple(argv)
        name, out = option(args, "name"), Path(option(args, "output_dir"))
        if argv[0] == "finetune" and name == "nih_1_REFERS_s0" and "learning_rate=0.1" in str(out):
            out.mkdir(parents=True, exist_ok=True)
            (out / f"{name}_last.pth").write_bytes(b"state")
            return 143
        if argv[0] == "finetune" and name == "nih_1_REFERS_s1" and "learning_rate=0.1" in str(out):
            finish(argv, workdir, log_file)  # validated (metrics, best checkpoint) ...
            (out / f"{name}_bestauc_checkpoint.bin").unlink()  # ... then failed
            return 1
        return finish(argv, workdir, log_file)

    path = small_grid(tmp_path)
    monkeypatch.setattr(sweep_runner, "_run_in_process", first)
    assert main([str(path)]) == 1
    trained_first = sum(c[0] == "finetune" for c in calls)
    calls.clear()
    monkeypatch.setattr(sweep_runner, "_run_in_process", finish)
    assert main([str(path)]) == 0
    again = {option(tuple(c), "name"): c for c in calls if c[0] == "finetune"}
    assert set(again) == {"nih_1_REFERS_s0", "nih_1_REFERS_s1"} and trained_first == len(plan_training(load_config(path))) - 1  # the interrupted one is not in calls
    assert "--resume" in again["nih_1_REFERS_s0"] and "--overwrite" not in again["nih_1_REFERS_s0"]
    assert "--overwrite" in again["nih_1_REFERS_s1"] and "--resume" not in again["nih_1_REFERS_s1"]
    log = (load_config(path).output_dir / "commands.log").read_text()
    assert "--resume" in log  # the command log shows what was really run
    calls.clear()
    assert main([str(path)]) == 0 and calls == []  # the continued runs are reused as the file's (no --resume recorded)


def test_broken_records_and_output_folders_are_one_line_before_any_run(tmp_path, monkeypatch, capsys):
    calls: list[list[str]] = []
    monkeypatch.setattr(sweep_runner, "_run_in_process", fake_command(calls))
    path = small_grid(tmp_path)
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    for flag in ("--output-dir", "--results-dir"):
        assert main([str(path), flag, str(blocker)]) == 2
        err = capsys.readouterr().err
        assert f"{flag.removeprefix('--').replace('-', '_')} {blocker} is a file" in err and len(err.strip().splitlines()) == 1
    assert calls == []
    assert main([str(path)]) == 0
    record = next((tmp_path / "runs").rglob("sweep_record.json"))
    good = record.read_text()
    for broken in ("{x", "[1]", '{"best_val_auc": "abc"}', "[" * 100_000):
        record.write_text(broken)
        calls.clear()
        assert main([str(path)]) == 1
        err = capsys.readouterr().err
        assert f"{record}: not a sweep's run record; remove the folder {record.parent}" in err, err
        assert len(err.strip().splitlines()) == 1 and calls == []
    record.write_text(good)
    assert main([str(path)]) == 0


def test_a_finished_run_trained_with_other_flags_is_not_reused_silently(tmp_path, monkeypatch, capsys):
    calls: list[list[str]] = []
    monkeypatch.setattr(sweep_runner, "_run_in_process", fake_command(calls))
    path = small_grid(tmp_path)
    assert main([str(path)]) == 0
    grid = yaml.safe_load(path.read_text())
    grid["test"]["eval_batch_size"] = 5  # the test's flags only: the finished training runs still hold
    path.write_text(yaml.safe_dump(grid))
    calls.clear()
    assert main([str(path)]) == 0 and [c for c in calls if c[0] == "finetune"] == []
    grid["train"] = dict(reversed(list(grid["train"].items())))  # the same flags in another order
    path.write_text(yaml.safe_dump(grid, sort_keys=False))
    assert main([str(path)]) == 0 and [c for c in calls if c[0] == "finetune"] == []
    moved = tmp_path / "moved"  # the whole output folder moved: its runs are still the file's
    shutil.move(tmp_path / "runs", moved)
    assert main([str(path), "--output-dir", str(moved)]) == 0 and [c for c in calls if c[0] == "finetune"] == []
    shutil.move(moved, tmp_path / "runs")
    grid["train"]["num_steps"] = 8
    grid["train"]["fp16"] = True
    path.write_text(yaml.safe_dump(grid))
    assert main([str(path)]) == 2
    err = capsys.readouterr().err
    assert "trained with other flags than the sweep file now gives it (num_steps: 7 -> 8, fp16: absent -> set)" in err, err
    assert len(err.strip().splitlines()) == 1 and [c for c in calls if c[0] == "finetune"] == []


def test_folders_typed_on_the_command_line_are_relative_to_the_working_directory(tmp_path, monkeypatch):
    calls: list[list[str]] = []
    monkeypatch.setattr(sweep_runner, "_run_in_process", fake_command(calls))
    path = small_grid(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert main([str(path), "--output-dir", "here", "--results-dir", "there"]) == 0
    assert (tmp_path / "here" / "selection.json").is_file() and any((tmp_path / "there").rglob("summary.json"))

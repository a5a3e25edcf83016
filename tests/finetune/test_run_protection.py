"""A new run never silently destroys an earlier one (issue "Real inputs", point 10).

Fine-tuning and pre-training refuse to start afresh over an earlier run of the same name, naming
``--resume`` (``--resume auto``) and ``--overwrite``; ``--overwrite`` removes the earlier run's files
first; ``refers test`` refuses to replace another checkpoint's results; the sweep continues an
unfinished run with ``--resume``; output paths are checked before any work.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

import pytest
import torch

from refers.base.earlier_runs import claim_run_folder
from refers.base.errors import UserError
from refers.cli.finetune import main as finetune_main
from refers.cli.test import main as evaluate_main
from tests.finetune.test_finetune import common
from tests.cli.test_pretrain_cli import pretrain_args

DATASET = "Shenzhen_Tuberculosis"


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def finetune(datasets, out: Path, *extra: str, name: str = "run") -> int:
    return finetune_main([*common(datasets, DATASET, out, name=name), "--init", "scratch", "--num_steps", "2", *extra])


@pytest.fixture
def datasets(finetune_datasets):
    return finetune_datasets


# ----------------------------------------------------------------------------------------------
# The one check (refers.base.earlier_runs)
# ----------------------------------------------------------------------------------------------
def test_claim_refuses_removes_and_ignores_leftovers_alone(tmp_path):
    kept, empty, leftover = tmp_path / "a.bin", tmp_path / "empty", tmp_path / "events"
    empty.mkdir()
    leftover.write_text("x")
    # Leftovers and empty folders alone are no earlier run: nothing refused, nothing removed.
    assert claim_run_folder([empty, tmp_path / "absent"], where="W", instead="do X", overwrite=False,
                            leftovers=[leftover]) == []
    assert leftover.exists()
    kept.write_text("model")
    with pytest.raises(UserError) as refused:
        claim_run_folder([kept], where="W", instead="do X", overwrite=False, leftovers=[leftover])
    assert refused.value.exit_code == 2
    assert str(refused.value) == f"W already holds an earlier run ({kept}); do X, or replace it with --overwrite"
    assert kept.exists() and leftover.exists()
    # Another rank only checks; rank 0 removes the run and its leftovers.
    assert claim_run_folder([kept], where="W", instead="X", overwrite=True, remove=False) == [kept]
    assert kept.exists()
    assert claim_run_folder([kept], where="W", instead="X", overwrite=True, leftovers=[leftover]) == [kept, leftover]
    assert not kept.exists() and not leftover.exists()


# ----------------------------------------------------------------------------------------------
# Fine-tuning
# ----------------------------------------------------------------------------------------------
def test_finetuning_twice_is_refused_and_overwrite_replaces_the_whole_run(datasets, tmp_path, capsys, caplog):
    assert finetune(datasets, tmp_path) == 0
    best = tmp_path / "output" / "run_bestauc_checkpoint.bin"
    before = {p.name: sha(p) for p in (tmp_path / "output").glob("run_*")}
    metrics = (tmp_path / "logs" / "run" / "metrics.csv").read_text()
    events = sorted((tmp_path / "logs" / "run").glob("events.out.tfevents.*"))
    assert best.is_file() and len(events) == 1
    capsys.readouterr()

    assert finetune(datasets, tmp_path, "--seed", "7") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already holds an earlier run" in err[0]
    assert "--resume" in err[0] and "--overwrite" in err[0] and "--name run" in err[0]
    assert {p.name: sha(p) for p in (tmp_path / "output").glob("run_*")} == before  # nothing touched
    assert (tmp_path / "logs" / "run" / "metrics.csv").read_text() == metrics

    # Another name in the same folders is another run, except for a shared --log_dir's metrics.
    assert finetune(datasets, tmp_path, name="other") == 0
    args = [*common(datasets, DATASET, tmp_path, name="third"), "--log_dir", str(tmp_path / "logs" / "run")]
    assert finetune_main([*args, "--init", "scratch", "--num_steps", "2"]) == 2
    assert "metrics.csv" in capsys.readouterr().err

    assert finetune(datasets, tmp_path, "--seed", "7", "--overwrite") == 0
    assert sha(best) != before[best.name]
    steps = [[r.split(",")[0] for r in text.splitlines()[1:]] for text in (metrics, (tmp_path / "logs" / "run" / "metrics.csv").read_text())]
    assert steps[0] == steps[1] == ["2"]  # the new run's validation only, not appended to the earlier one's
    assert not any(e.exists() for e in events)  # the earlier run's TensorBoard events went with it
    assert "--overwrite: removed 5 file(s) of the earlier run run" in caplog.text  # 3 checkpoints, CSV, events


def test_a_start_that_failed_before_validating_is_no_earlier_run(datasets, tmp_path, capsys):
    lists, data = datasets[DATASET]
    shutil.copytree(data, tmp_path / "data")
    (tmp_path / "data" / "images_001" / "train_03.png").write_bytes(b"not a png")
    args = common({DATASET: (lists, tmp_path / "data")}, DATASET, tmp_path)
    assert finetune_main([*args, "--init", "scratch", "--num_steps", "3"]) == 1  # one epoch: the bad image is read
    assert (tmp_path / "logs" / "run" / "metrics.csv").read_text().count("\n") == 1  # a header only
    capsys.readouterr()
    assert finetune(datasets, tmp_path) == 0  # starts without --overwrite


def test_resume_and_overwrite_exclude_each_other_and_resume_warns_about_changed_flags(datasets, tmp_path, capsys, caplog):
    assert finetune(datasets, tmp_path, "--overwrite", "--resume") == 2
    assert "--resume and --overwrite exclude each other" in capsys.readouterr().err
    assert finetune(datasets, tmp_path) == 0
    state = tmp_path / "output" / "run_last.pth"
    before = sha(state)
    caplog.set_level(logging.WARNING)
    # A finished run resumed trains nothing more; a changed flag is named.
    assert finetune(datasets, tmp_path, "--resume", "--learning_rate", "0.5", "--num_workers", "0") == 0
    assert "flags differ from the interrupted run's: learning_rate: 0.03 -> 0.5" in caplog.text
    assert "num_workers" not in caplog.text.split("flags differ", 1)[1].splitlines()[0]
    assert torch.load(state, weights_only=True)["step"] == 2 and sha(state) == before


@pytest.mark.parametrize("flag", ["--output_dir", "--log_dir"])
def test_finetuning_output_folder_that_is_a_file_exits_2_before_work(datasets, tmp_path, capsys, flag):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    assert finetune(datasets, tmp_path, flag, str(blocker / "sub")) == 2
    err = capsys.readouterr().err
    assert f"{flag} {blocker / 'sub'} cannot be created: {blocker} is a file" in err and "Traceback" not in err


# ----------------------------------------------------------------------------------------------
# Testing
# ----------------------------------------------------------------------------------------------
def test_test_refuses_to_replace_the_results_of_another_checkpoint_or_test_list(datasets, tmp_path, capsys, caplog):
    assert finetune(datasets, tmp_path, name="a") == 0
    assert finetune(datasets, tmp_path, "--seed", "3", name="b") == 0
    results = tmp_path / "results"
    flags = ["--results_dir", str(results), "--num_workers", "0", "--seed", "42"]
    checkpoint = {n: str(tmp_path / "output" / f"{n}_bestauc_checkpoint.bin") for n in "ab"}
    assert evaluate_main(["--pretrained_dir", checkpoint["a"], *flags]) == 0
    folder = results / DATASET / "data100" / "REFERS" / "seed42"
    first = (folder / "Tuberculosis.txt").read_text()
    assert evaluate_main(["--pretrained_dir", checkpoint["a"], *flags]) == 0  # the same checkpoint again: its own results
    capsys.readouterr()
    assert evaluate_main(["--pretrained_dir", checkpoint["b"], *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{folder} holds test results made with another checkpoint ({Path(checkpoint['a']).resolve()})" in err[0]
    assert "--overwrite" in err[0] and (folder / "Tuberculosis.txt").read_text() == first
    (folder / "notes.md").write_text("mine\n")  # not the command's: --overwrite leaves it, and says so
    (folder / "Stale_class.txt").write_text("0 0.5\n")  # refers results would read it as a prediction file: removed
    with caplog.at_level(logging.WARNING):
        assert evaluate_main(["--pretrained_dir", checkpoint["b"], *flags, "--overwrite"]) == 0
    assert checkpoint["b"].split("/")[-1] in (folder / "summary.txt").read_text()
    assert (folder / "notes.md").read_text() == "mine\n" and "left alone in" in caplog.text and "notes.md" in caplog.text
    assert not (folder / "Stale_class.txt").exists() and "removed Stale_class.txt from" in caplog.text
    # The same checkpoint on another test list (one image fewer) is refused too.
    record = json.loads((folder / "run_record.json").read_text())
    lists = Path(record["test_list"]["path"]).parent
    other = tmp_path / "other_lists"
    shutil.copytree(lists, other)
    (other / "test.txt").write_text("".join((lists / "test.txt").read_text().splitlines(keepends=True)[:-1]))
    before = (folder / "Tuberculosis.txt").read_text()
    capsys.readouterr()
    assert evaluate_main(["--pretrained_dir", checkpoint["b"], *flags, "--list_dir", str(other)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"made with another test list ({lists / 'test.txt'})" in err[0], err
    assert (folder / "Tuberculosis.txt").read_text() == before
    # Prediction files without a record (e.g. the original's) are refused too; a results folder that
    # is a file is named before the test runs.
    (folder / "run_record.json").unlink()
    assert evaluate_main(["--pretrained_dir", checkpoint["b"], *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{folder} already holds files (Tuberculosis.txt and" in err[0], err
    other_seed = results / DATASET / "data100" / "REFERS" / "seed7"
    other_seed.write_text("a file")
    assert evaluate_main(["--pretrained_dir", checkpoint["b"], *flags[:-2], "--seed", "7"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"results folder {other_seed} is a file" in err[0], err


def test_test_results_dir_that_is_a_file_exits_2_before_loading(tmp_path, capsys):
    blocker = tmp_path / "results"
    blocker.write_text("x")
    # The checkpoint does not exist: the folder is checked first.
    assert evaluate_main(["--pretrained_dir", str(tmp_path / "none.bin"), "--results_dir", str(blocker)]) == 2
    assert f"--results_dir {blocker} is a file" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# Pre-training
# ----------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_pretraining_twice_is_refused_and_overwrite_replaces_the_run(pretrain_studies, tmp_path, capsys):
    from refers.cli.pretrain import main

    run = tmp_path / "run"
    assert main(pretrain_args(pretrain_studies, run, iterations=4)) == 0
    before = {p.name: sha(p) for p in run.glob("checkpoint_*.pth")}
    assert set(before) == {"checkpoint_2.pth", "checkpoint_4.pth"} and (run / "refers_checkpoint.pth").is_file()
    capsys.readouterr()

    assert main(pretrain_args(pretrain_studies, run, iterations=2)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"--serialization-dir {run} already holds an earlier run" in err[0]
    assert "--resume auto" in err[0] and "--overwrite" in err[0]
    assert {p.name: sha(p) for p in run.glob("checkpoint_*.pth")} == before

    # An export is not a state to resume from: one line, exit 2.
    assert main(pretrain_args(pretrain_studies, run, "--resume-from", str(run / "refers_checkpoint.pth"))) == 2
    err = capsys.readouterr().err
    assert "is not a REFERS pre-training checkpoint" in err and "Traceback" not in err

    assert main(pretrain_args(pretrain_studies, run, "--overwrite", iterations=2)) == 0
    # The earlier run's later checkpoint is gone, so --resume auto cannot pick it up.
    assert [p.name for p in run.glob("checkpoint_*.pth")] == ["checkpoint_2.pth"]
    assert json.loads((run / "refers_checkpoint.pth.json").read_text())["iteration"] == 2  # the new run's export
    assert "--overwrite: removed" in capsys.readouterr().err


def test_pretraining_serialization_dir_that_is_a_file_exits_2(pretrain_studies, tmp_path, capsys):
    from refers.cli.pretrain import main

    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(pretrain_args(pretrain_studies, blocker)) == 2
    assert f"--serialization-dir {blocker} is a file" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# The sweep
# ----------------------------------------------------------------------------------------------
def test_sweep_continues_an_unfinished_run_and_replaces_a_failed_attempt(tmp_path):
    from refers.sweep import Run
    from refers.sweep_runner import continuation

    out, logs = tmp_path / "cell", tmp_path / "cell" / "logs"
    run = Run("train", DATASET, 100, 0, "REFERS", "default",
              ("--name", "st", "--output_dir", str(out), "--log_dir", str(logs)), out)
    assert continuation(run) == ()  # nothing there: a fresh start
    logs.mkdir(parents=True)
    (logs / "metrics.csv").write_text("step,epoch\n")
    assert continuation(run) == ()  # a start that failed before validating left only leftovers
    (logs / "metrics.csv").write_text("step,epoch\n20,0\n")
    assert continuation(run) == ("--overwrite",)  # validated, but no resume state to continue from
    (out / "st_last.pth").write_bytes(b"state")
    assert continuation(run) == ("--resume",)
    assert continuation(Run("test", DATASET, 100, 0, "REFERS", "default", run.args, out)) == ()


def test_pretraining_log_alone_is_no_earlier_run(tmp_path):
    """Rank 0 opens log.txt before the processes' first barrier, while another rank may still be
    checking the folder: a log alone must not count as an earlier run (it did under torchrun)."""
    from argparse import Namespace

    from refers.cli.pretrain import _claim

    args = Namespace(resume=None, overwrite=False, machine_rank=0)
    (tmp_path / "log.txt").write_text("12:00:00 INFO started\n")
    _claim(tmp_path, args)  # no error
    assert (tmp_path / "log.txt").is_file()
    (tmp_path / "checkpoint_2.pth").write_bytes(b"state")
    with pytest.raises(UserError, match="--resume auto"):
        _claim(tmp_path, args)
    _claim(tmp_path, Namespace(resume=None, overwrite=True, machine_rank=0))
    assert not (tmp_path / "checkpoint_2.pth").exists() and not (tmp_path / "log.txt").exists()


def test_resume_from_a_file_that_is_no_finetuning_state_is_one_line(datasets, tmp_path, capsys):
    state = tmp_path / "output" / "run_last.pth"
    state.parent.mkdir(parents=True)
    torch.save({"format": "refers-pretrain-state", "iteration": 2}, state)  # another stage's state
    before = sha(state)
    assert finetune(datasets, tmp_path, "--resume") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"refers finetune: error: --resume: {state} is not a fine-tuning state of this project"]
    assert sha(state) == before  # kept as it was

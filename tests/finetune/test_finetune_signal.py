"""A real fine-tuning process stopped with SIGTERM saves its resume state, exits 143, and ``--resume``
continues to the same weights (bit for bit) as an uninterrupted run."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.finetune_helpers import make_dataset
from tests.finetune.test_finetune import common
from tests.finetune.test_finetune_ddp import env_for_children

STEPS = 100  # long enough that the signal surely arrives mid-run (the first validation is at step 20)
DATASET = "Shenzhen_Tuberculosis"


def command(datasets, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "refers", "finetune", *common(datasets, DATASET, out), "--init", "scratch",
            "--device", "cpu", "--fp32", "--num_steps", str(STEPS), "--eval_every", "20", *extra]


def validations(out: Path) -> list[list[str]]:
    """metrics.csv rows without the seconds column."""
    path = out / "logs" / "run" / "metrics.csv"  # common(): --log_dir <out>/logs/<name>
    if not path.is_file():
        return []
    rows = [line.split(",") for line in path.read_text().splitlines()[1:] if line and line[0].isdigit()]
    return [row[:-1] for row in rows]


def weights(path: Path) -> dict[str, torch.Tensor]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state["model"] if "model" in state else state


@pytest.mark.slow
def test_sigterm_saves_the_resume_state_and_resume_ends_where_a_straight_run_does(tmp_path):
    datasets = {DATASET: make_dataset(tmp_path / "data", DATASET)}
    env = env_for_children()
    straight = subprocess.run(command(datasets, tmp_path / "straight"), env=env, capture_output=True, text=True, timeout=600)
    assert straight.returncode == 0, straight.stderr[-3000:]

    cut = tmp_path / "cut"
    process = subprocess.Popen(command(datasets, cut), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not validations(cut) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert process.poll() is None, "the run ended before it could be interrupted"
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    assert "SIGTERM received" in stderr
    state = torch.load(cut / "output" / "run_last.pth", map_location="cpu", weights_only=True)
    assert state["format"] == "refers-finetune-state" and 20 <= state["step"] < STEPS
    assert set(state) >= {"model", "optimizer", "scheduler", "scaler", "early_stopping", "data", "rng", "config"}
    assert state["scheduler"]["last_epoch"] == state["step"]

    resumed = subprocess.run(command(datasets, cut, "--resume"), env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    final, expected = weights(cut / "output" / "run_last.pth"), weights(tmp_path / "straight" / "output" / "run_last.pth")
    assert torch.load(cut / "output" / "run_last.pth", weights_only=True)["step"] == STEPS
    assert final.keys() == expected.keys() and all(torch.equal(final[k], expected[k]) for k in expected)
    best, expected_best = (weights(root / "output" / "run_bestauc_checkpoint.bin") for root in (cut, tmp_path / "straight"))
    assert all(torch.equal(best[k], expected_best[k]) for k in expected_best)
    assert validations(cut) == validations(tmp_path / "straight")  # the same validations, none twice or lost

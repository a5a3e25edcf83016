"""`refers pretrain --submit slurm` / `refers finetune --submit slurm` on a real single-node Slurm.

The pre-training job gets Slurm's pre-timeout signal (``scancel --signal=USR2``, what
``--signal=USR2@90`` sends before the time limit), checkpoints, requeues itself, resumes with
``--resume auto`` and ends with the weights of the same run left alone. The generated sbatch script
of a 2-node run and the hand-written template under configs/slurm/ are checked for what they set.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest
import torch

from refers.cli.pretrain import main as pretrain
from refers.slurm.jobs import REQUEUE_EXIT, read_exit, task_environment
from tests.cli.test_pretrain_cli import pretrain_args
from tests.slurm_cluster import squeue_state, wait_for

REPO = Path(__file__).resolve().parents[2]
ITERATIONS = 64


def args(studies: Path, run: Path) -> list[str]:
    """ITERATIONS iterations, a checkpoint at the end and half-way: long enough for the signal to land mid-run
    (at 16 a job on an idle machine once finished in the half second between two polls of its log)."""
    out = pretrain_args(studies, run, iterations=ITERATIONS)
    out[out.index("--checkpoint-every") + 1] = str(ITERATIONS // 2)
    return out


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_pretraining_job_checkpoints_on_the_pre_timeout_signal_requeues_and_resumes_exactly(
        slurm_cluster, pretrain_studies, tmp_path, capsys):
    straight, submitted = tmp_path / "straight", tmp_path / "submitted"
    assert pretrain(args(pretrain_studies, straight)) == 0  # also trains the tokenizers both runs use
    capsys.readouterr()
    assert pretrain([*args(pretrain_studies, submitted), "--submit", "slurm", "--slurm-time", "30"]) == 0
    job_id = re.search(r"submitted Slurm job (\d+)", capsys.readouterr().out).group(1)
    log, record = submitted / "slurm" / "pretrain.log", submitted / "slurm" / "pretrain.exit.json"
    wait_for(lambda: log.is_file() and f"iter 1/{ITERATIONS}" in log.read_text(), 180, "the job's first iteration")
    subprocess.run(["scancel", "--signal=USR2", job_id], check=True)
    first = wait_for(lambda: read_exit(record), 180, "the job to save and stop")
    assert first["returncode"] == REQUEUE_EXIT and first["requeued"] and first["restarts"] == 0
    wait_for(lambda: squeue_state(job_id) == "PENDING", 60, "the job to be requeued")
    # Slurm holds a requeued job for about two minutes; let it start now (a few seconds after the
    # requeue: a start in the same second is refused, "Job credential revoked").
    time.sleep(3)
    subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], check=True)
    last = wait_for(lambda: (r := read_exit(record)) and r["restarts"] == 1 and r, 300, "the requeued job to finish")
    assert last["returncode"] == 0 and last["job_id"] == job_id
    text = log.read_text()
    saved = int(re.search(r"SIGUSR2 received: checkpoint saved at iteration (\d+)", text).group(1))
    assert 1 <= saved < ITERATIONS and f"resumed from {submitted / f'checkpoint_{saved}.pth'} at iteration {saved}" in text
    assert "--resume auto" in text.splitlines()[[i for i, line in enumerate(text.splitlines()) if "(restart 1)" in line][0]]
    a, b = weights(straight / f"checkpoint_{ITERATIONS}.pth"), weights(submitted / f"checkpoint_{ITERATIONS}.pth")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_finetuning_job_runs_the_command_on_slurm(slurm_cluster, finetune_datasets, tmp_path, capsys):
    from refers.cli.finetune import main as finetune

    list_dir, data_root = finetune_datasets["Shenzhen_Tuberculosis"]
    out = tmp_path / "out"
    argv = ["--dataset", "Shenzhen_Tuberculosis", "--name", "slurm", "--model_type", "ViT-nano_8", "--img_size", "32",
            "--num_classes", "1", "--init", "scratch", "--num_steps", "2", "--eval_every", "2", "--train_batch_size", "8",
            "--eval_batch_size", "16", "--warmup_steps", "1", "--data_root", str(data_root), "--list_dir", str(list_dir),
            "--output_dir", str(out), "--log_dir", str(out / "logs"), "--num_workers", "0"]
    assert finetune([*argv, "--submit", "slurm"]) == 0
    job_id = re.search(r"submitted Slurm job (\d+)", capsys.readouterr().out).group(1)
    record = wait_for(lambda: read_exit(out / "slurm" / "finetune-slurm.exit.json"), 300, "the fine-tuning job")
    assert record["returncode"] == 0 and record["job_id"] == job_id, (out / "slurm" / "finetune-slurm.log").read_text()[-2000:]
    assert (out / "slurm_bestauc_checkpoint.bin").is_file() and (out / "slurm_last.pth").is_file()
    assert "--submit" not in (out / "slurm" / "finetune-slurm.log").read_text()


def test_two_node_script_and_its_ranks(pretrain_studies, tmp_path, capsys, monkeypatch):
    """The generated sbatch script of a 2-node x 8-GPU run, and the variables each of its tasks gets."""
    assert pretrain([*args(pretrain_studies, tmp_path / "run"), "--submit", "slurm", "--nodes", "2",
                     "--gpus-per-node", "8", "--slurm-time", "2-00:00:00", "--slurm-partition", "gpu",
                     "--slurm-option=--qos=high", "--slurm-dry-run"]) == 0
    shown = capsys.readouterr().out
    sbatch = {line.split("=", 1)[0][len("#SBATCH "):]: line.split("=", 1)[-1] for line in shown.splitlines()
              if line.startswith("#SBATCH")}
    assert {k: sbatch[k] for k in ("--nodes", "--ntasks-per-node", "--gpus-per-node", "--partition", "--time",
                                   "--signal", "--qos")} == {
        "--nodes": "2", "--ntasks-per-node": "8", "--gpus-per-node": "8", "--partition": "gpu", "--time": "2880",
        "--signal": "USR2@90", "--qos": "high"}
    assert "#SBATCH --requeue" in shown and "--mem" not in shown and "--account" not in shown
    commands = [line for line in shown.splitlines() if " -m refers pretrain " in line]
    assert len(commands) == 2 and all("--submit" not in c and "--nodes" not in c for c in commands)
    assert "--num-gpus-per-machine 1" in commands[0] and commands[1].endswith("--resume auto")

    # Task 9 of 16 (node 1, local rank 1), as submitit reads it from Slurm's variables.
    import submitit

    for key, value in {"SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": "4242", "SLURM_PROCID": "9", "SLURM_LOCALID": "1",
                       "SLURM_NTASKS": "16", "SLURM_JOB_NUM_NODES": "2", "SLURM_NODEID": "1",
                       "SLURM_JOB_NODELIST": "gpu[07-08]"}.items():
        monkeypatch.setenv(key, value)
    assert task_environment(submitit.JobEnvironment()) == {
        "RANK": "9", "LOCAL_RANK": "1", "WORLD_SIZE": "16", "MASTER_ADDR": "gpu07", "MASTER_PORT": str(10000 + 4242)}


def test_the_sbatch_template_sets_ranks_rendezvous_signal_and_requeue():
    text = (REPO / "configs" / "slurm" / "pretrain_2nodes.sbatch").read_text()
    assert subprocess.run(["bash", "-n", "-c", text]).returncode == 0
    for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=8", "#SBATCH --gpus-per-node=8",
                 "#SBATCH --signal=USR2@90", "#SBATCH --requeue"):
        assert line in text.splitlines()
    for variable in ("RANK=$SLURM_PROCID", "LOCAL_RANK=$SLURM_LOCALID", "WORLD_SIZE=$SLURM_NTASKS",
                     'export MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
                     "export MASTER_PORT=$((10000 + SLURM_JOB_ID % 20000))"):
        assert variable in text
    assert "--resume auto" in text and f'"$code" -eq {REQUEUE_EXIT}' in text and 'scontrol requeue "$SLURM_JOB_ID"' in text


def test_submitting_without_a_cluster_is_one_clear_line(pretrain_studies, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here
    assert pretrain([*args(pretrain_studies, tmp_path / "run"), "--submit", "slurm"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot submit to Slurm" in err[0] and "slurm_local.sh" in err[0]


def test_a_job_sbatch_refuses_is_one_line_and_the_earlier_run_stays(slurm_cluster, pretrain_studies, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "log.txt").write_text("an earlier start\n")
    assert pretrain([*args(pretrain_studies, run), "--submit", "slurm", "--slurm-partition", "nosuchpartition"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "sbatch refused the job" in err[0] and "partition" in err[0].lower()
    assert (run / "log.txt").read_text() == "an earlier start\n"

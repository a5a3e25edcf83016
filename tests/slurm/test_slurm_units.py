"""The Slurm pieces that need no cluster: flag removal, the job's command after a requeue, waiting
when squeue does not answer, resources."""

from __future__ import annotations

import pytest

from refers.cli.submit import replace_flags, without_submit_flags
from refers.config.engine import ConfigError
from refers.slurm.jobs import CommandJob
from refers.slurm.resources import SlurmResources, time_minutes


def test_submission_flags_are_removed_also_abbreviated_but_not_the_commands_own():
    argv = ["--sub", "slurm", "--gpus", "2", "--slurm-dry", "--config", "x.yaml", "--nodes=3", "--no-flip",
            "--slurm-option", "--qos=high", "--gpu", "0", "--slurm-time=10"]
    assert without_submit_flags(argv, own=["--gpu", "--config", "--no-flip"]) == [
        "--config", "x.yaml", "--no-flip", "--gpu", "0"]
    resume = {"--overwrite": 0, "--resume": 1, "--resume-from": 1}
    assert replace_flags(["--overw", "--config", "x"], resume, ["--resume", "auto"]) == ["--config", "x", "--resume", "auto"]
    assert replace_flags(["--resume-from", "c.pth", "--log-every", "5"], resume, ["--overwrite"]) == [
        "--log-every", "5", "--overwrite"]


def test_a_requeued_job_resumes_when_something_was_saved_else_starts_over(tmp_path, monkeypatch):
    job = CommandJob(("first",), str(tmp_path), str(tmp_path / "log"), restart_argv=("resume",),
                     resume_glob=str(tmp_path / "checkpoint_*.pth"), fresh_argv=("fresh",))
    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    assert job.command() == ["first"]
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    assert job.command() == ["fresh"]  # requeued (preempted) before the first checkpoint
    (tmp_path / "checkpoint_10.pth").write_bytes(b"")
    assert job.command() == ["resume"]


def test_no_answer_from_squeue_never_counts_a_job_as_ended(tmp_path, monkeypatch):
    from refers.sweep import Run
    from refers.sweep_slurm import SlurmSweep, _Pending
    import refers.sweep_slurm as sweep_slurm

    run = Run("train", "NIH_ChestX-ray", 100, 0, "REFERS", "default", (), tmp_path)
    sweep = SlurmSweep.__new__(SlurmSweep)
    sweep.print_fn, sweep.folder = print, tmp_path
    pending = _Pending(run, "77", 0.0)
    monkeypatch.setattr(sweep_slurm.time, "time", lambda: 10_000.0)  # long after any grace period
    assert sweep._ended(pending, None) is None and pending.unseen_since is None
    assert sweep._ended(pending, {}) is None  # missing from squeue: the grace period starts
    monkeypatch.setattr(sweep_slurm.time, "time", lambda: 10_000.0 + sweep_slurm._LOST_AFTER)
    lost = sweep._ended(pending, {})
    assert lost is not None and lost.returncode == 1


def test_resources_request_only_what_is_given():
    assert SlurmResources().submitit_parameters() == {"nodes": 1, "ntasks_per_node": 1,
                                                      "additional_parameters": {"requeue": True}}
    given = SlurmResources.from_mapping({"partition": "gpu", "time": "1-00:00:00", "gpus_per_job": 2, "mem": "64G",
                                         "cpus_per_job": 8, "sbatch_options": ["--qos=high", "--exclusive"]}, "f")
    assert given.submitit_parameters() == {
        "nodes": 1, "ntasks_per_node": 1, "gpus_per_node": 2, "partition": "gpu", "cpus_per_task": 8, "mem": "64G",
        "time": 1440, "additional_parameters": {"requeue": True, "qos": "high", "exclusive": True}}
    assert [time_minutes(t) for t in ("30", "1:30", "01:00:00", "2-00", "1-02:03:04")] == [30, 2, 60, 2880, 1564]
    for bad, says in (({"partion": "gpu"}, "partition"), ({"mem": "lots"}, "memory size"),
                      ({"sbatch_options": ["qos=high"]}, "long option"), ({"gpus_per_job": -1}, "gpus_per_job")):
        with pytest.raises(ConfigError, match=says):
            SlurmResources.from_mapping(bad, "sweep.yaml: slurm")


@pytest.mark.parametrize("extra, says", [(["--jobs", "2"], "--jobs and --devices are for the local executor"),
                                         (["--devices", "0,1"], "--jobs and --devices are for the local executor"),
                                         (["--poll", "0"], "--poll must be > 0 seconds, got 0.0")])
def test_slurm_executor_usage_errors_are_one_line_before_anything_runs(tmp_path, capsys, extra, says):
    from refers.cli.sweep import main
    from tests.slurm.test_slurm_sweep import write_sweep

    path = write_sweep(tmp_path)
    assert main([str(path), "--executor", "slurm", *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0] and "Traceback" not in err[0]
    assert not (tmp_path / "runs").exists()  # nothing submitted, nothing written


def test_finetune_submit_runs_training_only(finetune_datasets, tmp_path, capsys):
    from refers.cli.finetune import main

    list_dir, data_root = finetune_datasets["Shenzhen_Tuberculosis"]
    argv = ["--dataset", "Shenzhen_Tuberculosis", "--name", "t", "--stage", "test", "--list_dir", str(list_dir),
            "--data_root", str(data_root), "--output_dir", str(tmp_path / "out"), "--submit", "slurm"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--submit slurm runs fine-tuning (--stage train)" in err[0]

"""`refers sweep --executor slurm` on a real single-node Slurm (sbatch, squeue, scancel).

The fine-tuning commands are a stand-in script (the sweep file's ``launcher``) that writes what
`train.py`/`test.py` write and fails where a marker file says so; what is real is everything around
them: submitit's sbatch scripts, the jobs on the cluster, the outcome files the jobs write, the
polling of squeue, selection, the test jobs submitted once a group's training has ended, the
re-run that skips finished cells, and --status. tests/apps/test_sweep.py covers the plan itself.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from refers.cli.sweep import main
from refers.finetune.train import CSV_FIELDS
from refers.sweep import load_config, plan_training
from refers.sweep_status import sweep_status
from tests.slurm_cluster import squeue_state, wait_for

pytestmark = pytest.mark.slow

FAKE = '''
import json, sys
from pathlib import Path
argv = sys.argv[1:]
def opt(name):
    return argv[argv.index("--" + name) + 1] if "--" + name in argv else None
name = opt("name")
print("fake", " ".join(argv))
if Path("slow").exists():
    import time
    time.sleep(float(Path("slow").read_text()))
if Path("fail_" + name).exists():
    print("boom")
    sys.exit(3)
if argv[0].endswith("train.py"):
    out, logs = Path(opt("output_dir")), Path(opt("log_dir"))
    out.mkdir(parents=True, exist_ok=True)
    logs.mkdir(parents=True, exist_ok=True)
    (out / (name + "_bestauc_checkpoint.bin")).write_bytes(b"weights")
    auc = {"0.1": 0.70, "0.01": 0.80}.get(opt("learning_rate"), 0.60)
    fields = HEADER
    row = {f: "0" for f in fields}
    row.update(step="1", **{AUC: "%.6f" % auc})
    (logs / "metrics.csv").write_text(",".join(fields) + "\\n" + ",".join(row[f] for f in fields) + "\\n")
else:
    folder = Path(opt("results_dir")) / argv[0].split("/")[1] / ("data" + opt("data_volume")) / opt("method") / ("seed" + opt("seed"))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "summary.json").write_text(json.dumps({"mean_auc": 0.5, "checkpoint": opt("pretrained_dir")}))
'''


def write_sweep(tmp_path: Path) -> Path:
    [auc_field] = [f for f in CSV_FIELDS if f.startswith("val_") and "auc" in f]
    fake = tmp_path / "fake_finetune.py"
    fake.write_text(f"HEADER = {list(CSV_FIELDS)!r}\nAUC = {auc_field!r}\n" + textwrap.dedent(FAKE))
    grid = {
        "name": "slurmgrid", "workdir": str(tmp_path), "output_dir": str(tmp_path / "runs"),
        "results_dir": str(tmp_path / "results"), "launcher": ["python", str(fake)],
        "train": {"model_type": "ViT-nano_8", "num_steps": 3, "device": "cpu"},
        "test": {"device": "cpu"},
        "arms": {"REFERS": {"train": {"pretrained_dir": "enc.pth"}, "search": {"learning_rate": [0.1, 0.01]}},
                 "scratch": {"train": {"init": "scratch"}}},
        "datasets": {"NIH_ChestX-ray": {"fractions": [100]}},
        "slurm": {"time": "00:10:00"},
    }
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(grid), encoding="utf-8")
    return path


def slurm_jobs(log: Path) -> list[str]:
    return re.findall(r": Slurm job (\d+)\n", log.read_text())


def test_sweep_on_slurm_fails_a_job_then_a_rerun_skips_finished_cells(slurm_cluster, tmp_path, capsys):
    path = write_sweep(tmp_path)
    config = load_config(path)
    scratch = next(run for run in plan_training(config) if run.arm == "scratch")
    (tmp_path / f"fail_{scratch.args[scratch.args.index('--name') + 1]}").write_text("")

    assert main([str(path), "--executor", "slurm", "--poll", "1"]) == 1
    out, err = capsys.readouterr()
    assert "FAILED (exit 3)" in out and "1 run(s) failed" in err and "scratch" in err
    first_jobs = slurm_jobs(config.log_path)
    assert len(first_jobs) == 4  # three training jobs, then the one test of REFERS's chosen candidate
    # The jobs went through Slurm: submitit's sbatch scripts, and each job's own outcome record.
    for run in plan_training(config):
        record = json.loads((run.run_dir / "train.exit.json").read_text())
        assert record["job_id"] in first_jobs and record["returncode"] == (3 if run.arm == "scratch" else 0)
        script = (config.output_dir / "slurm" / f"{record['job_id']}_submission.sh").read_text()
        assert "#SBATCH --time=10" in script and "--gpus" not in script  # device cpu: no GPU asked for
        assert f"# job {record['job_id']} task 0/1" in (run.run_dir / "train.log").read_text()
    selection = {row["arm"]: row for row in json.loads((config.output_dir / "selection.json").read_text())}
    assert selection["REFERS"]["candidate"] == "learning_rate=0.01"  # 0.80 beats 0.70
    assert (config.results_dir / "NIH_ChestX-ray" / "data100" / "REFERS" / "seed0" / "summary.json").is_file()
    assert not (config.results_dir / "NIH_ChestX-ray" / "data100" / "scratch").exists()  # no checkpoint, no test

    assert main([str(path), "--status"]) == 0
    status = capsys.readouterr().out
    assert re.search(r"failed\s+train NIH_ChestX-ray 100% seed 0 scratch .*exit 3", status)
    assert "sweep slurmgrid: 3 finished, 1 failed" in status

    # The re-run submits only what did not finish: scratch's training, then its test.
    (tmp_path / f"fail_{scratch.args[scratch.args.index('--name') + 1]}").unlink()
    assert main([str(path), "--executor", "slurm", "--poll", "1"]) == 0
    out = capsys.readouterr().out
    assert "reusing 2 finished training run(s)" in out
    assert len(slurm_jobs(config.log_path)) == 4 + 2
    assert main([str(path), "--status"]) == 0
    assert "sweep slurmgrid: 5 finished" in capsys.readouterr().out


def test_status_reads_queued_and_vanished_jobs_from_squeue(slurm_cluster, tmp_path, capsys):
    path = write_sweep(tmp_path)
    config = load_config(path)
    run = plan_training(config)[0]
    held = subprocess.run(["sbatch", "--hold", "--parsable", "-o", str(tmp_path / "held.out"), "--wrap", "true"],
                          capture_output=True, text=True, check=True).stdout.strip().split(";")[0]
    run.run_dir.mkdir(parents=True)
    (run.run_dir / "train.slurm.json").write_text(json.dumps({"job_id": held}))
    try:
        states = {item.run: item for item in sweep_status(config)}
        assert states[run].state == "submitted" and held in states[run].detail
        assert sum(item.state == "not started" for item in states.values()) == 2
        # The local executor leaves that run alone (two writers in one folder) and says why; the rest run.
        assert main([str(path)]) == 1
        out = capsys.readouterr().out
        assert f"left out, its Slurm job {held} of an earlier --executor slurm (it is still queued or running)" in out
        assert not (run.run_dir / "train.log").exists() and (run.run_dir / "train.slurm.json").is_file()
    finally:
        subprocess.run(["scancel", held], check=True)
    wait_for(lambda: squeue_state(held) != "PENDING", 30, "the cancel")
    assert main([str(path), "--status"]) == 0
    assert re.search(r"failed\s+train .*Slurm job %s ended without an exit status" % held, capsys.readouterr().out)


def test_slurm_section_is_checked_when_the_file_loads(tmp_path, capsys):
    path = write_sweep(tmp_path)
    data = yaml.safe_load(path.read_text())
    data["slurm"] = {"partion": "gpu"}
    path.write_text(yaml.safe_dump(data))
    assert main([str(path), "--dry-run", "--executor", "slurm"]) == 2
    err = capsys.readouterr().err
    assert "slurm" in err and "partion" in err and "partition" in err
    data["slurm"] = {"time": "soon"}
    path.write_text(yaml.safe_dump(data))
    assert main([str(path), "--dry-run"]) == 2
    assert "not a Slurm time" in capsys.readouterr().err


def test_ctrl_c_leaves_the_jobs_running_and_a_rerun_waits_for_them(slurm_cluster, tmp_path, capsys):
    path = write_sweep(tmp_path)
    data = yaml.safe_load(path.read_text())
    data["arms"] = {"REFERS": data["arms"]["REFERS"] | {"search": {}}}  # one training job, then one test job
    path.write_text(yaml.safe_dump(data))
    config = load_config(path)
    (tmp_path / "slow").write_text("8")
    sweep = subprocess.Popen([sys.executable, "-m", "refers", "sweep", str(path), "--executor", "slurm", "--poll", "1"],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    [job] = wait_for(lambda: config.log_path.is_file() and slurm_jobs(config.log_path), 60, "the submission")
    sweep.send_signal(signal.SIGINT)
    out, _ = sweep.communicate(timeout=60)
    assert sweep.returncode == 130, out
    assert f"1 Slurm job(s) keep running ({job})" in out and "--status" in out and "Traceback" not in out
    assert squeue_state(job) in ("PENDING", "RUNNING")

    assert main([str(path), "--executor", "slurm", "--poll", "1"]) == 0
    out = capsys.readouterr().out
    assert f"Slurm job {job} is still queued or running; waiting for it" in out
    assert slurm_jobs(config.log_path) == [job, slurm_jobs(config.log_path)[1]]  # no second training job
    assert (config.results_dir / "NIH_ChestX-ray" / "data100" / "REFERS" / "seed0" / "summary.json").is_file()

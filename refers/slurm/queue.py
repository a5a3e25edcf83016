"""What Slurm says of jobs, from ``squeue`` (no accounting database needed), and requeueing."""

from __future__ import annotations

import shutil
import subprocess
from typing import Iterable

# States of a job that is still Slurm's to run (squeue's long names).
WAITING = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "RESIZING", "SUSPENDED"}
ACTIVE = {"RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING"}


def slurm_problem() -> str | None:
    """Why this machine cannot submit to Slurm (None when it can): no ``sbatch``, or no controller answers."""
    if shutil.which("sbatch") is None or shutil.which("squeue") is None:
        return "Slurm's commands (sbatch, squeue) are not on PATH"
    try:
        done = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"sinfo did not answer ({error})"
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        return f"no Slurm controller answers (sinfo: {lines[-1] if lines else f'exit {done.returncode}'})"
    return None


def job_states(job_ids: Iterable[str]) -> dict[str, str] | None:
    """``{job id: state}`` for the given jobs that Slurm still knows (finished jobs drop out of
    ``squeue`` after the cluster's MinJobAge); None when ``squeue`` could not answer (then nothing
    can be said of any job, and callers must not take a missing job for an ended one)."""
    wanted = {str(j) for j in job_ids}
    if not wanted:
        return {}
    try:
        done = subprocess.run(["squeue", "-h", "--states=all", "-o", "%i|%T"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    states = {}
    for line in done.stdout.splitlines():
        job_id, _, state = line.strip().partition("|")
        if job_id in wanted:
            states[job_id] = state
    return states


def is_live(state: str | None) -> bool:
    """The job is waiting or running (it will still produce an outcome)."""
    return state in WAITING or state in ACTIVE


def requeue(job_id: str) -> None:
    """Put a running job back in the queue (Slurm ends this run of it; it starts again later).

    Raises:
        RuntimeError: ``scontrol requeue`` failed (its message).
    """
    done = subprocess.run(["scontrol", "requeue", str(job_id)], capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"scontrol requeue {job_id}: {(done.stderr or done.stdout).strip()}")

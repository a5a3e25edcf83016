"""The job a Slurm allocation runs: one command line, as a user would type it.

The job is a picklable callable (submitit runs it on every task of the allocation). It runs the
command as a subprocess from the submission's working folder, its output appended to a log file,
and writes ``<exit file>`` (exit code, seconds, job id, restarts) when the command ends, so that
the sweep and ``--status`` read outcomes from the run folders, not from Slurm's accounting.

Multi-task jobs (pre-training on several GPUs or nodes) get the torch.distributed variables from
Slurm's: ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` (the first node),
``MASTER_PORT`` (derived from the job id, so two jobs on one node do not collide); the command
then runs as it does under ``torchrun``.

Time limits: submitit asks Slurm for ``SIGUSR2`` 90 s before the limit (``--signal=USR2@90``).
The training engine treats it like SIGTERM (save the resume state at the next step boundary, exit
with 128 + 12); this wrapper ignores it, so that it cannot end the job before the command has
saved, and then requeues the job; the requeued run (``SLURM_RESTART_COUNT`` > 0) starts the
command's resume form (``--resume auto`` / ``--resume``) and continues exactly, or, when Slurm
requeued the job before anything was saved (a preemption, a node failure), starts it afresh over
that attempt (``--overwrite``). Until the engine installs its own handler (start-up, testing, the
export) the signal is ignored, so a job that reaches its limit there ends at the limit, unsaved.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from refers.base.atomic import atomic_write_text
from refers.base.json_files import read_json

PRE_TIMEOUT_SIGNAL = signal.SIGUSR2
REQUEUE_EXIT = 128 + int(PRE_TIMEOUT_SIGNAL)  # the command saved its state on the pre-timeout signal
_PORT_BASE, _PORT_SPAN = 10000, 20000  # 10000-29999: below Linux's ephemeral ports (32768-)


def restarts() -> int:
    """How often Slurm has requeued this job (0 on its first run)."""
    try:
        return int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)
    except ValueError:
        return 0


def rank_environment(job_id: str, global_rank: int, local_rank: int, world_size: int, hostnames: list[str]) -> dict[str, str]:
    """The torch.distributed (``env://``) variables of one task of a multi-task job."""
    digits = "".join(ch for ch in str(job_id).split("_")[0] if ch.isdigit()) or "0"
    return {"RANK": str(global_rank), "LOCAL_RANK": str(local_rank), "WORLD_SIZE": str(world_size),
            "MASTER_ADDR": hostnames[0], "MASTER_PORT": str(_PORT_BASE + int(digits) % _PORT_SPAN)}


def task_environment(job: Any) -> dict[str, str]:
    """The rank variables of this task (``job``: submitit's ``JobEnvironment``); none for a one-task job."""
    if job.num_tasks <= 1:
        return {}
    return rank_environment(job.job_id, job.global_rank, job.local_rank, job.num_tasks, list(job.hostnames))


@dataclass(frozen=True)
class CommandJob:
    """Run ``argv`` from ``workdir`` (``restart_argv`` once Slurm has requeued the job).

    Attributes:
        argv: the whole command line (``[python, -m, refers, ...]``).
        workdir: the folder the command runs from (relative paths in it resolve there).
        log_file: where the command's output is appended.
        exit_file: the outcome record written when the command ends (None: none).
        restart_argv: the command after a requeue when ``resume_glob`` matches a file (None: ``argv`` again).
        resume_glob: what the command saves to resume from (an absolute glob pattern).
        fresh_argv: the command after a requeue when nothing was saved yet (None: ``argv`` again).
        env: extra environment variables.
    """

    argv: tuple[str, ...]
    workdir: str
    log_file: str
    exit_file: str | None = None
    restart_argv: tuple[str, ...] | None = None
    resume_glob: str | None = None
    fresh_argv: tuple[str, ...] | None = None
    env: tuple[tuple[str, str], ...] = ()

    def command(self) -> list[str]:
        if restarts() == 0:
            return list(self.argv)
        saved = self.resume_glob is None or any(Path("/").glob(self.resume_glob.lstrip("/")))
        return list((self.restart_argv if saved else self.fresh_argv) or self.argv)

    def __call__(self) -> int:
        import submitit

        job = submitit.JobEnvironment()
        env = {**os.environ, **dict(self.env), **task_environment(job)}
        # The command saves and exits on it; submitit's own handler would requeue before that.
        signal.signal(PRE_TIMEOUT_SIGNAL, signal.SIG_IGN)
        start = time.time()
        argv = self.command()
        Path(self.log_file).parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "a", encoding="utf-8") as log:
            log.write(f"# job {job.job_id} task {job.global_rank}/{job.num_tasks} on {job.hostname}"
                      f" (restart {restarts()}): {' '.join(argv)}\n")
            log.flush()
            code = subprocess.call(argv, cwd=self.workdir, env=env, stdout=log, stderr=subprocess.STDOUT)
        if job.global_rank == 0:
            self._record(code, time.time() - start, job.job_id)
        if code == REQUEUE_EXIT:
            if job.global_rank == 0:
                from refers.slurm.queue import requeue

                requeue(job.job_id)
            raise SystemExit(code)  # no result: the requeued run gives it
        return code

    def _record(self, code: int, seconds: float, job_id: str) -> None:
        if self.exit_file is None:
            return
        record: Mapping[str, Any] = {"returncode": code, "seconds": round(seconds, 2), "job_id": str(job_id),
                                     "restarts": restarts(), "requeued": code == REQUEUE_EXIT}
        atomic_write_text(self.exit_file, json.dumps(record, indent=2) + "\n")


def read_exit(path: str | os.PathLike) -> dict[str, Any] | None:
    """A job's outcome record (None when absent or unreadable)."""
    try:
        return read_json(Path(path))
    except (OSError, ValueError):
        return None

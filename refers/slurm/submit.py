"""Submitting a :class:`~refers.slurm.jobs.CommandJob` to Slurm with submitit, and the ``sbatch``
script it generates.

submitit writes the script (``#SBATCH`` lines from :class:`~refers.slurm.resources.SlurmResources`,
``--signal=USR2@90`` for the pre-timeout signal, one ``srun`` task per GPU), pickles the job into
``folder`` and calls ``sbatch``. The one thing changed from submitit's script: without a ``time``
given, no ``--time`` line (submitit always writes one, 5 minutes by default), so the partition's
default limit applies.
"""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path
from typing import Any

from refers.base.errors import UserError
from refers.slurm.jobs import CommandJob
from refers.slurm.queue import slurm_problem
from refers.slurm.resources import SlurmResources


def _executor_class() -> type:
    import submitit

    class Executor(submitit.SlurmExecutor):
        """submitit's Slurm executor, requesting no time limit unless one was given."""

        time_given = False

        @classmethod
        def affinity(cls) -> int:
            # submitit refuses to build an executor without srun; check_slurm() says so before any
            # submission instead, so that a dry run shows the script on a machine without Slurm.
            return 1

        def _make_submission_file_text(self, command: str, uid: str) -> str:
            text = super()._make_submission_file_text(command, uid)
            if self.time_given:
                return text
            return "\n".join(line for line in text.splitlines() if not line.startswith("#SBATCH --time=")) + "\n"

    return Executor


def make_executor(folder: str | os.PathLike, resources: SlurmResources, *, name: str, nodes: int = 1,
                  tasks_per_node: int = 1, gpus_per_node: int | None = None) -> Any:
    """A submitit executor for jobs of this shape (submitit's files and the jobs' output go to ``folder``)."""
    executor = _executor_class()(folder=str(folder), max_num_timeout=1000)
    params = resources.submitit_parameters(nodes, tasks_per_node, gpus_per_node)
    executor.time_given = "time" in params or "time" in params.get("additional_parameters", {})
    executor.update_parameters(job_name=name, stderr_to_stdout=True, **params)
    return executor


def sbatch_script(executor: Any) -> str:
    """The ``sbatch`` script ``executor`` would submit (nothing is submitted)."""
    return executor._make_submission_file_text(executor._submitit_command_str, "preview")


def check_slurm() -> None:
    """Raises:
        UserError: (exit 2) when no Slurm can take a job here, saying why."""
    problem = slurm_problem()
    if problem:
        raise UserError(f"cannot submit to Slurm: {problem} (start a local one with scripts/slurm_local.sh start, "
                        "or run on a cluster's login node)", 2)


def submit(executor: Any, job: CommandJob) -> Any:
    """Submit ``job``; the submitit job (its ``job_id``) is returned.

    Raises:
        UserError: ``sbatch`` refused the job (its message, e.g. an unknown partition).
    """
    import submitit

    Path(job.log_file).parent.mkdir(parents=True, exist_ok=True)
    try:
        # submitit copies sbatch's stderr to ours as it runs: the error below says the refusal once.
        with contextlib.redirect_stderr(io.StringIO()):
            return executor.submit(job)
    except (submitit.core.utils.FailedJobError, OSError) as error:
        lines = [line for line in str(error).strip().splitlines() if line.strip()]
        raise UserError(f"sbatch refused the job: {lines[-1] if lines else error}", 2) from None

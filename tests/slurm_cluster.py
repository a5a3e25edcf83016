"""The Slurm the Slurm tests run against: a real single-node cluster (``scripts/slurm_local.sh``).

``.ci/run`` starts it before ``make test`` and exports ``SLURM_CONF``; a test session started
without it tries to start it once (the script installs Debian's slurm-wlm and munge when it can).
Where no Slurm can be started (not root, not Debian, no package registry) the Slurm tests skip,
saying why.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "slurm_local.sh"


def _start() -> str | None:
    """SLURM_CONF of a running cluster, or None (the reason printed by the script is kept in ``_why``)."""
    from refers.slurm.queue import slurm_problem

    if os.environ.get("SLURM_CONF") and slurm_problem() is None:
        return os.environ["SLURM_CONF"]
    try:
        done = subprocess.run(["bash", str(SCRIPT), "start"], capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as error:
        _why.append(f"scripts/slurm_local.sh start failed: {error}")
        return None
    line = next((part for part in done.stdout.split() if part.startswith("SLURM_CONF=")), None)
    if done.returncode != 0 or line is None:
        tail = (done.stderr or done.stdout).strip().splitlines()
        _why.append(f"scripts/slurm_local.sh start: {tail[-1] if tail else f'exit {done.returncode}'}")
        return None
    os.environ["SLURM_CONF"] = line.split("=", 1)[1]
    problem = slurm_problem()
    if problem:
        _why.append(problem)
        return None
    return os.environ["SLURM_CONF"]


_why: list[str] = []


@pytest.fixture(scope="session")
def slurm_cluster() -> str:
    """``SLURM_CONF`` of the running local cluster (skips the test when none can be started)."""
    conf = _start()
    if conf is None:
        pytest.skip(f"no Slurm cluster could be started here: {'; '.join(_why)}")
    return conf


def wait_for(condition, timeout: float, what: str, every: float = 0.5):
    """Poll ``condition()`` until it returns something true; fail the test naming ``what`` after ``timeout`` s."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def squeue_state(job_id: str) -> str | None:
    from refers.slurm.queue import job_states

    return job_states([job_id]).get(job_id)

"""``refers sweep CONFIG --status``: where every command of a sweep stands, for either executor.

Read from the run folders (the sweep's record, the checkpoint, the test summary, the outcome file
``<kind>.exit.json``, the Slurm job record ``<kind>.slurm.json``) and, for Slurm jobs, from
``squeue``; nothing is started and nothing is written.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Callable

from refers.slurm.jobs import read_exit
from refers.slurm.queue import ACTIVE, WAITING, job_states
from refers.sweep import Run, SweepConfig, plan_training
from refers.sweep_runner import current_choices, exit_path, recorded_job, result_summary_path, selected_tests, train_done

# The order the summary line counts them in.
STATES = ("finished", "running", "submitted", "failed", "waiting", "not started", "unknown")


@dataclass(frozen=True)
class RunStatus:
    run: Run
    state: str  # one of STATES ("unknown": squeue did not answer)
    detail: str = ""


def _status(run: Run, finished: bool, states: dict[str, str] | None) -> RunStatus:
    if finished:
        return RunStatus(run, "finished")
    job_id = recorded_job(run)
    record = read_exit(exit_path(run))
    this_job = record is not None and (str(record.get("job_id")) == job_id if job_id else "job_id" not in record)
    if job_id is not None and states is None and not this_job:
        return RunStatus(run, "unknown", f"Slurm job {job_id}: squeue does not answer")
    states = states or {}
    if job_id is not None and states.get(job_id) in ACTIVE:
        return RunStatus(run, "running", f"Slurm job {job_id}")
    if job_id is not None and states.get(job_id) in WAITING:
        return RunStatus(run, "submitted", f"Slurm job {job_id}, {states[job_id].lower()}")
    if this_job and record.get("returncode") == 0:
        return RunStatus(run, "finished", "not yet recorded by the sweep: run it again to collect it")
    if this_job and not record.get("requeued"):
        return RunStatus(run, "failed", f"exit {record.get('returncode')}, see {run.run_dir / f'{run.kind}.log'}")
    if job_id is not None:
        return RunStatus(run, "failed", f"Slurm job {job_id} ended without an exit status (cancelled or killed)")
    if (run.run_dir / f"{run.kind}.log").is_file():
        return RunStatus(run, "running", "started here; no exit status yet (running, or interrupted)")
    return RunStatus(run, "not started")


def sweep_status(config: SweepConfig) -> list[RunStatus]:
    """Every training run, then the test runs of the groups whose candidate has been chosen."""
    train_runs = plan_training(config)
    job_ids = [j for run in train_runs if (j := recorded_job(run))]
    selected = current_choices(config, train_runs)
    tests = selected_tests(config, train_runs, selected)
    job_ids += [j for run in tests if (j := recorded_job(run))]
    states = job_states(job_ids)
    out = [_status(run, train_done(run), states) for run in train_runs]
    out += [_status(run, result_summary_path(config, run).is_file(), states) for run in tests]
    planned = {run.group for run in train_runs}
    waiting = planned - set(selected)
    out += [_group_test(config, group, "waiting", "its group's training has not ended") for group in sorted(waiting)]
    out += [_group_test(config, group, "failed", "no candidate finished on every seed: nothing to test")
            for group in sorted(planned & set(selected)) if selected[group]["candidate"] is None]
    return out


def _group_test(config: SweepConfig, group: tuple[str, int, str], state: str, detail: str) -> RunStatus:
    """The line of a group's test that has no chosen checkpoint to run."""
    dataset, percent, arm = group
    return RunStatus(Run("test", dataset, percent, 0, arm, "<SELECTED>", (), config.output_dir), state, detail)


def print_status(config: SweepConfig, print_fn: Callable[[str], None] = print) -> Counter:
    """One line per command and a summary line; returns the counts per state."""
    statuses = sweep_status(config)
    for item in statuses:
        run = item.run
        label = (f"test {run.dataset} {run.percent}% {run.arm}" if run.candidate == "<SELECTED>" else run.label)
        print_fn(f"{item.state:<12} {label}" + (f"  ({item.detail})" if item.detail else ""))
    counts = Counter(item.state for item in statuses)
    print_fn(f"sweep {config.name}: " + ", ".join(f"{counts[s]} {s}" for s in STATES if counts[s]))
    return counts

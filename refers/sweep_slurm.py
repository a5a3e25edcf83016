"""``refers sweep --executor slurm``: the sweep's commands as Slurm jobs, one job per command.

The same plan, skipping, selection and records as the local executor (:mod:`refers.sweep_runner`):
every unfinished training run is submitted at once (an unfinished one continues with ``--resume``,
a failed attempt is replaced with ``--overwrite``); as soon as every training run of a group
(dataset, fraction, arm) has ended, the group's candidate is chosen on the mean validation AUC and
its test jobs are submitted. The sweep waits for its jobs, reading their outcomes from the run
folders (``<kind>.exit.json``, written by the job) and their states from ``squeue``: no accounting
database (``sacct``) is needed. Ctrl-C leaves the jobs running; a re-run of the sweep waits for
those still queued or running instead of submitting them again, and skips what has finished.

Each job's output goes to ``<run folder>/<kind>.log`` (where the local executor writes it),
submitit's own files to ``<output_dir>/slurm/``, and each submission to ``commands.log``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from typing import Any, Callable

from refers.base.atomic import atomic_write_text
from refers.slurm.jobs import CommandJob, read_exit
from refers.slurm.queue import is_live, job_states
from refers.slurm.resources import SlurmResources
from refers.slurm.submit import make_executor, submit
from refers.finetune.run_files import checkpoint_paths
from refers.sweep import Run, SweepConfig, command_line, plan_training, train_option
from refers.base.errors import UserError
from refers.sweep_runner import (
    RunResult, SweepOutcome, append_to_log, continuation, exit_path, job_path, print_plan, record_test, record_training, recorded_job,
    recorded_score, result_summary_path, select, selected_tests, shell_line, train_done, write_selection,
)

# Seconds a job may be missing from squeue without an outcome before it counts as lost (the
# outcome file is written just before the job ends; a shared file system may show it late).
_LOST_AFTER = 60.0


def known_states(runs: list[Run]) -> dict[str, str] | None:
    """Slurm's states of the earlier jobs of ``runs`` (one squeue call; None when squeue does not answer)."""
    return job_states(job_id for run in runs if (job_id := recorded_job(run)))


def gpus_for(run: Run, resources: SlurmResources) -> int:
    """GPUs a run's job asks for: ``gpus_per_job`` when given, else one unless the run's ``--device`` is cpu."""
    if resources.gpus_per_job is not None:
        return resources.gpus_per_job
    return 0 if train_option(run, "device") == "cpu" else 1


@dataclass
class _Pending:
    run: Run
    job_id: str
    started: float
    unseen_since: float | None = None  # when squeue first no longer listed it as queued or running


class SlurmSweep:
    """Submits a sweep's commands and waits for them (see the module docstring)."""

    def __init__(self, config: SweepConfig, resources: SlurmResources, print_fn: Callable[[str], None] = print,
                 poll_seconds: float = 5.0):
        self.config, self.resources, self.print_fn, self.poll_seconds = config, resources, print_fn, poll_seconds
        self.folder = config.output_dir / "slurm"
        self._executors: dict[int, Any] = {}

    # --- submitting ----------------------------------------------------------------------------
    def _executor(self, gpus: int) -> Any:
        if gpus not in self._executors:
            self._executors[gpus] = make_executor(self.folder, self.resources, name=f"refers-sweep-{self.config.name}",
                                                  gpus_per_node=gpus or None)
        return self._executors[gpus]

    def start(self, planned: Run, states: dict[str, str] | None) -> _Pending:
        """Wait for the run's job when one is still queued or running (or has ended with an outcome
        not yet collected), else submit it. ``states``: :func:`known_states` of the runs started together."""
        job_id = recorded_job(planned)
        if job_id is not None:
            if states is None:
                raise UserError(f"squeue does not answer, so whether Slurm job {job_id} ({planned.label}) still runs "
                                "cannot be told; try again when it does", 1)
            record = read_exit(exit_path(planned))
            collected = record and str(record.get("job_id")) == job_id and record.get("returncode") == 0 \
                and not record.get("requeued")
            if is_live(states.get(job_id)) or collected:
                self.print_fn(f"sweep: {planned.label}: Slurm job {job_id} is still queued or running; waiting for it"
                              if not collected else f"sweep: {planned.label}: collecting Slurm job {job_id}, which ended")
                return _Pending(planned, job_id, time.time())
        run = replace(planned, args=planned.args + continuation(planned))
        run.run_dir.mkdir(parents=True, exist_ok=True)
        exit_path(run).unlink(missing_ok=True)  # an earlier attempt's outcome is not this job's
        argv = command_line(self.config, run)
        base = tuple(a for a in run.args if a not in ("--overwrite", "--resume"))
        resume_glob = fresh = None
        if run.kind == "train":  # a requeue continues from the resume state, or starts over when none was saved
            resume_glob = str(checkpoint_paths(train_option(run, "output_dir"), train_option(run, "name"))["state"])
            fresh = tuple(command_line(self.config, replace(planned, args=base + ("--overwrite",))))
        restart = command_line(self.config, replace(planned, args=base + (("--resume",) if run.kind == "train" else ())))
        job = CommandJob(tuple(argv), str(self.config.workdir), str(run.run_dir / f"{run.kind}.log"), str(exit_path(run)),
                         tuple(restart), resume_glob, fresh)
        submitted = submit(self._executor(gpus_for(run, self.resources)), job)
        atomic_write_text(job_path(run), json.dumps({"job_id": str(submitted.job_id), "label": run.label,
                                                     "submitted": time.strftime("%Y-%m-%d %H:%M:%S")}) + "\n")
        append_to_log(self.config, f"# {time.strftime('%Y-%m-%d %H:%M:%S')} {run.label}: Slurm job {submitted.job_id}\n{shell_line(self.config, run)}")
        return _Pending(planned, str(submitted.job_id), time.time())

    # --- waiting -------------------------------------------------------------------------------
    def _ended(self, pending: _Pending, states: dict[str, str] | None) -> RunResult | None:
        """The run's result once its job has ended (None while it is queued, running or requeued,
        and while squeue cannot say)."""
        run = pending.run
        log_file = run.run_dir / f"{run.kind}.log"
        if states is not None and is_live(states.get(pending.job_id)):
            pending.unseen_since = None  # Slurm may still run it again (a requeue, a preemption)
            return None
        record = read_exit(exit_path(run))
        if record and str(record.get("job_id")) == pending.job_id and not record.get("requeued"):
            return RunResult(run, int(record["returncode"]), float(record.get("seconds", 0.0)), log_file)
        if states is None:
            return None
        pending.unseen_since = pending.unseen_since or time.time()
        if time.time() - pending.unseen_since < _LOST_AFTER:
            return None
        state = states.get(pending.job_id, "no longer listed by squeue")
        self.print_fn(f"sweep: {run.label}: Slurm job {pending.job_id} ended without an exit status ({state}: "
                      f"cancelled, killed or out of memory); see {log_file} and {self.folder}/{pending.job_id}_0_log.out")
        return RunResult(run, 1, time.time() - pending.started, log_file)

    def wait(self, pending: list[_Pending], on_done: Callable[[RunResult], None]) -> None:
        """Poll until every job has ended, calling ``on_done`` for each as it ends (it may add jobs to ``pending``)."""
        while pending:
            states = job_states(p.job_id for p in pending)
            for item in list(pending):
                result = self._ended(item, states)
                if result is not None:
                    pending.remove(item)
                    append_to_log(self.config, f"# Slurm job {item.job_id}: exit {result.returncode} after {result.seconds:.1f} s; "
                              f"output in {result.log_file}")
                    on_done(result)
            if pending:
                time.sleep(self.poll_seconds)

    # --- the sweep -----------------------------------------------------------------------------
    def run(self) -> SweepOutcome:
        config, outcome = self.config, SweepOutcome()
        if config.execution == "in-process":
            self.print_fn("sweep: execution: in-process applies to the local executor; Slurm jobs run the commands")
        config.output_dir.mkdir(parents=True, exist_ok=True)
        train_runs = plan_training(config)
        todo = [run for run in train_runs if not train_done(run)]
        if len(todo) < len(train_runs):
            self.print_fn(f"sweep: reusing {len(train_runs) - len(todo)} finished training run(s) under {config.output_dir}")
        scores = {run: recorded_score(run) for run in train_runs if run not in todo}
        waiting_groups = {run.group for run in todo}
        open_runs = {group: sum(run.group == group for run in todo) for group in waiting_groups}
        done = {"train": 0, "test": 0}
        pending: list[_Pending] = []

        def start_tests(group: tuple[str, int, str]) -> None:
            chosen = select([run for run in train_runs if run.group == group], scores)
            outcome.selected.update(chosen)
            write_selection(config, outcome.selected)
            if chosen[group]["candidate"] is None:
                outcome.failures.append(f"{group[0]} {group[1]}% {group[2]}: no candidate finished on every seed")
            tests = [test for test in selected_tests(config, train_runs, chosen)
                     if not result_summary_path(config, test).is_file()]
            states = known_states(tests)
            for test in tests:
                try:
                    pending.append(self.start(test, states))
                except UserError as error:  # e.g. sbatch refused it: the other jobs go on
                    outcome.failures.append(f"{test.label}: not submitted: {error}")
                    self.print_fn(f"sweep: {test.label}: not submitted: {error}")

        def on_done(result: RunResult) -> None:
            run = result.run
            done[run.kind] += 1
            counter = f"[{run.kind} {done[run.kind]}]"
            if run.kind == "test":
                outcome.tested.append(result)
                record_test(config, result, outcome, counter, self.print_fn)
                return
            outcome.trained.append(result)
            record_training(result, shell_line(self.config, run), scores, outcome, f"[train {done['train']}/{len(todo)}]", self.print_fn)
            open_runs[run.group] -= 1
            if open_runs[run.group] == 0:
                start_tests(run.group)

        try:
            states = known_states(todo)  # one squeue call for every earlier job, not one per run
            for run in todo:
                pending.append(self.start(run, states))
            self.print_fn(f"sweep: {len(pending)} training job(s) on Slurm; test jobs follow as each group's training "
                          f"ends (follow them with: refers sweep {config.source} --status)")
            for group in dict.fromkeys(run.group for run in train_runs):
                if group not in waiting_groups:
                    start_tests(group)
            self.wait(pending, on_done)
        except KeyboardInterrupt:
            ids = " ".join(p.job_id for p in pending)
            self.print_fn(f"sweep: interrupted; {len(pending)} Slurm job(s) keep running ({ids}). Follow them with "
                          f"'squeue -j {','.join(p.job_id for p in pending)}' or 'refers sweep {config.source} --status'; "
                          "run the sweep again to collect them and go on")
            outcome.interrupted = True
        return outcome


def run_sweep_slurm(config: SweepConfig, resources: SlurmResources, *, dry_run: bool = False,
                    print_fn: Callable[[str], None] = print, poll_seconds: float = 5.0) -> SweepOutcome:
    """Train, select and test the grid of ``config`` as Slurm jobs (see the module docstring)."""
    if dry_run:
        print_plan(config, plan_training(config), print_fn)
        print_fn(f"# executor slurm: one job per command, {resources.submitit_parameters()}")
        return SweepOutcome()
    return SlurmSweep(config, resources, print_fn, poll_seconds).run()

"""Running a sweep's plan (:mod:`refers.sweep`): commands, the command log, selection, skipping.

Three phases: train every candidate of every group and seed (skipping runs already recorded as
finished; an unfinished one continues from its resume state with ``--resume``, and one that failed
before saving any replaces its earlier attempt with ``--overwrite``), choose each group's candidate on the mean validation AUC over its seeds, and test the
chosen checkpoints (skipping tests whose prediction files already exist).

Commands run as subprocesses from the sweep's ``workdir`` (``--jobs N`` at a time), or, with
``execution: in-process``, through :func:`refers.finetune.stages.run_command` (what ``refers
finetune`` / ``refers test`` run) in this process with the same arguments. The in-process mode
exists because importing torch costs seconds per process, which dominates the many short runs of
the CPU demo; the logged command is the same either way.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import os
import queue
import shlex
import subprocess
import sys
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

from refers.base.atomic import atomic_write_text, exclusive_lock
from refers.base.earlier_runs import existing
from refers.base.errors import UserError
from refers.base.json_files import read_json
from refers.finetune.run_files import checkpoint_paths, run_outputs
from refers.sweep import Run, SweepConfig, command_line, groups, in_process_argv, plan_test, plan_training, train_option

RECORD = "sweep_record.json"  # written into a training run's folder once it has finished


@dataclass
class RunResult:
    """One executed command: its exit status, duration and the file holding its output."""

    run: Run
    returncode: int
    seconds: float
    log_file: Path


@dataclass
class SweepOutcome:
    """What a sweep did. ``selected`` maps a group to its chosen candidate and per-candidate scores."""

    trained: list[RunResult] = field(default_factory=list)
    tested: list[RunResult] = field(default_factory=list)
    selected: dict[tuple[str, int, str], dict] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    interrupted: bool = False  # Ctrl-C while Slurm jobs were still running (they keep running)


# --- what the fine-tuning commands write -------------------------------------------------------


def checkpoint_path(run: Run) -> Path:
    """The best-validation-AUC checkpoint that ``train.py`` writes (the original's name)."""
    return checkpoint_paths(train_option(run, "output_dir"), train_option(run, "name"))["auc"]


def continuation(run: Run) -> tuple[str, ...]:
    """How an unfinished training run starts: ``--resume`` from its resume state, ``--overwrite``
    over an earlier attempt that saved none (the sweep owns its run folders), or afresh."""
    if run.kind != "train":
        return ()
    output_dir, name = train_option(run, "output_dir"), train_option(run, "name")
    if checkpoint_paths(output_dir, name)["state"].is_file():
        return ("--resume",)
    return ("--overwrite",) if existing(run_outputs(output_dir, name, train_option(run, "log_dir"))) else ()


def exit_path(run: Run) -> Path:
    """The outcome record of a run's last attempt (exit code, seconds; Slurm's job id): ``<run_dir>/<kind>.exit.json``."""
    return run.run_dir / f"{run.kind}.exit.json"


def job_path(run: Run) -> Path:
    """The record of the Slurm job of a run's last attempt (its id), ``<run_dir>/<kind>.slurm.json``."""
    return run.run_dir / f"{run.kind}.slurm.json"


def recorded_job(run: Run) -> str | None:
    """The id of the Slurm job of a run's last attempt (None: it ran here, or has not run)."""
    try:
        return str(read_json(job_path(run))["job_id"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def best_validation_auc(run: Run) -> float | None:
    """The best mean validation AUC of a finished training run, from its metrics CSV (None if absent)."""
    log_dir = Path(train_option(run, "log_dir"))
    best = None
    for path in sorted(log_dir.glob("*.csv")):
        with path.open(newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                value = row.get("val_auc") or row.get("val_mean_auc") or row.get("mean_auc")
                if value not in (None, "", "nan"):
                    best = float(value) if best is None else max(best, float(value))
    return best


def result_summary_path(config: SweepConfig, run: Run) -> Path:
    """The summary that ``test.py`` writes next to the prediction files of a run."""
    return config.results_dir / run.dataset / f"data{run.percent}" / run.arm / f"seed{run.seed}" / "summary.json"


def result_mean_auc(config: SweepConfig, run: Run) -> float | None:
    """The mean test AUC of a run's ``summary.json`` (None: no summary, or an undefined AUC).

    Raises:
        UserError: a summary that is not test.py's (naming it).
    """
    path = result_summary_path(config, run)
    if not path.is_file():
        return None
    try:
        value = read_json(path)["mean_auc"]
        return None if value is None else float(value)
    except (OSError, ValueError, KeyError, TypeError):
        raise UserError(f"{path}: not a test summary; remove it to test that run again") from None


# --- running one command -----------------------------------------------------------------------


def shell_line(config: SweepConfig, run: Run) -> str:
    """A run's command as ``commands.log`` shows it: ``cd <workdir> && <command>``."""
    return f"cd {shlex.quote(str(config.workdir))} && {shlex.join(command_line(config, run))}"


def append_to_log(config: SweepConfig, text: str) -> None:
    """Append ``text`` (and a newline) to the sweep's ``commands.log``."""
    config.log_path.parent.mkdir(parents=True, exist_ok=True)
    with config.log_path.open("a", encoding="utf-8") as handle:
        handle.write(text + "\n")


class Executor:
    """Runs :class:`Run` commands and appends each to the command log (thread-safe)."""

    def __init__(self, config: SweepConfig, jobs: int = 1, devices: Sequence[str] | None = None):
        if config.execution == "in-process" and jobs != 1:
            raise ValueError("in-process execution runs one command at a time; use --jobs 1 or execution: subprocess")
        self.config = config
        self.jobs = max(1, jobs)
        self._lock = threading.Lock()
        # One device per job slot (CUDA_VISIBLE_DEVICES), so that parallel runs do not share a GPU.
        self._slots: queue.Queue = queue.Queue()
        for index in range(self.jobs):
            self._slots.put(devices[index % len(devices)] if devices else None)

    def shell(self, run: Run) -> str:
        return shell_line(self.config, run)

    def _log(self, text: str) -> None:
        with self._lock:
            append_to_log(self.config, text)

    def execute(self, planned: Run) -> RunResult:
        run = replace(planned, args=planned.args + continuation(planned))
        run.run_dir.mkdir(parents=True, exist_ok=True)
        for stale in (exit_path(run), job_path(run)):  # an earlier attempt's, here or on Slurm
            stale.unlink(missing_ok=True)
        log_file = run.run_dir / f"{run.kind}.log"
        device = self._slots.get()
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        prefix = f"CUDA_VISIBLE_DEVICES={device} " if device is not None else ""
        self._log(f"# {stamp} {run.label}\n{prefix}{self.shell(run)}")
        start = time.perf_counter()
        try:
            if self.config.execution == "in-process":
                code = _run_in_process(in_process_argv(run), self.config.workdir, log_file)
            else:
                env = {**os.environ, **({"CUDA_VISIBLE_DEVICES": str(device)} if device is not None else {})}
                with log_file.open("a", encoding="utf-8") as handle:
                    code = subprocess.call(command_line(self.config, run), cwd=self.config.workdir, env=env,
                                           stdout=handle, stderr=subprocess.STDOUT)
        finally:
            self._slots.put(device)
        seconds = time.perf_counter() - start
        atomic_write_text(exit_path(run), json.dumps({"returncode": code, "seconds": round(seconds, 2)}) + "\n")
        self._log(f"# exit {code} after {seconds:.1f} s; output in {log_file}")
        return RunResult(planned, code, seconds, log_file)


@contextlib.contextmanager
def _working_directory(path: Path):
    previous = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


@contextlib.contextmanager
def _console_logging_to(stream):
    """Point the root logger's console handlers at ``stream`` for the duration, then back.

    Commands configure logging once per process (``logging.basicConfig``); in-process runs share
    the process, so a handler made during one run would otherwise keep writing to its closed log.
    """
    root = logging.getLogger()

    def console() -> list[logging.StreamHandler]:
        return [h for h in root.handlers if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)]

    before = {handler: handler.stream for handler in console()}
    for handler in before:
        handler.setStream(stream)
    try:
        yield
    finally:
        for handler in console():
            handler.setStream(before.get(handler, sys.stderr))


def _run_in_process(argv: list[str], workdir: Path, log_file: Path) -> int:
    """``refers <argv>`` in this process, its output into ``log_file``; the exit code, never an exception."""
    from refers.finetune.stages import run_command

    with log_file.open("a", encoding="utf-8") as handle, _working_directory(workdir), _console_logging_to(handle), \
            contextlib.redirect_stdout(handle), contextlib.redirect_stderr(handle):
        try:
            return int(run_command(argv) or 0)
        except SystemExit as exit_:  # argparse
            return exit_.code if isinstance(exit_.code, int) else 1
        except Exception:  # a bug in a command must not end the sweep without a trace
            traceback.print_exc(file=handle)
            return 1


# --- the three phases --------------------------------------------------------------------------


def _map(executor: Executor, runs: list[Run], on_done: Callable[[RunResult], None]) -> list[RunResult]:
    """Execute ``runs`` (``jobs`` at a time) and call ``on_done`` for each as it finishes."""
    results = []
    if executor.jobs == 1:
        for run in runs:
            results.append(executor.execute(run))
            on_done(results[-1])
        return results
    with ThreadPoolExecutor(max_workers=executor.jobs) as pool:
        for result in pool.map(executor.execute, runs):
            results.append(result)
            on_done(result)
    return results


def select(train_runs: list[Run], scores: dict[Run, float | None]) -> dict[tuple[str, int, str], dict]:
    """Per group, the candidate with the best mean validation AUC over the group's seeds.

    A candidate missing a score for any seed is not eligible (its mean would not be comparable);
    ties go to the candidate listed first in the sweep file.
    """
    by_group: dict[tuple[str, int, str], dict[str, list[float | None]]] = {}
    for run in train_runs:
        by_group.setdefault(run.group, {}).setdefault(run.candidate, []).append(scores.get(run))
    selected = {}
    for group, table in by_group.items():
        means = {c: (sum(v) / len(v) if all(x is not None for x in v) else None) for c, v in table.items()}
        eligible = [c for c, m in means.items() if m is not None]
        if len(table) == 1 and not eligible:  # nothing to choose: a single candidate needs no score
            eligible = list(table)
        best = max(eligible, key=lambda c: (means[c] if means[c] is not None else 0.0, -list(table).index(c)), default=None)
        selected[group] = {"candidate": best, "mean_val_auc": means}
    return selected


def run_sweep(config: SweepConfig, *, jobs: int = 1, devices: Sequence[str] | None = None, dry_run: bool = False,
              print_fn: Callable[[str], None] = print) -> SweepOutcome:
    """Train, select and test the whole grid of ``config``.

    Args:
        config: a loaded sweep file.
        jobs: commands at a time (subprocess execution only).
        devices: GPU ids handed to the job slots as ``CUDA_VISIBLE_DEVICES``.
        dry_run: only print the commands (and which would be skipped).
        print_fn: where progress lines go.

    Returns:
        What ran, what was selected, and the failures (empty when all went well).
    """
    executor = Executor(config, jobs, devices)
    train_runs = plan_training(config)
    outcome = SweepOutcome()
    if dry_run:
        print_plan(config, train_runs, print_fn)
        return outcome
    config.output_dir.mkdir(parents=True, exist_ok=True)
    todo = [run for run in train_runs if not train_done(run)]
    if len(todo) < len(train_runs):
        print_fn(f"sweep: reusing {len(train_runs) - len(todo)} finished training run(s) under {config.output_dir}")
    todo = _not_on_slurm(todo, outcome, print_fn)
    scores = {run: recorded_score(run) for run in train_runs if train_done(run)}
    counter = iter(range(1, len(todo) + 1))

    def after_train(result: RunResult) -> None:
        record_training(result, executor.shell(result.run), scores, outcome, f"[train {next(counter)}/{len(todo)}]", print_fn)

    outcome.trained = _map(executor, todo, after_train)
    outcome.selected = select(train_runs, scores)
    write_selection(config, outcome.selected)
    tests = selected_tests(config, train_runs, outcome.selected)
    for group, choice in outcome.selected.items():
        if choice["candidate"] is None:
            outcome.failures.append(f"{group[0]} {group[1]}% {group[2]}: no candidate finished on every seed")
    pending = [run for run in tests if not result_summary_path(config, run).is_file()]
    if len(pending) < len(tests):
        print_fn(f"sweep: {len(tests) - len(pending)} test result(s) already exist under {config.results_dir}; not re-run")
    counter_test = iter(range(1, len(pending) + 1))

    def after_test(result: RunResult) -> None:
        record_test(config, result, outcome, f"[test {next(counter_test)}/{len(pending)}]", print_fn)

    outcome.tested = _map(executor, pending, after_test)
    return outcome


def _not_on_slurm(runs: list[Run], outcome: SweepOutcome, print_fn: Callable[[str], None]) -> list[Run]:
    """``runs`` without those whose Slurm job (of an earlier ``--executor slurm``) still runs: two
    writers in one run folder would corrupt it. Each one left out is a failure that says why."""
    jobs = {run: job_id for run in runs if (job_id := recorded_job(run))}
    if not jobs:
        return runs
    from refers.slurm.queue import is_live, job_states

    states = job_states(jobs.values())
    busy = {run for run, job_id in jobs.items() if states is None or is_live(states.get(job_id))}
    for run in busy:
        why = "squeue cannot say whether it still runs" if states is None else "it is still queued or running"
        message = f"{run.label}: left out, its Slurm job {jobs[run]} of an earlier --executor slurm ({why}); " \
                  "wait for it with --executor slurm, or cancel it (scancel)"
        outcome.failures.append(message)
        print_fn(f"sweep: {message}")
    return [run for run in runs if run not in busy]


def record_training(result: RunResult, shell: str, scores: dict[Run, float | None], outcome: SweepOutcome,
                    counter: str, print_fn: Callable[[str], None]) -> None:
    """A finished training command: a failure noted, or its score kept and its record written (both executors)."""
    run = result.run
    if result.returncode != 0 or not checkpoint_path(run).is_file():
        outcome.failures.append(f"{run.label}: exit {result.returncode}, see {result.log_file}")
        print_fn(f"{counter} {run.label}: FAILED (exit {result.returncode}), see {result.log_file}")
        return
    score = best_validation_auc(run)
    scores[run] = score
    record = {"command": shell, "args": list(run.args), "seconds": round(result.seconds, 2), "best_val_auc": score,
              "checkpoint": str(checkpoint_path(run))}
    atomic_write_text(run.run_dir / RECORD, json.dumps(record, indent=2) + "\n")
    shown = "n/a" if score is None else f"{score:.4f}"
    print_fn(f"{counter} {run.label}: val AUC {shown} ({result.seconds:.1f} s)")


def record_test(config: SweepConfig, result: RunResult, outcome: SweepOutcome, counter: str,
                print_fn: Callable[[str], None]) -> None:
    """A finished test command: its mean AUC shown, or the failure noted (both executors)."""
    run = result.run
    auc = result_mean_auc(config, run) if result.returncode == 0 else None
    if result.returncode != 0 or auc is None:
        outcome.failures.append(f"{run.label}: exit {result.returncode}, see {result.log_file}")
        print_fn(f"{counter} {run.label}: FAILED (exit {result.returncode}), see {result.log_file}")
        return
    print_fn(f"{counter} {run.label}: test AUC {auc:.4f} ({result.seconds:.1f} s)")


def selected_tests(config: SweepConfig, train_runs: list[Run], selected: dict) -> list[Run]:
    """The test runs of each group's chosen candidate (those whose checkpoint exists)."""
    return [plan_test(config, run, checkpoint_path(run)) for run in train_runs
            if run.group in selected and run.candidate == selected[run.group]["candidate"] and checkpoint_path(run).is_file()]


def train_done(run: Run) -> bool:
    """The training run finished and was recorded by the sweep."""
    return (run.run_dir / RECORD).is_file() and checkpoint_path(run).is_file()


def recorded_score(run: Run) -> float | None:
    """The best validation AUC a finished run's record holds, once the record is checked.

    Raises:
        UserError: a record that is not the sweep's, or (exit 2) a run trained with other flags than
            the sweep file now gives it: its results would be reused as if they were the file's.
    """
    path = run.run_dir / RECORD
    try:
        record = read_json(path)
        value = record["best_val_auc"]
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise TypeError(value)
    except (OSError, ValueError, KeyError, TypeError):
        raise UserError(f"{path}: not a sweep's run record; remove the folder {run.run_dir} to train that run again") from None
    trained = record.get("args")  # absent in records of earlier versions: nothing to compare
    changes = flag_changes(trained, list(run.args)) if isinstance(trained, list) else []
    if changes:
        shown = ", ".join(changes[:3]) + (f" and {len(changes) - 3} more" if len(changes) > 3 else "")
        raise UserError(f"{run.run_dir}: trained with other flags than the sweep file now gives it ({shown}); "
                        "remove that folder to train it again, or sweep into another output_dir", 2)
    return None if value is None else float(value)


# A run's folders, which follow its folder wherever it is (a moved or copied output_dir): not its training.
_FOLDER_FLAGS = ("name", "output_dir", "log_dir")


def flag_changes(before: list, now: list) -> list[str]:
    """The flags of two ``--key value`` lists that differ (in any order, the run's folders aside):
    ``["num_steps: 2 -> 3", "fp16: absent -> set"]``."""

    def parsed(args: list) -> dict[str, str]:
        out: dict[str, str] = {}
        key = None
        for item in map(str, args):
            if item.startswith("--"):
                key = item[2:]
                out[key] = "set"
            elif key is not None:
                out[key] = item if out[key] == "set" else f"{out[key]} {item}"
        return {k: v for k, v in out.items() if k not in _FOLDER_FLAGS}

    old, new = parsed(before), parsed(now)
    return [f"{k}: {old.get(k, 'absent')} -> {new.get(k, 'absent')}" for k in dict.fromkeys([*old, *new])
            if old.get(k) != new.get(k)]


def selection_path(config: SweepConfig) -> Path:
    return config.output_dir / "selection.json"


def read_selection(config: SweepConfig) -> dict[tuple[str, int, str], dict]:
    """The chosen candidate of each group, as ``selection.json`` holds it (empty when there is none).

    Raises:
        UserError: a file that is not the sweep's list of choices (naming it and the first bad row).
    """
    path = selection_path(config)
    if not path.exists():
        return {}
    try:
        rows = read_json(path)
    except (OSError, ValueError) as error:  # also a folder, or a byte that is not UTF-8
        raise UserError(f"{path}: not a sweep's selection file ({error}); {_REWRITE}") from None
    if not isinstance(rows, list):
        raise UserError(f"{path}: not a sweep's selection file (a list of choices expected); {_REWRITE}")
    for number, row in enumerate(rows, 1):
        if not (isinstance(row, dict) and isinstance(row.get("dataset"), str) and isinstance(row.get("arm"), str)
                and type(row.get("percent")) is int and isinstance(row.get("candidate", 0), (str, type(None)))):
            raise UserError(f"{path}: not a sweep's selection file (choice {number} is not a dataset, percent, arm "
                            f"and candidate); {_REWRITE}")
    chosen = {(row["dataset"], row["percent"], row["arm"]): row for row in rows}
    if len(chosen) < len(rows):
        raise UserError(f"{path}: not a sweep's selection file (two choices for one dataset, percent and arm); {_REWRITE}")
    return chosen


_REWRITE = "remove it and run the sweep again, which writes it from the finished runs"


def write_selection(config: SweepConfig, selected: dict) -> None:
    """``selection.json``: this sweep's choices, and the earlier choices of the file's other groups.

    A sweep of some arms (``--arms``) keeps what a sweep of the others chose, as long as that choice
    is still one of its group's candidates; the file is read and replaced under a lock, so that two
    such sweeps may end at the same time.
    """
    config.output_dir.mkdir(parents=True, exist_ok=True)
    grid = plan_training(replace(config, arms=None))  # the file's groups, in its order
    ours = set(groups(config))
    with exclusive_lock(config.output_dir / ".selection.lock"):
        rows = {group: row for group, row in current_choices(config, grid).items() if group not in ours}
        rows.update({(d, p, a): {"dataset": d, "percent": p, "arm": a, **choice} for (d, p, a), choice in selected.items()})
        order = dict.fromkeys(run.group for run in grid)
        atomic_write_text(selection_path(config), json.dumps([rows[g] for g in order if g in rows], indent=2) + "\n")


def current_choices(config: SweepConfig, train_runs: list[Run]) -> dict[tuple[str, int, str], dict]:
    """The choices of ``selection.json`` that still hold for ``train_runs``: of one of their groups,
    and a candidate that group still has (or none: no candidate finished), not one of an edited grid."""
    candidates: dict[tuple[str, int, str], set[str]] = {}
    for run in train_runs:
        candidates.setdefault(run.group, set()).add(run.candidate)
    return {group: row for group, row in read_selection(config).items()
            if group in candidates and (row["candidate"] is None or row["candidate"] in candidates[group])}


def print_plan(config: SweepConfig, train_runs: list[Run], print_fn: Callable[[str], None]) -> None:
    """The commands a sweep would run; finished ones are shown commented out."""
    print_fn(f"# sweep {config.name}: {len(train_runs)} fine-tuning run(s), run from {config.workdir}")
    for run in train_runs:
        done = train_done(run)
        shown = run if done else replace(run, args=run.args + continuation(run))
        print_fn(f"{'# done: ' if done else ''}{shlex.join(command_line(config, shown))}")
    choices: dict[tuple[str, int, str], set[str]] = {}
    for run in train_runs:
        choices.setdefault(run.group, set()).add(run.candidate)
    print_fn("# then test.py on each group's checkpoints with the best mean validation AUC"
             " (<SELECTED>: the chosen candidate's folder)")
    seen = set()
    for run in train_runs:
        if (run.group, run.seed) in seen:
            continue
        seen.add((run.group, run.seed))
        if len(choices[run.group]) > 1:
            chosen_dir = run.run_dir.parent / "<SELECTED>"
            args = tuple(a.replace(str(run.run_dir), str(chosen_dir)) for a in run.args)
            run = Run(run.kind, run.dataset, run.percent, run.seed, run.arm, "<SELECTED>", args, chosen_dir)
        test = plan_test(config, run, checkpoint_path(run))
        mark = "# done: " if result_summary_path(config, test).is_file() else ""
        print_fn(f"{mark}{shlex.join(command_line(config, test))}")

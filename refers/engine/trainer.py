"""The one training loop of the project: pre-training and fine-tuning both run through :class:`Trainer`.

What differs between the stages is a :class:`Task` (the model and its loss, which steps read the
loss, when to validate and checkpoint, what the checkpoint holds besides the common state, what a
non-finite loss or a signal says to the user). The trainer owns everything else:

* the step (:class:`~refers.engine.step.OptimStep`: gradient accumulation with DDP's ``no_sync``,
  the fp16 scaler, clipping, optimiser then schedule);
* DDP wrapping and ``--compile`` (in place, so state-dict keys and checkpoints stay as they are);
* the non-finite stop: each step's loss is checked on the device; at the task's read steps and at
  every checkpoint step (before the update; one collective for loss, non-finite flag and signal)
  the ranks agree, and the run stops without saving the poisoned state;
* the order of a checkpoint step: update, the task's validation (which may stop the run, e.g.
  early stopping), then the resume state (so it holds the validation's decision);
* SIGTERM/SIGINT/SIGUSR2 (SIGUSR2: Slurm's pre-timeout signal): the run saves its resume state at
  the next step boundary (after that step's validation when one is due, so a resumed run misses
  none), then exits with 128 + signal (one process reacts at once; several agree at read steps);
* exact resume: model, optimiser (incl. Lookahead), schedule, scaler, the RNG of every rank, the
  data position and the task's own state (e.g. early stopping), written atomically;
* the progress bar.
"""

from __future__ import annotations

import math
import signal
from typing import Any, Iterator, Protocol

import torch
import torch.distributed as dist
from torch import nn

from refers.base.checkpoints import atomic_torch_save
from refers.base.host import retain_freed_memory
from refers.engine import train_state as ts
from refers.engine.distributed import DistInfo, barrier
from refers.engine.precision import Precision
from refers.engine.sampling import DataPosition
from refers.engine.step import OptimStep, StepResult


class Task(Protocol):
    """What one stage trains and how it talks to the user (see the module docstring).

    Step numbers are 1-based: ``step`` is the number of the step just made (or being made).
    """

    model: nn.Module  # unwrapped: checkpoints and exports hold its state dict
    optimizer: torch.optim.Optimizer
    scheduler: Any
    precision: Precision
    params: list[nn.Parameter]  # the parameters clipped (and trained)
    clip_norm: float | None
    accumulation: int
    total_steps: int
    find_unused_parameters: bool
    progress_options: dict[str, Any]  # tqdm keywords (desc, ...)

    def loss(self, model: nn.Module, batch: Any, precision: Precision) -> tuple[torch.Tensor, dict[str, torch.Tensor]]: ...
    def train_mode(self, model: nn.Module) -> None: ...
    def compile(self, model: nn.Module) -> None: ...
    def batches(self, position: DataPosition) -> Iterator[Any]: ...
    def reads_loss(self, step: int) -> bool: ...
    def checkpoint_due(self, step: int) -> bool: ...
    def after_step(self, step: int, result: StepResult, reading: float | None, progress: Any) -> None: ...
    def validate(self, step: int, progress: Any) -> bool: ...  # True: stop training
    def pack_state(self, step: int, position: DataPosition, rng: list[dict[str, Any]]) -> dict[str, Any]: ...
    def state_path(self, step: int) -> Any: ...
    def saved(self, path: Any) -> None: ...
    def load_state(self, path: Any) -> dict[str, Any]: ...  # checked; raises the stage's error
    def restore_extra(self, state: dict[str, Any]) -> int: ...  # the task's own state; returns the step
    def non_finite(self, step: int, value: float) -> int: ...  # exit code (or raises)
    def signalled(self, signum: int, step: int) -> None: ...


# SIGUSR2 is what Slurm sends before a job's time limit (``--signal=USR2@90``, see refers.slurm).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR2)


class StopSignal:
    """Remembers a SIGTERM/SIGINT/SIGUSR2 so the loop can checkpoint at a step boundary, then exit."""

    def __init__(self) -> None:
        self.signum = 0
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "StopSignal":
        for signum in STOP_SIGNALS:
            try:
                self._previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.signum = signum

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def agree(flag: bool | torch.Tensor, info: DistInfo) -> bool:
    """True on every rank when ``flag`` is true on any rank (a collective when distributed)."""
    value = flag.detach().float().reshape(()) if isinstance(flag, torch.Tensor) else torch.tensor(float(flag))
    if info.distributed:
        value = value.to(info.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)


def gather_rng(info: DistInfo) -> list[dict[str, Any]]:
    """Every rank's RNG state, in rank order (a collective when distributed)."""
    mine = ts.capture_rng_state()
    if not info.distributed:
        return [mine]
    every: list[Any] = [None] * info.world_size
    dist.all_gather_object(every, mine)
    return every


class Trainer:
    """Runs a :class:`Task` from its current (or resumed) step to the end; :meth:`run` returns the exit code."""

    def __init__(self, task: Task, info: DistInfo, progress: bool = True):
        retain_freed_memory()  # a step reuses the last step's pages instead of faulting in new ones
        self.task, self.info, self.progress = task, info, progress
        self.step = 0
        self.position = DataPosition()
        self.model: nn.Module = task.model  # what the forward pass calls: DDP and/or compiled after wrap()

    # ------------------------------------------------------------------------------------------
    def resume(self, path: Any) -> None:
        """Continue from a state written by :meth:`save` (before :meth:`run`)."""
        task = self.task
        state = task.load_state(path)
        ts.restore_state(state, model=task.model, optimizer=task.optimizer, scheduler=task.scheduler,
                         scaler=task.precision.scaler, rank=self.info.rank)
        self.position.load_state_dict(state["data"])
        self.step = task.restore_extra(state)

    def save(self) -> Any:
        """Write the resume state of the current step (collective: every rank calls it)."""
        rng = gather_rng(self.info)
        path = None
        if self.info.is_main:
            path = self.task.state_path(self.step)
            atomic_torch_save(self.task.pack_state(self.step, self.position, rng), path)
            self.task.saved(path)
        barrier(self.info)
        return path

    def wrap(self) -> nn.Module:
        """DDP when distributed, then the task's in-place ``compile`` when asked."""
        model = self.task.model
        if self.info.distributed:
            device = self.info.device
            model = nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None,
                find_unused_parameters=self.task.find_unused_parameters)
        self.model = model
        return model

    def optim_step(self) -> OptimStep:
        task = self.task
        return OptimStep(self.model, task.loss, task.optimizer, task.scheduler, task.precision, task.params,
                         task.clip_norm, task.accumulation, self.info.distributed, self.position)

    # ------------------------------------------------------------------------------------------
    def run(self, compile_model: bool = False) -> int:
        """Train until ``task.total_steps`` (or the task stops); 0, the task's non-finite code, or 128 + signal."""
        from tqdm import tqdm

        self.wrap()
        if compile_model:
            self.task.compile(self.model)
        stepper = self.optim_step()
        bar = tqdm(total=self.task.total_steps, initial=self.step, disable=not (self.info.is_main and self.progress),
                   dynamic_ncols=True, **self.task.progress_options)
        try:
            with StopSignal() as stop:
                return self._loop(stepper, self.task.batches(self.position), stop, bar)
        finally:
            bar.close()

    def _reduce(self, loss: torch.Tensor, bad: torch.Tensor, stop: StopSignal) -> tuple[float, bool, bool]:
        """(mean loss over ranks, any rank non-finite, any rank signalled): one read, one collective."""
        signalled = torch.tensor(float(stop.signum != 0), dtype=torch.float64, device=loss.device)
        values = torch.stack([loss.double(), bad.double(), signalled])
        if self.info.distributed:
            dist.all_reduce(values)  # a sum: the flags are > 0 when any rank's is
            values[0] /= self.info.world_size
        mean, any_bad, any_signal = values.tolist()
        return mean, any_bad > 0, any_signal > 0

    def _loop(self, stepper: OptimStep, batches: Iterator[Any], stop: StopSignal, bar: Any) -> int:
        task, info = self.task, self.info
        bad = torch.zeros((), dtype=torch.bool, device=info.device)
        while self.step < task.total_steps:
            number = self.step + 1
            task.train_mode(self.model)
            try:
                result = stepper.accumulate(batches)
            except RuntimeError:
                # Ctrl-C also reached the loader's workers; while the first micro-batch is fetched
                # the state is still that of a step boundary.
                if not stop.signum or info.distributed or stepper.micro != 0:
                    raise
                return self._stop_on_signal(stop.signum)
            bad |= ~torch.isfinite(result.loss)
            reading, signalled = None, stop.signum != 0
            due = task.checkpoint_due(number)
            if due or task.reads_loss(number):
                reading, any_bad, any_signal = self._reduce(result.loss, bad, stop)
                if any_bad:
                    return task.non_finite(number, reading if not math.isfinite(reading) else math.nan)
                signalled = any_signal if info.distributed else signalled
            elif info.distributed:
                signalled = False  # several processes agree on a signal at read steps only
            elif signalled and bool(bad):
                return task.non_finite(number, float(result.loss))
            stepper.update()
            self.step = number
            bar.update(1)
            task.after_step(number, result, reading, bar)
            if due:
                stopped = task.validate(number, bar)
                self.save()
                if stopped:
                    return 0
                if signalled:
                    task.signalled(stop.signum or signal.SIGTERM, self.step)
                    return 128 + int(stop.signum or signal.SIGTERM)
            elif signalled:
                return self._stop_on_signal(stop.signum or signal.SIGTERM)
        return 0

    def _stop_on_signal(self, signum: int) -> int:
        self.save()
        self.task.signalled(signum, self.step)
        return 128 + int(signum)

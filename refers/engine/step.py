"""One optimiser step, for every stage: the only place in the library that calls ``.backward()``.

A step is ``accumulation`` micro-batches: the task's loss of each (divided by ``accumulation``)
is back-propagated, under DDP's ``no_sync`` on all but the last, so gradients are all-reduced once
per step; then the gradients are unscaled (fp16), clipped, and the optimiser and the schedule step.
Gradients are set to None after the update, so a step (also the first after a resume) starts
without any.

Nothing here reads a value from the device: the step returns its loss as a tensor, and the
:class:`~refers.engine.trainer.Trainer` decides when to read it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
from torch import nn

from refers.engine.precision import Precision
from refers.engine.sampling import DataPosition

# (model, batch, precision) -> (loss [], {name: component []}); the task moves the batch to the
# device and applies ``precision.autocast()`` where its forward pass needs it.
LossFn = Callable[[nn.Module, Any, Precision], "tuple[torch.Tensor, dict[str, torch.Tensor]]"]


@dataclass
class StepResult:
    """What one step leaves on the device (nothing is synchronised).

    Attributes:
        loss: [] float64, the step's mean loss on this rank (sum over micro-batches of loss / n).
        components: {name: [] float32}, the same mean of each loss component.
    """

    loss: torch.Tensor
    components: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class OptimStep:
    """Runs optimiser steps of ``model`` (DDP-wrapped or not) with ``loss_fn``.

    Attributes:
        model: what the forward pass calls (DDP, compiled or plain).
        loss_fn: see :data:`LossFn`.
        optimizer, scheduler: stepped once per step (scheduler after the optimiser).
        precision: autocast and the fp16 scaler.
        params: the parameters to clip (their total norm).
        clip_norm: clip to this total norm; None: no clipping.
        accumulation: micro-batches per step.
        distributed: the model is DDP (``no_sync`` on all but the last micro-batch).
        position: the data position, advanced by one per micro-batch.
    """

    model: nn.Module
    loss_fn: LossFn
    optimizer: torch.optim.Optimizer
    scheduler: Any
    precision: Precision
    params: list[torch.nn.Parameter]
    clip_norm: float | None
    accumulation: int = 1
    distributed: bool = False
    position: DataPosition = field(default_factory=DataPosition)
    micro: int = 0  # the micro-batch being fetched or computed

    def accumulate(self, batches: Iterator[Any]) -> StepResult:
        """Forward and backward passes of one step's micro-batches; gradients accumulate."""
        n = self.accumulation
        total: torch.Tensor | None = None
        parts: dict[str, torch.Tensor] = {}
        scaler = self.precision.scaler
        for micro in range(n):
            self.micro = micro
            batch = next(batches)
            self.position.batch += 1
            sync = not self.distributed or micro == n - 1
            with contextlib.nullcontext() if sync else self.model.no_sync():
                loss, components = self.loss_fn(self.model, batch, self.precision)
                loss = loss / n
                (scaler.scale(loss) if scaler is not None else loss).backward()
            value = loss.detach().double()
            total = value if total is None else total + value
            for name, part in components.items():
                part = part.detach().float() / n
                parts[name] = part if name not in parts else parts[name] + part
        assert total is not None
        return StepResult(total, parts)

    def update(self) -> None:
        """Unscale, clip, step the optimiser and the schedule, drop the gradients."""
        scaler = self.precision.scaler
        if scaler is not None and self.clip_norm is not None:
            scaler.unscale_(self.optimizer)
        if self.clip_norm is not None:
            nn.utils.clip_grad_norm_(self.params, self.clip_norm)
        if scaler is not None:
            scaler.step(self.optimizer)
            scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def __call__(self, batches: Iterator[Any]) -> StepResult:
        """A whole step: :meth:`accumulate` then :meth:`update`."""
        result = self.accumulate(batches)
        self.update()
        return result

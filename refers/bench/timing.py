"""Timing helpers: synchronised clocks, interleaved repeats, medians."""

from __future__ import annotations

import statistics
import time
from typing import Callable, Sequence

import torch


def synchronize(device: torch.device) -> None:
    """Wait for queued device work (GPU kernels run asynchronously; a CPU needs nothing)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def clock(device: torch.device) -> Callable[[], float]:
    """The clock for timing work on ``device``.

    On a GPU, wall time (after synchronising). On a CPU, this process's CPU time: the work done,
    not the moments other processes of a shared machine held the cores (with one intra-op thread
    the two agree on an idle machine).
    """
    return time.perf_counter if device.type == "cuda" else time.process_time


def timed(run: Callable[[], object], device: torch.device, wall: bool = False) -> float:
    """Seconds that ``run()`` takes, including the device work it queued.

    Args:
        wall: wall-clock time even on a CPU (work spread over other processes, e.g. loader workers).
    """
    now = time.perf_counter if wall else clock(device)
    synchronize(device)
    start = now()
    run()
    synchronize(device)
    return now() - start


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def interleaved(runs: dict[str, Callable[[], object]], repeats: int, device: torch.device,
                wall: bool = False) -> dict[str, list[float]]:
    """Time each of ``runs`` ``repeats`` times, alternating between them (ABAB..., order rotated).

    Alternating spreads slow phases of a shared machine (other processes, thermal limits, page
    cache) over all contenders instead of penalising whichever ran during them.

    Args:
        wall: wall-clock time (see :func:`timed`).

    Returns:
        name -> list of ``repeats`` durations in seconds.
    """
    names = list(runs)
    times: dict[str, list[float]] = {name: [] for name in names}
    for repeat in range(repeats):
        shift = repeat % len(names)
        for name in names[shift:] + names[:shift]:
            times[name].append(timed(runs[name], device, wall))
    return times


def paired_ratios(numerator: Sequence[float], denominator: Sequence[float]) -> list[float]:
    """Per-repeat ratios of two interleaved series (adjacent measurements share conditions)."""
    return [a / b for a, b in zip(numerator, denominator) if b > 0]

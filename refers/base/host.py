"""What a process takes from its host: the cores it may use, malloc settings that keep freed
memory in the process instead of handing it back to the kernel at every step, and how a worker of
a multi-process launch leaves.

glibc's malloc serves large blocks (above a threshold it raises as it goes) with fresh ``mmap``s
and returns the top of the heap to the kernel when it frees; a training step that allocates and
frees the same activations again and again then pays a page fault for every page of them, every
step. On a virtual machine page faults are dear: on this project's 2-core Firecracker VM a demo
pre-training step took 0.42-0.44 s with glibc's defaults and 0.29-0.35 s with freed memory kept
(the same thresholds as PyTorch's CPU tuning guide's ``jemalloc``/``tcmalloc`` advice, reached
through glibc's own ``mallopt``; no library to install). The cost: the process keeps its peak
heap until it exits.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys

logger = logging.getLogger(__name__)

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_MMAP_THRESHOLD = 32 << 20  # glibc's largest: blocks up to 32 MiB come from the reusable heap
_TRIM_THRESHOLD = 1 << 30
_TOP_PAD = 64 << 20
_done = False


def end_launched_worker(code: int) -> None:
    """In a worker of a multi-process launch (torchrun, ``torch.distributed.launch``), end the process
    now with ``code``; anywhere else (one process, a test, a notebook) do nothing.

    gloo's threads can abort the interpreter's own teardown of a CPU worker (SIGABRT, "terminate
    called without an active exception") after a run that succeeded, and torchrun then reports the
    whole run as failed. The command has left its process group and closed its files by the time it
    returns, so the worker flushes its output and logs and skips that teardown.
    """
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return
    if "TORCHELASTIC_RUN_ID" not in os.environ or world <= 1:
        return
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, which a container or ``taskset`` narrows;
    ``os.cpu_count()`` where the platform has no affinity)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def user_tuned_malloc() -> bool:
    """Whether the environment sets malloc itself: a ``MALLOC_*`` variable, a ``glibc.malloc``
    tunable, or another allocator (jemalloc, tcmalloc) in ``LD_PRELOAD``."""
    return (any(name.startswith("MALLOC_") for name in os.environ)
            or "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", "") or bool(os.environ.get("LD_PRELOAD")))


def retain_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed memory for reuse (once per process; later calls do nothing).

    Leaves malloc as it is where the user tuned it (:func:`user_tuned_malloc`) and off glibc systems.

    Returns:
        Whether the settings were applied by this call.
    """
    global _done
    if _done or not sys.platform.startswith("linux"):
        return False
    _done = True
    if user_tuned_malloc():
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other C libraries have no mallopt
        return False
    applied = all(mallopt(parameter, value) == 1 for parameter, value in (
        (_M_MMAP_THRESHOLD, _MMAP_THRESHOLD), (_M_TRIM_THRESHOLD, _TRIM_THRESHOLD), (_M_TOP_PAD, _TOP_PAD)))
    logger.debug("malloc keeps freed memory: %s", applied)
    return applied

"""A function over many items with a progress bar, in worker processes when asked (decoding, resizing)."""

from __future__ import annotations

import sys
from typing import Callable, Iterator, Sequence, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def parallel_map(func: Callable[[T], R], items: Sequence[T], workers: int, desc: str, unit: str = "img") -> Iterator[R]:
    """``func`` over ``items`` with a progress bar; in ``workers`` processes when > 1 (results unordered).

    ``func`` must be picklable (a module-level function or a ``functools.partial`` of one).
    """
    from tqdm import tqdm

    bar = tqdm(total=len(items), desc=desc, unit=unit, disable=None, dynamic_ncols=True)
    try:
        if workers <= 1 or len(items) < 2:
            for item in items:
                yield func(item)
                bar.update()
            return
        import multiprocessing

        chunksize = max(1, min(64, len(items) // (workers * 8)))
        with multiprocessing.get_context("fork" if sys.platform == "linux" else None).Pool(workers) as pool:
            for result in pool.imap_unordered(func, items, chunksize=chunksize):
                yield result
                bar.update()
    finally:
        bar.close()

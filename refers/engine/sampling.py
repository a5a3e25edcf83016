"""Resumable, sharded batches whose randomness does not depend on worker processes.

Exact resume needs two things the stock ``DataLoader`` does not give:

* a data *position* (epoch, batches consumed) from which the same sequence of batches continues;
* augmentations that are a function of the sample's place in the run, not of which worker
  process drew it or how many samples that worker drew before (a resumed loader hands batches to
  different workers).

:class:`ResumableBatchSampler` yields, for each batch, a list of ``(dataset index, sample seed)``
pairs: the permutation comes from ``(seed, epoch)``, each rank takes its slice of every global
batch, and the sample seed from ``(seed, epoch, position)``. :class:`SeededDataset` seeds Python,
NumPy and torch with that seed around one ``dataset[index]`` call and restores the caller's
generators afterwards, so the training process's own random stream (dropout) is never disturbed.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler


def sample_seed(seed: int, epoch: int, position: int) -> int:
    """A 32-bit seed for one sample, stable across processes, workers and Python versions."""
    digest = hashlib.blake2b(f"{seed}:{epoch}:{position}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "little")


@dataclass
class DataPosition:
    """Where the training stream is: ``batch`` batches of ``epoch`` have been consumed."""

    epoch: int = 0
    batch: int = 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batch": self.batch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.batch = int(state["epoch"]), int(state["batch"])


class ResumableBatchSampler(Sampler[list[tuple[int, int]]]):
    """Batches of ``(index, sample seed)`` for one rank; deterministic given (seed, epoch, start).

    Args:
        size: number of samples in the dataset.
        batch_size: samples per batch on this rank (the global batch is ``batch_size * world_size``).
        rank, world_size: this process's share of every global batch.
        seed: base seed of the run (``RANDOM_SEED``).
        shuffle: a new permutation each epoch (training) or the dataset order (evaluation).
        drop_last: drop the incomplete last global batch (training). When False the last global
            batch is split evenly over the ranks (smaller batches), padded by repeating the first
            samples when the ranks cannot share it exactly (fewer than ``world_size`` repeats), so
            that every rank runs the same batches (collectives inside the model stay matched);
            callers drop the repeats by index.
    """

    def __init__(
        self,
        size: int,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = True,
    ):
        if batch_size < 1:
            raise ValueError(f"batch size per process must be >= 1, got {batch_size}")
        global_batch = batch_size * world_size
        if drop_last and size < global_batch:
            raise ValueError(f"{size} samples cannot fill one global batch of {global_batch}; lower OPTIM.BATCH_SIZE")
        if size < 1:
            raise ValueError("the dataset is empty")
        self.size, self.batch_size, self.rank, self.world_size = size, batch_size, rank, world_size
        self.seed, self.shuffle, self.drop_last = seed, shuffle, drop_last
        self.epoch, self.start = 0, 0

    @property
    def batches_per_epoch(self) -> int:
        global_batch = self.batch_size * self.world_size
        return self.size // global_batch if self.drop_last else -(-self.size // global_batch)

    def set_position(self, epoch: int, start_batch: int = 0) -> None:
        """Make the next iteration yield epoch ``epoch`` from its batch ``start_batch`` on."""
        self.epoch, self.start = epoch, start_batch

    def __len__(self) -> int:
        return max(0, self.batches_per_epoch - self.start)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.size, generator=generator).tolist()
        else:
            order = list(range(self.size))
        global_batch = self.batch_size * self.world_size
        full_batches = self.size // global_batch
        for batch in range(self.start, self.batches_per_epoch):
            size = self.batch_size
            if batch == full_batches:  # the incomplete last batch (drop_last=False): split evenly
                size = -(-(self.size - batch * global_batch) // self.world_size)
            first = batch * global_batch + self.rank * size
            positions = range(first, first + size)
            yield [(order[p % self.size], sample_seed(self.seed, self.epoch, p)) for p in positions]


class SeededDataset(Dataset):
    """Wrap a map-style dataset so ``wrapped[(index, seed)]`` is ``dataset[index]`` drawn under ``seed``."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, seed = key
        python_state, numpy_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            random.seed(seed)
            np.random.seed(seed)
            # The CPU generator only: torch.manual_seed also seeds every accelerator, lazily, recording a
            # stack trace per call when none is initialised (~2 ms an item on a CPU); the transforms here
            # draw from the CPU generator, and fork_rng(devices=[]) restores only its state.
            torch.random.default_generator.manual_seed(seed)
            try:
                return self.dataset[index]
            finally:
                random.setstate(python_state)
                np.random.set_state(numpy_state)


def cycle_batches(loader: Any, sampler: ResumableBatchSampler, position: DataPosition) -> Iterator[Any]:
    """Endless batches from ``position`` on; the caller adds 1 to ``position.batch`` per step.

    The iteration-based loop of VirTex's ``cycle(loader)``, made resumable.
    """
    while True:
        sampler.set_position(position.epoch, position.batch)
        yield from loader
        position.epoch += 1
        position.batch = 0

"""What a dataset writer produces: tables and texts, plus the images still to be rendered."""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from refers.data.synth.findings import Patient, View

# One stream of random numbers per dataset, so adding a dataset never changes another one.
DATASET_CODES = {
    "MIMIC-CXR": 1, "NIH_ChestX-ray": 2, "Shenzhen_Tuberculosis": 3, "COVID-19_Image_Data_Collection": 4,
    "VinBigData_Chest_X-ray": 5, "IU_X-ray": 6,
}


@dataclass(frozen=True)
class SynthConfig:
    """The arguments of ``refers synth`` that shape the data."""

    studies: int
    seed: int
    image_size: int

    def rng(self, dataset: str, *index: int) -> np.random.Generator:
        """The random stream of one item (patient, study, batch) of one dataset."""
        return np.random.default_rng([self.seed, DATASET_CODES[dataset], *index])


@dataclass
class ImageJob:
    """One image to render and write, relative to the dataset root."""

    path: str
    patient: Patient | None
    view: View
    writer: Callable[[Path, np.ndarray, dict], None]
    options: dict = field(default_factory=dict)


@dataclass
class DatasetPlan:
    """Everything a dataset consists of: ``texts`` (plain), ``gz_texts`` (gzipped), ``images``."""

    name: str
    texts: dict[str, str] = field(default_factory=dict)
    gz_texts: dict[str, str] = field(default_factory=dict)
    images: list[ImageJob] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)


def date_from(rng: np.random.Generator, first_year: int, last_year: int) -> _dt.date:
    """A random calendar date (from the seed, never from the clock)."""
    start = _dt.date(first_year, 1, 1).toordinal()
    end = _dt.date(last_year, 12, 31).toordinal()
    return _dt.date.fromordinal(int(rng.integers(start, end + 1)))


def hex_id(rng: np.random.Generator, groups: tuple[int, ...]) -> str:
    """Hexadecimal groups joined by '-', e.g. MIMIC dicom ids (8x5) or VinBigData image ids (32)."""
    return "-".join("".join(f"{d:x}" for d in rng.integers(0, 16, n)) for n in groups)


def unique_ints(rng: np.random.Generator, count: int, low: int, high: int) -> list[int]:
    """``count`` distinct integers in ``[low, high)``, in drawing order."""
    seen: dict[int, None] = {}
    while len(seen) < count:
        for value in rng.integers(low, high, count - len(seen)).tolist():
            seen.setdefault(value)
    return list(seen)[:count]

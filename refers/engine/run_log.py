"""A run's TensorBoard scalars and (optionally) a metrics CSV, written by rank 0 only.

Both stages log through :class:`RunLog`: pre-training to ``<run>/tensorboard``, fine-tuning to
``--log_dir`` plus ``--log_dir/metrics.csv`` (one whole line per validation).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Sequence


class RunLog:
    """TensorBoard scalars/text and CSV rows; every method is a no-op on ranks other than 0.

    Args:
        tensorboard_dir: the SummaryWriter's folder.
        is_main: this is rank 0.
        csv_path, csv_fields: a metrics CSV and its header (None: no CSV).
        fresh: start the CSV anew (else append to an existing one, e.g. after ``--resume``).
    """

    def __init__(self, tensorboard_dir: str | Path, is_main: bool, csv_path: Path | None = None,
                 csv_fields: Sequence[str] = (), fresh: bool = True):
        self.writer = None
        self.csv_path = csv_path
        if not is_main:
            return
        from torch.utils.tensorboard import SummaryWriter

        if csv_path is not None:
            csv_path.parent.mkdir(parents=True, exist_ok=True)
        self.writer = SummaryWriter(log_dir=str(tensorboard_dir))
        if csv_path is not None and (fresh or not csv_path.is_file()):
            with open(csv_path, "w", newline="", encoding="utf-8") as handle:
                csv.writer(handle).writerow(csv_fields)

    def scalar(self, tag: str, value: float, step: int) -> None:
        if self.writer is not None:
            self.writer.add_scalar(tag, value, step)

    def text(self, tag: str, value: str, step: int) -> None:
        if self.writer is not None:
            self.writer.add_text(tag, value, step)

    def row(self, values: Sequence[Any]) -> None:
        """Append one line to the CSV (rank 0)."""
        if self.writer is not None and self.csv_path is not None:
            with open(self.csv_path, "a", newline="", encoding="utf-8") as handle:
                csv.writer(handle).writerow(values)

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

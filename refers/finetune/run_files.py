"""The files a fine-tuning run of a given ``--name`` writes (torch-free: the sweep reads them too).

``<output_dir>/<name>_bestauc_checkpoint.bin`` and ``<name>_bestloss_checkpoint.bin`` (the
original's names), the resume state ``<name>_last.pth``, and in ``--log_dir`` the metrics CSV and
TensorBoard's event files.
"""

from __future__ import annotations

from pathlib import Path


def checkpoint_paths(output_dir: str | Path, name: str) -> dict[str, Path]:
    """``{"auc": best-AUC checkpoint, "loss": best-loss checkpoint, "state": resume state}``."""
    out = Path(output_dir)
    return {"auc": out / f"{name}_bestauc_checkpoint.bin", "loss": out / f"{name}_bestloss_checkpoint.bin",
            "state": out / f"{name}_last.pth"}


def metrics_path(log_dir: str | Path) -> Path:
    return Path(log_dir) / "metrics.csv"


def run_outputs(output_dir: str | Path, name: str, log_dir: str | Path) -> list[Path]:
    """What an earlier run of ``name`` leaves that a new run would replace: its checkpoints, and a
    metrics CSV with at least one validation (a start that failed before one leaves only leftovers)."""
    metrics = metrics_path(log_dir)
    has_rows = metrics.is_file() and len(metrics.read_text(encoding="utf-8", errors="replace").splitlines()) > 1
    return [*checkpoint_paths(output_dir, name).values(), *([metrics] if has_rows else [])]


def run_leftovers(log_dir: str | Path) -> list[Path]:
    """What ``--overwrite`` also removes, never a reason to refuse: TensorBoard's event files and a
    metrics CSV of a start that failed before its first validation."""
    log_dir = Path(log_dir)
    if not log_dir.is_dir():
        return []
    return [*sorted(log_dir.glob("events.out.tfevents.*")), metrics_path(log_dir)]

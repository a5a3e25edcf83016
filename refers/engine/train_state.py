"""The full, resumable state of a pre-training run, saved as ``checkpoint_{iteration}.pth``.

A checkpoint holds only tensors and plain data, so it loads with ``torch.load(weights_only=True)``:

    {"format": "refers-pretrain-state", "version": 1, "iteration": int,
     "model": state dict (keys as the unwrapped model: ``image_encoder.<timm key>``, ``bert.*``, ...),
     "optimizer": SGD state incl. Lookahead's slow weights and step counters,
     "scheduler": LambdaLR state, "scaler": GradScaler state ({} when unused),
     "rng": [one {"python", "numpy", "torch", "cuda"} dict per rank, all tensors],
     "data": {"epoch", "batch"} (the data position; sample order and augmentations follow from it),
     "config": the resolved configuration as plain data}

The original saved only the inner SGD state and dropped it on resume; here a resumed run continues
exactly (on CPU, bit for bit).
"""

from __future__ import annotations

import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from refers.base.checkpoints import atomic_torch_save, safe_load
from refers.base.errors import UserError

FORMAT = "refers-pretrain-state"
VERSION = 1
_CHECKPOINT_NAME = re.compile(r"^checkpoint_(\d+)\.pth$")


# ----------------------------------------------------------------------------------------------
# Random number generators, as tensors (weights_only-loadable)
# ----------------------------------------------------------------------------------------------
def capture_rng_state() -> dict[str, Any]:
    """The Python, NumPy, torch CPU and CUDA generator states of this process, as tensors."""
    version, mt_state, gauss = random.getstate()
    _, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": torch.tensor(mt_state, dtype=torch.int64),
        "python_meta": torch.tensor([version, 0 if gauss is None else 1], dtype=torch.int64),
        "python_gauss": torch.tensor(0.0 if gauss is None else gauss, dtype=torch.float64),
        "numpy": torch.from_numpy(np_keys.astype(np.int64)),
        "numpy_meta": torch.tensor([np_pos, np_has_gauss], dtype=torch.int64),
        "numpy_gauss": torch.tensor(np_gauss, dtype=torch.float64),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.stack(torch.cuda.get_rng_state_all())
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Set this process's generators to a state from :func:`capture_rng_state`."""
    version, has_gauss = state["python_meta"].tolist()
    gauss = float(state["python_gauss"]) if has_gauss else None
    random.setstate((int(version), tuple(int(x) for x in state["python"].tolist()), gauss))
    pos, np_has_gauss = state["numpy_meta"].tolist()
    np.random.set_state(
        ("MT19937", state["numpy"].numpy().astype(np.uint32), int(pos), int(np_has_gauss), float(state["numpy_gauss"]))
    )
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        saved = list(state["cuda"].cpu())
        if len(saved) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(saved)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ----------------------------------------------------------------------------------------------
# Checkpoint files
# ----------------------------------------------------------------------------------------------
def checkpoint_path(serialization_dir: str | os.PathLike, iteration: int) -> Path:
    return Path(serialization_dir) / f"checkpoint_{iteration}.pth"


def list_checkpoints(serialization_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """``(iteration, path)`` of every ``checkpoint_{iteration}.pth`` in the folder, oldest first."""
    folder = Path(serialization_dir)
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        match = _CHECKPOINT_NAME.match(path.name)
        if match and path.is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def resolve_resume(resume_from: str | None, serialization_dir: str | os.PathLike) -> Path | None:
    """The checkpoint to resume from: a path, or ``auto`` (latest in the folder; None when empty).

    Raises:
        FileNotFoundError: an explicit path that does not exist.
    """
    if not resume_from:
        return None
    if resume_from == "auto":
        found = list_checkpoints(serialization_dir)
        return found[-1][1] if found else None
    path = Path(resume_from)
    if not path.is_file():
        raise FileNotFoundError(f"--resume-from {resume_from}: no such checkpoint file")
    return path


def build_state(
    *,
    iteration: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: Any,
    data_position: dict[str, int],
    config: dict[str, Any],
    rng_states: list[dict[str, Any]],
) -> dict[str, Any]:
    """Assemble the checkpoint dictionary (``model`` is the unwrapped model, not DDP)."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "iteration": int(iteration),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else {},
        "rng": rng_states,
        "data": dict(data_position),
        "config": config,
    }


def save_state(state: dict[str, Any], serialization_dir: str | os.PathLike) -> Path:
    """Write ``checkpoint_{iteration}.pth`` atomically (a crash mid-write keeps the old file)."""
    return atomic_torch_save(state, checkpoint_path(serialization_dir, state["iteration"]))


def load_state(path: str | os.PathLike) -> dict[str, Any]:
    """Read a training-state checkpoint (weights_only) and check its format.

    Raises:
        UserError: (exit 2) the file is not a pre-training state of this project (e.g. an export);
            CheckpointError for a file that cannot be read.
    """
    state = safe_load(path)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(f"--resume-from {path} is not a REFERS pre-training checkpoint (no {FORMAT!r} marker); "
                        "cannot resume from it (pass a checkpoint_<iteration>.pth)", 2)
    return state


def restore_state(
    state: dict[str, Any],
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: Any,
    rank: int = 0,
) -> None:
    """Load model, optimiser, schedule, scaler and this rank's RNG state from ``state``."""
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and scaler.is_enabled() and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    rng = state.get("rng") or []
    if rng:
        restore_rng_state(rng[rank] if rank < len(rng) else rng[0])

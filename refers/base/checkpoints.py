"""Safe checkpoint files: atomic writes, and loading that never runs pickled code.

Every checkpoint this project writes holds only tensors and plain data (numbers, strings, lists,
dicts), so it loads with ``torch.load(..., weights_only=True)``; a file that needs arbitrary
Python objects is refused with a clear error.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from refers.base.atomic import atomic_output


class UnsafeCheckpointError(ValueError):
    """The file needs arbitrary Python objects to load (a pickle with code): refused."""


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary file in the same folder, then rename over ``path``.

    An interrupted write leaves the previous file at ``path`` untouched.
    """
    with atomic_output(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)


def safe_load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """Load a ``.pth`` / ``.bin`` / ``.safetensors`` file without executing pickled code.

    Raises:
        FileNotFoundError: if the file does not exist.
        UnsafeCheckpointError: if the file holds objects other than tensors and plain data.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device=str(map_location))
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises UnpicklingError with a long explanation
        if "weights_only" in str(error) or "Unsupported global" in str(error) or "UnpicklingError" in type(error).__name__:
            raise UnsafeCheckpointError(
                f"{path} holds Python objects other than tensors and plain data; refusing to load it "
                "(only weights_only checkpoints are trusted). Re-save it as a plain state dict."
            ) from None
        raise

"""Safe checkpoint files: atomic writes, and one opener that never runs pickled code.

Every checkpoint this project writes holds only tensors and plain data (numbers, strings, lists,
dicts), so it loads with ``torch.load(..., weights_only=True)``; a file that needs arbitrary
Python objects is refused. Every way a file can be broken (empty, a text or HTML page saved under
a checkpoint's name, a truncated download, a damaged archive) becomes one :class:`CheckpointError`
line that names the file and says what to do, instead of a torch traceback.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any, Iterator

import torch

from refers.base.atomic import atomic_output
from refers.base.errors import UserError

_ZIP = b"PK\x03\x04"  # torch.save's archive format (PyTorch >= 1.6)
_PICKLE = b"\x80"  # the legacy format: a pickle, protocol 2 or later
_DAMAGED = "download or copy it again"


class CheckpointError(UserError):
    """A checkpoint file that cannot be read: the message names the file and what to do."""


class UnsafeCheckpointError(CheckpointError):
    """The file needs arbitrary Python objects to load (a pickle with code): refused."""


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary file in the same folder, then rename over ``path``.

    An interrupted write leaves the previous file at ``path`` untouched.
    """
    with atomic_output(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)


def _what_it_is(path: Path, head: bytes) -> str:
    """A guess at what a file that is no checkpoint holds, for the message."""
    if not head:
        return "is empty (0 bytes): an interrupted download or copy?"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return "is not a PyTorch, safetensors or NumPy weights file"
    kind = "an HTML page" if "<html" in text.lower() or "<!doctype" in text.lower() else "text"
    return f"holds {kind}, not weights (a failed download saved under this name?)"


@contextlib.contextmanager
def reading_checkpoint(path: str | os.PathLike) -> Iterator[None]:
    """Turn the errors of reading weights from ``path`` (torch, safetensors, NumPy) into one line.

    For loaders that take a path themselves (timm's ``.npz`` reader); :func:`safe_load` uses it too.
    """
    path = Path(path)
    try:
        yield
    except (FileNotFoundError, CheckpointError):
        raise
    except pickle.UnpicklingError as error:
        if "weights_only" in str(error) or "Unsupported global" in str(error):
            raise UnsafeCheckpointError(
                f"{path} holds Python objects other than tensors and plain data; refusing to load it "
                "(only weights_only checkpoints are trusted). Re-save it as a plain state dict."
            ) from None
        raise CheckpointError(f"{path} is damaged ({_short(error)}); {_DAMAGED}") from None
    except ValueError as error:
        if "allow_pickle" in str(error):  # NumPy: an object array, i.e. pickled code
            raise UnsafeCheckpointError(f"{path} holds pickled Python objects; refusing to load it "
                                        "(only plain arrays are trusted)") from None
        raise CheckpointError(f"{path} is damaged or not a weights file ({_short(error)}); {_DAMAGED}") from None
    except (RuntimeError, EOFError, OSError, KeyError, zipfile.BadZipFile) as error:
        raise CheckpointError(f"{path} is truncated or damaged ({_short(error)}); {_DAMAGED}") from None
    except Exception as error:  # safetensors raises its own SafetensorError
        if type(error).__name__ != "SafetensorError":
            raise
        raise CheckpointError(f"{path} is not a valid safetensors file ({_short(error)}); {_DAMAGED}") from None


def _short(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return (text[:120] + "...") if len(text) > 120 else (text or type(error).__name__)


def safe_load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """Load a ``.pth`` / ``.bin`` / ``.safetensors`` file without executing pickled code.

    Raises:
        FileNotFoundError: if the file does not exist.
        UnsafeCheckpointError: if the file holds objects other than tensors and plain data.
        CheckpointError: if the file is empty, not a weights file, truncated or damaged.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    with open(path, "rb") as handle:
        head = handle.read(64)
    with reading_checkpoint(path):
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device=str(map_location))
        if not head.startswith((_ZIP, _PICKLE)):
            raise CheckpointError(f"{path} {_what_it_is(path, head)}; {_DAMAGED}")
        return torch.load(path, map_location=map_location, weights_only=True)

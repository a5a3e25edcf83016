"""Atomic file output: readers never see a half-written file, and a crash keeps the old one.

Everything the project writes goes through :func:`atomic_output`: a temporary file in the target's
folder, renamed over the target once complete. The result has the permissions any new file of the
user gets (``0666`` less the umask), not ``tempfile``'s private ``0600``, so a lab's shared data
folder stays readable to colleagues.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from refers.base.errors import UserError

# Writes that fail because of where they go, not what they hold: one line naming the path, exit 1.
_STORAGE_ERRORS = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded", errno.EROFS: "read-only file system",
                   errno.ENOLCK: "no file locks available (a file system without locking, e.g. some NFS mounts)"}


def _umask() -> int:
    mask = os.umask(0)  # the only portable way to read it: set, then restore at once
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``, on error it is removed.

    Args:
        suffix: the temporary file's ending (some writers choose their format from it, e.g. ``.png``).
    """
    path = Path(path)
    with _storage_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    try:
        with _storage_errors(path):
            yield Path(tmp)
            os.chmod(tmp, 0o666 & ~_umask())
            os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside ``path`` (which must not exist or be empty); on success it
    is renamed to ``path``, on error removed: a reader never sees a half-written folder."""
    path = Path(path)
    with _storage_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        with _storage_errors(path):
            os.chmod(staging, 0o777 & ~_umask())  # mkdtemp makes it 0700; the folder follows the umask
            yield staging
            if path.is_dir():
                path.rmdir()  # empty (the caller checked): rename cannot replace a folder otherwise
            staging.rename(path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


# The temporaries atomic_output makes: "." + target name + "." + mkstemp's 8 random characters + suffix.
_TEMPORARY = re.compile(r"^\..+\.[a-z0-9_]{8}\.(tmp|png|npz|npy)$")


def remove_stale_temporaries(folder: str | os.PathLike, older_than: float, recursive: bool = False) -> int:
    """Delete what interrupted :func:`atomic_output` writes left in ``folder``; how many were removed.

    A write killed outright (SIGKILL, a power cut, a pool worker terminated) cannot clean up after
    itself. Only files named like this module's temporaries and last changed before ``older_than``
    (the time the current run started) go, so writes under way in another process are left alone.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    removed = 0
    for path in folder.rglob(".*") if recursive else folder.glob(".*"):
        if _TEMPORARY.match(path.name) and path.is_file() and path.stat().st_mtime < older_than:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed += 1
    return removed


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (an empty file, made if absent) for the block, so that
    processes reading, changing and replacing a shared file do it one at a time (POSIX ``flock``)."""
    import fcntl  # POSIX only: imported here so that the package still imports elsewhere

    path = Path(path)
    with _storage_errors(path):
        handle = open(path, "a")
    with handle:
        with _storage_errors(path):
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield


@contextlib.contextmanager
def _storage_errors(path: Path) -> Iterator[None]:
    """A full disk, a quota or a read-only file system while writing ``path`` -> one line naming it."""
    try:
        yield
    except OSError as error:
        if error.errno not in _STORAGE_ERRORS:
            raise
        raise UserError(f"cannot write {path}: {_STORAGE_ERRORS[error.errno]}; free space or choose another output folder") from None


def check_output_dir(path: str | os.PathLike, what: str = "output folder") -> Path:
    """Check before any work that ``path`` is, or can be made, a writable folder (nothing is created).

    Raises:
        UserError: (exit 2) ``path`` or a folder above it is a file; the nearest existing folder
            cannot be written (permissions, read-only file system).
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{what} {path} is a file, not a folder; choose another path", 2)
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise UserError(f"{what} {path} cannot be created: {existing} is a file", 2)
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{what} {path} cannot be written: {existing} is read-only (permissions or a read-only file system)", 2)
    return path


def check_output_file(path: str | os.PathLike, what: str = "output file") -> Path:
    """Check before any work that the file ``path`` can be written: not a folder, its folder writable.

    Raises:
        UserError: (exit 2) as :func:`check_output_dir`, or ``path`` is a folder.
    """
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{what} {path} is a folder, not a file; choose another path", 2)
    check_output_dir(path.parent, f"{what}'s folder")
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8, ``\\n`` line ends) to ``path`` atomically."""
    with atomic_output(path) as tmp:
        tmp.write_text(text, encoding="utf-8", newline="\n")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)

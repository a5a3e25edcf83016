"""Checkpoint retention for pre-training: keep the last K ``checkpoint_{iteration}.pth``, plus milestones.

Why: one full-state checkpoint of the published recipe (``configs/pretrain/refers_vitb16.yaml``)
takes 2.70 GB (2.51 GiB), and the recipe writes one every 2,000 of its 400,000 iterations: 200 of
them, 540 GB, if all were kept; the default (``CHECKPOINT.KEEP_LAST`` 3) keeps 8.1 GB, and 10.8 GB
for the moment between writing a new one and deleting the oldest. The figure: the model has
224,998,163 parameters (ViT-B/16 85,798,656 + BERT-base 109,482,240 + report decoder 27,938,576 +
report projection 1,771,776 + view fusion 6,915; the decoder's output layer is tied to its word
embeddings and stored once), all float32 (autocast leaves the stored weights in float32) and all
trained, so a checkpoint holds three float32 copies of them: the weights, SGD's momentum buffers and
Lookahead's slow weights (created at its first sync, step 5): 3 x 224,998,163 x 4 = 2,699,977,956
bytes, plus 0.4 MB of tensor records, RNG states, schedule and configuration. Measured: the state
of a recipe-size model after 5 SGD + Lookahead steps serialises to 2,700,361,686 bytes. (With
Bio_ClinicalBERT, vocabulary 28,996 instead of 30,522, it is 14 MB less.)

The rule, applied by rank 0 after each new checkpoint is complete on disk (see :func:`prune_checkpoints`):

* only files named exactly ``checkpoint_{N}.pth`` in the run folder are candidates (never the
  export, ``config.yaml``, logs, or the temporary ``.checkpoint_{N}.pth.*.tmp`` of a write under way);
* ``keep_last`` 0 keeps everything; otherwise the ``keep_last`` highest iterations up to the one
  just saved are kept, and with ``keep_every`` N > 0 every iteration that is a multiple of N too;
* the checkpoint just saved is always kept, and so is the one this run resumed from, for as long as
  this run lives (it is the known-good state the run started from); a later run resumed from a newer
  checkpoint treats it like any other;
* checkpoints of iterations after the one just saved (left by an earlier run that went further,
  when a run was resumed from an older checkpoint into the same folder) are never deleted here: this
  run overwrites them when it gets there.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Iterable

from refers.engine.train_state import list_checkpoints

log = logging.getLogger("refers.pretrain")


def checkpoints_to_delete(
    iterations: Iterable[int], *, keep_last: int, keep_every: int, current: int, protected: Iterable[int] = ()
) -> list[int]:
    """The iterations whose checkpoints the retention rule deletes (pure; see the module docstring).

    Args:
        iterations: iterations of the checkpoints in the folder.
        keep_last: how many of the newest to keep (0 = keep all).
        keep_every: also keep multiples of this (0 = no milestones).
        current: the iteration just saved; later iterations are left alone.
        protected: iterations never deleted (the checkpoint resumed from).

    Returns:
        Ascending iterations to delete.
    """
    if keep_last < 0 or keep_every < 0:
        raise ValueError(f"keep_last and keep_every must be >= 0, got {keep_last} and {keep_every}")
    if keep_last == 0:
        return []
    candidates = sorted(i for i in set(iterations) if i <= current)
    keep = set(candidates[-keep_last:]) | {current} | set(protected)
    if keep_every:
        keep |= {i for i in candidates if i % keep_every == 0}
    return [i for i in candidates if i not in keep]


def prune_checkpoints(
    folder: str | os.PathLike,
    keep_last: int,
    keep_every: int,
    *,
    saved: str | os.PathLike,
    protect: Iterable[str | os.PathLike | None] = (),
) -> list[Path]:
    """Delete the checkpoints in ``folder`` that the retention rule no longer keeps.

    Call on rank 0 only, after ``saved`` was written and renamed into place; it is flushed to disk
    before anything is deleted, so a power cut cannot leave neither the old nor the new checkpoint.
    A file that cannot be deleted is logged as a warning and left (retention never stops training).

    Args:
        folder: the run folder.
        keep_last, keep_every: ``CHECKPOINT.KEEP_LAST`` / ``CHECKPOINT.KEEP_EVERY``.
        saved: the checkpoint just written (always kept; later iterations are left alone).
        protect: further checkpoint paths never deleted, e.g. the one resumed from (None entries ignored).

    Returns:
        The paths deleted, oldest first.
    """
    found = list_checkpoints(folder)
    saved = _identity(Path(saved))
    current = next((i for i, path in found if _identity(path) == saved), None)
    if current is None:
        raise ValueError(f"{saved} is not a checkpoint_{{iteration}}.pth in {folder}")
    guarded = {_identity(Path(p)) for p in protect if p is not None} | {saved}
    protected = [i for i, path in found if _identity(path) in guarded]
    doomed = set(checkpoints_to_delete((i for i, _ in found), keep_last=keep_last, keep_every=keep_every,
                                       current=current, protected=protected))
    if not doomed:
        return []
    _flush_to_disk(saved)
    deleted = []
    for iteration, path in found:
        if iteration not in doomed:
            continue
        try:
            path.unlink()
        except FileNotFoundError:  # already gone: nothing to do
            continue
        except OSError as error:
            log.warning("retention: could not delete %s (%s); leaving it", path, error)
            continue
        deleted.append(path)
        log.info("retention: deleted %s (keeping the last %d checkpoints%s)", path.name, keep_last,
                 f" and every multiple of {keep_every}" if keep_every else "")
    return deleted


def _identity(path: Path) -> Path:
    """A path to compare by: absolute, symlinks resolved (a relative --resume-from still matches)."""
    return path.resolve()


def _flush_to_disk(path: Path) -> None:
    """fsync the file and its folder entry (the rename), where the platform allows."""
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())
    with contextlib.suppress(OSError):  # folders cannot be opened for fsync on some systems
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

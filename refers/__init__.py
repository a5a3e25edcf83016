"""REFERS: radiograph representation learning from free-text reports.

The package is a library (data, text, models, losses, engine, eval); the command-line entry
points live in :mod:`refers.cli` and in the thin scripts of ``Pre-train/`` and ``Fine-tune/``.
Heavy dependencies (torch, timm, transformers) are imported lazily by the modules that need them.

Its public API for users of trained models::

    import refers
    model = refers.load_dual_encoder("exported/folder")   # refers export CHECKPOINT --dual-encoder --out ...
    images = model.encode_images(["a.png", "b.dcm"])     # [N, D] float32, L2-normalised
    reports = model.encode_reports(["No pleural effusion."])
    similarity = images @ reports.T
"""

from typing import Any

from refers.base.version import __version__

__all__ = ["__version__", "load_dual_encoder"]


def load_dual_encoder(path: Any, device: Any = None, precision: str = "auto") -> Any:
    """Load an exported dual-encoder folder (or a pre-training checkpoint); see
    :func:`refers.engine.dual_encoder_folder.load_dual_encoder`."""
    from refers.engine.dual_encoder_folder import load_dual_encoder as load

    return load(path, device=device, precision=precision)

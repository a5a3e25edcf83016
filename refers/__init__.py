"""REFERS: radiograph representation learning from free-text reports.

The package is a library (data, text, models, losses, engine, eval); the command-line entry
points live in :mod:`refers.cli` and in the thin scripts of ``Pre-train/`` and ``Fine-tune/``.
Heavy dependencies (torch, timm, transformers) are imported lazily by the modules that need them.
"""

__version__ = "0.1.0"

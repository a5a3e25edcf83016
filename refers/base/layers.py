"""The declared order of the package's layers, bottom to top (checked by ``tests/base/test_layers.py``).

A module may import modules of its own layer or of a layer below it, never above. The command
line (``refers.cli``) is the top: nothing else in the package imports it, and sweep, demo and bench
reach the library the way the commands do, through the library's functions. Imports are absolute
(``from refers.data.lists import read_list``), and no two modules import each other, directly or
round a longer cycle (function-level imports count too).

``eval`` and ``prepare`` are leaves beside the stack, not layers in it: each may import only the
layers up to :data:`LEAF_USES` (base, config, data/text), and only :data:`LEAVES`' importers may
import it. Training does not need them: of ``eval``, only the tasks use it (validation's metrics:
``eval.metrics`` for the fine-tuning AUC, ``eval.retrieval`` for pre-training's recall; testing's
tables, figures and statistics); ``prepare`` is for the apps alone.

A module belongs to the entry with the longest matching prefix (``refers.engine.pretrain_loop``
is a task although ``refers.engine`` is the engine). ``refers`` itself stands only for the
package's ``__init__`` (the public API: its version and ``load_dual_encoder``); every other module must fall under a longer entry.
This module only declares; it imports nothing.
"""

from __future__ import annotations

PACKAGE = "refers"

# (layer, module prefixes), bottom to top.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("base", ("refers.base",)),
    ("config", ("refers.config",)),
    ("data", ("refers.data", "refers.text")),
    ("models", ("refers.models", "refers.losses")),
    ("engine", ("refers.engine",)),
    # Pre-training's loop, validation and parts are its task; they live in engine/ for now.
    ("tasks", ("refers.finetune", "refers.engine.pretrain_loop", "refers.engine.pretrain_eval",
               "refers.engine.pretrain_parts", "refers.crossmodal")),
    # The package's __init__: the public API (refers.load_dual_encoder) over the layers below.
    ("api", ("refers",)),
    ("apps", ("refers.sweep", "refers.sweep_runner", "refers.sweep_slurm", "refers.sweep_status", "refers.slurm",
              "refers.demo", "refers.bench")),
    ("cli", ("refers.cli", "refers.__main__")),
)

# leaf -> (module prefixes, the layers allowed to import it)
LEAVES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "eval": (("refers.eval",), ("tasks", "apps", "cli")),
    "prepare": (("refers.prepare",), ("apps", "cli")),
}

# The highest layer a leaf may import.
LEAF_USES = "data"

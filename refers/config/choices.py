"""Names a setting may take that both stages' configurations offer and the engine builds.

Here, below the engine, so that the torch-free parsers (``refers.config.pretrain``,
``refers.finetune.config``) and the engine that acts on them read one list.
"""

from __future__ import annotations

# "sgd": momentum SGD (the recipe); "adamw": betas (0.9, 0.999).
OPTIMIZERS = ("sgd", "adamw")

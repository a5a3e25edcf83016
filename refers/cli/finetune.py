"""``refers finetune`` (= ``Fine-tune/train.py``): fine-tune on a downstream dataset, or test with ``--stage test``.

Runs as one process or under ``torchrun`` / ``python -m torch.distributed.launch`` (gloo on a CPU),
with the original ``train.py``'s flags; see :mod:`refers.finetune.config`. The work itself is
:func:`refers.finetune.stages.run`.
"""

from __future__ import annotations

from typing import Sequence

from refers.base.errors import UserError as UserError
from refers.cli.common import command
from refers.finetune.stages import run, setup_logging

__all__ = ["main", "run", "setup_logging"]


@command("refers finetune")
def main(argv: Sequence[str] | None = None) -> int:
    return run(argv, "refers finetune", stage="train")

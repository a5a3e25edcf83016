"""``refers test`` (= ``Fine-tune/test.py``): evaluate a fine-tuned checkpoint on ``test.txt``.

With no arguments, from inside ``Fine-tune/<Dataset>/``, it evaluates
``./output/caption_100_bestauc_checkpoint.bin`` as the original ``test.py`` did, and writes the
prediction files, summary, ROC figure and run record (see :mod:`refers.finetune.testing`).
"""

from __future__ import annotations

from typing import Sequence

from refers.cli.common import command
from refers.finetune.stages import run


@command("refers test")
def main(argv: Sequence[str] | None = None) -> int:
    return run(argv, "refers test", stage="test")

"""Fine-tune (or, with ``--stage test``, test) on any dataset: ``python3 Fine-tune/train.py --dataset NIH_ChestX-ray ...``.

The same command as ``refers finetune``; works under ``python3 -m torch.distributed.launch`` and ``torchrun``.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the project, when not pip-installed

from refers.cli.finetune import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())

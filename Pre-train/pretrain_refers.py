"""REFERS pre-training with the original README's command line (run from this folder), e.g.

    python3 pretrain_refers.py --num-gpus-per-machine 1 --cpu-workers 32 --serialization-dir "../data/" \
        --dist-url "tcp://127.0.0.1:12343" --checkpoint-every 100

The same as ``refers pretrain ...``; see ``--help``.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the project, when not pip-installed

from refers.cli.pretrain import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())

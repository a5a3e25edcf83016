"""Evaluate a fine-tuned checkpoint on a dataset's test list: ``python3 Fine-tune/test.py --dataset ... --pretrained_dir ...``.

The same command as ``refers test``.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the project, when not pip-installed

from refers.cli.test import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())

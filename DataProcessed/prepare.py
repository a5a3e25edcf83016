"""Build the lists, labels and prepared images of one dataset: ``python DataProcessed/prepare.py nih ...``.

The same as ``refers prepare ...``; see ``refers prepare --help``.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from refers.cli.prepare import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())

"""Summarise a tree of prediction files: same as ``refers results`` (see ``--help``).

    python Results_of_fine-tuning/summarize.py Results_of_fine-tuning --out results_summary --compare REFERS
"""

import sys
from pathlib import Path

try:
    from refers.cli.results import main
except ImportError:  # a checkout without `pip install -e .`: use the package next to this folder
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from refers.cli.results import main

if __name__ == "__main__":
    sys.exit(main())

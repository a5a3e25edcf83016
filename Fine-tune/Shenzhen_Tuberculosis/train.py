"""Fine-tune on Shenzhen_Tuberculosis, with the original README's command line (run from this folder).

Equivalent to ``refers finetune --dataset Shenzhen_Tuberculosis ...``; the dataset is fixed here, every other flag passes through.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the project, when not pip-installed

from refers.cli.finetune import main  # noqa: E402

DATASET = "Shenzhen_Tuberculosis"

if __name__ == "__main__":
    sys.exit(main(["--dataset", DATASET, *sys.argv[1:]]))

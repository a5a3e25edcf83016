"""Fine-tune on VinBigData_Chest_X-ray, with the original README's command line (run from this folder).

Equivalent to ``refers finetune --dataset VinBigData_Chest_X-ray ...``; the dataset is fixed here, every other flag passes through.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the project, when not pip-installed

from refers.cli.finetune import main  # noqa: E402

DATASET = "VinBigData_Chest_X-ray"

if __name__ == "__main__":
    sys.exit(main(["--dataset", DATASET, *sys.argv[1:]]))

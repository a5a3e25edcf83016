"""Fine-tune on COVID-19_Image_Data_Collection, with the original README's command line (run from this folder).

Equivalent to ``refers finetune --dataset COVID-19_Image_Data_Collection ...``; the dataset is fixed here, every other flag passes through.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the project, when not pip-installed

from refers.cli.finetune import main  # noqa: E402

DATASET = "COVID-19_Image_Data_Collection"

if __name__ == "__main__":
    sys.exit(main(["--dataset", DATASET, *sys.argv[1:]]))

"""Evaluate ./output/caption_100_bestauc_checkpoint.bin (or --pretrained_dir) on COVID-19_Image_Data_Collection's test list.

Equivalent to ``refers test --dataset COVID-19_Image_Data_Collection ...``; the dataset is fixed here, every other flag passes through.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the project, when not pip-installed

from refers.cli.test import main  # noqa: E402

DATASET = "COVID-19_Image_Data_Collection"

if __name__ == "__main__":
    sys.exit(main(["--dataset", DATASET, *sys.argv[1:]]))

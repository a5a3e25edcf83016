"""The datasets this project knows: folder names, class names, list files.

One table, used as the default by every command (``refers synth``, ``refers prepare``, fine-tuning,
testing, results), so that the names below are the only place where a dataset is spelled out.
"""

from __future__ import annotations

from dataclasses import dataclass, field

NIH_CLASSES = (
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
    "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia",
)

VINBIG_CLASSES = (
    "Aortic enlargement", "Atelectasis", "Pneumothorax", "Lung Opacity", "Pleural thickening", "ILD",
    "Pulmonary fibrosis", "Calcification", "Pleural effusion", "Consolidation", "Cardiomegaly",
    "Other lesion", "Nodule/Mass", "Infiltration",
)

# The 14 CheXpert label columns of mimic-cxr-2.0.0-chexpert.csv, in the file's order.
CHEXPERT_CLASSES = (
    "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Enlarged Cardiomediastinum", "Fracture",
    "Lung Lesion", "Lung Opacity", "No Finding", "Pleural Effusion", "Pleural Other", "Pneumonia",
    "Pneumothorax", "Support Devices",
)


@dataclass(frozen=True)
class DatasetSpec:
    """Everything the commands need to know about one dataset.

    Attributes:
        name: folder name under ``Data/`` and ``Results_of_fine-tuning/``.
        processed: folder name under ``DataProcessed/``.
        alias: the short name used by ``refers prepare``.
        classes: output classes of the fine-tuning head, in list-file column order. Binary datasets
            list one class: the positive one, read from the *second* of their two one-hot columns.
        label_columns: how many label columns a list line has.
        list_files: list file name per split (the reader also takes the alternatives in
            :data:`SPLIT_ALIASES`).
    """

    name: str
    processed: str
    alias: str
    classes: tuple[str, ...]
    label_columns: int
    list_files: dict[str, str] = field(default_factory=lambda: {"train": "train.txt", "val": "val.txt", "test": "test.txt"})

    @property
    def binary(self) -> bool:
        return len(self.classes) == 1

    @property
    def num_classes(self) -> int:
        return len(self.classes)


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec("MIMIC-CXR", "MIMIC", "mimic", CHEXPERT_CLASSES, 14),
        # Open-i's Indiana University chest X-rays: reports with images, labels mapped to CheXpert's classes.
        DatasetSpec("IU_X-ray", "IU_X-ray", "iu", CHEXPERT_CLASSES, 14),
        DatasetSpec("NIH_ChestX-ray", "NIH_ChestX-ray", "nih", NIH_CLASSES, 14),
        DatasetSpec("VinBigData_Chest_X-ray", "VinBigData_Chest_X-ray", "vinbig", VINBIG_CLASSES, 14),
        DatasetSpec("Shenzhen_Tuberculosis", "Shenzhen_Tuberculosis", "shenzhen", ("Tuberculosis",), 2),
        DatasetSpec("COVID-19_Image_Data_Collection", "COVID-19_Image_Data_Collection", "covid", ("COVID-19",), 2),
    )
}

FINETUNE_DATASETS = ("NIH_ChestX-ray", "VinBigData_Chest_X-ray", "Shenzhen_Tuberculosis", "COVID-19_Image_Data_Collection")

# Alternative spellings of split files found in the original's published lists.
SPLIT_ALIASES = {"val": ("val.txt", "valid.txt"), "train": ("train.txt",), "test": ("test.txt",)}


def get_dataset(name: str) -> DatasetSpec:
    """Look a dataset up by folder name, ``DataProcessed`` name or short alias (case-insensitive)."""
    wanted = name.strip().lower()
    for spec in DATASETS.values():
        if wanted in (spec.name.lower(), spec.processed.lower(), spec.alias):
            return spec
    known = ", ".join(sorted(DATASETS))
    raise KeyError(f"unknown dataset {name!r}; known: {known}")


def safe_class_filename(class_name: str) -> str:
    """A class name as the published prediction files spell it (``Nodule/Mass`` -> ``Nodule-Mass``)."""
    return class_name.replace("/", "-").replace("\\", "-")

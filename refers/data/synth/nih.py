"""NIH ChestX-ray14 in the layout of the common download::

    NIH_ChestX-ray/
      images_001/images/00000001_000.png ... images_012/images/...   (PATIENT_FOLLOWUP.png)
      Data_Entry_2017.csv          (official header, byte for byte, with its unquoted commas and trailing comma)
      train_val_list.txt           (image names, one per line; split by patient)
      test_list.txt
"""

from __future__ import annotations

import math

from refers.data.synth.findings import sample_patient, sample_view
from refers.data.synth.io import write_png
from refers.data.synth.labels import nih_labels
from refers.data.synth.plan import DatasetPlan, ImageJob, SynthConfig

NAME = "NIH_ChestX-ray"
HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
          "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],")
IMAGES_PER_STUDY = 2.5
TEST_FRACTION = 0.25  # the official test_list.txt holds 25,596 of 112,120 images
FOLDERS = 12


def size_for(studies: int) -> int:
    """Images for ``--studies`` (2.5 per study: >= 1,000 test images at 2,000 studies)."""
    return math.ceil(IMAGES_PER_STUDY * studies)


def build(cfg: SynthConfig) -> DatasetPlan:
    rng = cfg.rng(NAME)
    total = size_for(cfg.studies)
    follow_ups: list[int] = []
    while sum(follow_ups) < total:
        follow_ups.append(min(total - sum(follow_ups), int(rng.geometric(0.4))))
    # Patients go to the test list in a random order until it holds a quarter of the images.
    order = rng.permutation(len(follow_ups))
    test_patients, test_images = set(), 0
    for index in order:
        if test_images >= TEST_FRACTION * total:
            break
        test_patients.add(int(index))
        test_images += follow_ups[index]
    plan = DatasetPlan(NAME)
    rows, train, test = [], [], []
    per_folder = math.ceil(total / FOLDERS)
    for patient_index, n in enumerate(follow_ups):
        prng = cfg.rng(NAME, patient_index)
        base = sample_patient(prng)
        width, height = int(prng.choice([2500, 2048, 2992, 3056])), int(prng.choice([2048, 2500, 2991, 2544]))
        spacing = float(prng.choice([0.143, 0.168, 0.139, 0.171]))
        for follow_up in range(n):
            patient = sample_patient(prng)
            patient.sex, patient.age, patient.body = base.sex, min(base.age + follow_up // 3, 99), base.body
            projection = "AP" if prng.random() < 0.4 else "PA"
            name = f"{patient_index + 1:08d}_{follow_up:03d}.png"
            folder = f"images_{len(plan.images) // per_folder + 1:03d}/images"
            plan.images.append(ImageJob(f"{folder}/{name}", patient, sample_view(prng, projection), write_png))
            labels = "|".join(nih_labels(patient)) or "No Finding"
            rows.append(f"{name},{labels},{follow_up},{patient_index + 1},{patient.age},{patient.sex},{projection},"
                        f"{width},{height},{spacing:g},{spacing:g}")
            (test if patient_index in test_patients else train).append(name)
    plan.texts["Data_Entry_2017.csv"] = HEADER + "\n" + "".join(row + "\n" for row in rows)
    plan.texts["train_val_list.txt"] = "".join(f"{name}\n" for name in train)
    plan.texts["test_list.txt"] = "".join(f"{name}\n" for name in test)
    plan.counts = {"patients": len(follow_ups), "images": total, "train_val": len(train), "test": len(test)}
    return plan

"""Synthetic chest radiographs with free-text reports, in the official layouts of the five datasets.

``refers synth`` (:func:`generate`) writes MIMIC-CXR-JPG (+ reports), NIH ChestX-ray14, Shenzhen,
the COVID-19 Image Data Collection and VinBigData exactly as their downloads look on disk, so every
later step runs on the code paths real data takes. One finding model drives all five datasets.

Image convention: frontal views (PA and AP) are displayed as radiographs are read, facing the
patient: **the patient's left is the image's right**. A lesion with ``side == "L"`` lies at
``x > 0`` in body coordinates and in the right half of the image; reports say "left" for it.
Lateral views show the patient facing image left (anterior left, spine right).

Python API (for tests and benchmarks)::

    import numpy as np
    from refers.data.synth import render_patient, sample_patient

    patient = sample_patient(np.random.default_rng(0), forced={"effusion": "L"})
    image = render_patient(patient, "PA", size=128)       # uint8 [128, 128]
"""

from refers.data.synth.findings import FINDINGS, Lesion, Patient, View, geometry, sample_patient, sample_view
from refers.data.synth.generate import BUILDERS, generate
from refers.data.synth.io import MARKER, NotSyntheticError
from refers.data.synth.render import render_patient, render_views

DATASET_NAMES = tuple(BUILDERS)

__all__ = [
    "BUILDERS", "DATASET_NAMES", "FINDINGS", "Lesion", "MARKER", "NotSyntheticError", "Patient", "View",
    "generate", "geometry", "render_patient", "render_views", "sample_patient", "sample_view",
]

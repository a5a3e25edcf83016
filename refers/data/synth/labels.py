"""Each dataset's label vocabulary as a function of the shared latent findings, and box extents.

NIH and VinBigData labels come from the findings themselves; MIMIC's CheXpert labels come from
what the report says (see :mod:`refers.data.synth.reports`), as the real CheXpert labeler does.
"""

from __future__ import annotations

from refers.data.registry import NIH_CLASSES, VINBIG_CLASSES
from refers.data.synth.findings import Lesion, Patient, geometry

NIH_MAP: dict[str, str] = {
    "atelectasis": "Atelectasis", "cardiomegaly": "Cardiomegaly", "effusion": "Effusion",
    "infiltration": "Infiltration", "mass": "Mass", "nodule": "Nodule", "pneumonia": "Pneumonia",
    "pneumothorax": "Pneumothorax", "consolidation": "Consolidation", "edema": "Edema",
    "emphysema": "Emphysema", "fibrosis": "Fibrosis", "pleural_thickening": "Pleural_Thickening", "hernia": "Hernia",
}
VINBIG_MAP: dict[str, tuple[str, ...]] = {
    "aortic_enlargement": ("Aortic enlargement",), "atelectasis": ("Atelectasis",), "pneumothorax": ("Pneumothorax",),
    "pneumonia": ("Lung Opacity",), "edema": ("Lung Opacity",), "tuberculosis": ("Lung Opacity", "Pulmonary fibrosis"),
    "pleural_thickening": ("Pleural thickening",), "ild": ("ILD",), "fibrosis": ("Pulmonary fibrosis",),
    "calcification": ("Calcification",), "effusion": ("Pleural effusion",), "consolidation": ("Consolidation",),
    "cardiomegaly": ("Cardiomegaly",), "other_lesion": ("Other lesion",), "fracture": ("Other lesion",),
    "hernia": ("Other lesion",), "nodule": ("Nodule/Mass",), "mass": ("Nodule/Mass",),
    "infiltration": ("Infiltration", "Lung Opacity"),
}
assert set(NIH_MAP.values()) == set(NIH_CLASSES)
assert {name for names in VINBIG_MAP.values() for name in names} == set(VINBIG_CLASSES)


def nih_labels(patient: Patient) -> list[str]:
    """NIH ``Finding Labels`` entries of a patient, sorted (joined with ``|`` or ``No Finding``)."""
    return sorted({NIH_MAP[k] for k in patient.lesions if k in NIH_MAP})


def vinbig_findings(patient: Patient) -> list[tuple[str, Lesion]]:
    """(VinBigData class name, lesion) pairs a radiologist could box on this patient."""
    return [(name, lesion) for kind, lesion in patient.lesions.items() for name in VINBIG_MAP.get(kind, ())]


Box = tuple[float, float, float, float]


def body_boxes(patient: Patient, lesion: Lesion) -> list[Box]:
    """Where a finding lies on a frontal view, as body-frame boxes ``(x0, y0, x1, y1)``.

    Bilateral findings give one box per side, as VinBigData's radiologists draw them.
    """
    g = geometry(patient)
    signs = (-1, 1) if lesion.side == "B" else ((1,) if lesion.side == "L" else (-1,))
    kind, r = lesion.kind, max(lesion.size, 0.03)
    if kind == "cardiomegaly":
        return [(g.hx - g.hw, g.hy - 0.22, g.hx + g.hw, g.hy + 0.22)]
    if kind == "aortic_enlargement":
        rad = 0.08 + 0.035 * lesion.severity
        return [(0.1 - 0.5 * rad, -0.40 - 1.1 * rad, 0.1 + 1.5 * rad, -0.40 + 1.1 * rad)]
    if kind == "hernia":
        return [(-0.12, g.hy - 0.07, 0.16, g.hy + 0.17)]
    if kind in ("edema", "ild", "fibrosis"):
        return [(s * g.cx - g.ax, g.top + 0.2, s * g.cx + g.ax, g.yd(s)) for s in (-1, 1)]
    boxes = []
    for s in signs:
        x, y = s * abs(lesion.x), lesion.y
        if kind == "effusion":
            level = g.yd(s) - 0.10 - 0.4 * lesion.severity
            boxes.append((s * g.cx - 0.8 * g.ax, level, s * g.cx + 0.95 * g.ax, g.yd(s) + 0.02))
        elif kind == "pneumothorax":
            boxes.append((s * g.cx - 0.9 * g.ax, g.top, s * g.cx + g.ax, g.cy + 0.1))
        elif kind == "pleural_thickening":
            inner = s * (g.cx + 0.6 * g.ax)
            boxes.append((min(inner, s * (g.cx + g.ax)), g.top, max(inner, s * (g.cx + g.ax)), g.cy + 0.2))
        elif kind == "atelectasis":
            boxes.append((x - 0.85 * g.ax, y - 0.08, x + 0.85 * g.ax, y + 0.1))
        elif kind == "calcification":
            boxes.append((x - 0.15, y - 0.15, x + 0.15, y + 0.15))
        elif kind == "tuberculosis":
            boxes.append((x - 1.2 * r, y - 0.9 * r, x + 1.2 * r, y + 0.9 * r))
        elif kind == "fracture":
            boxes.append((x - 0.05, y - 0.06, x + 0.07, y + 0.06))
        elif kind in ("consolidation", "pneumonia", "infiltration", "bacterial"):
            stretch = 1.6 if kind == "infiltration" else 1.25
            boxes.append((x - 1.5 * stretch * r, y - 1.5 * r, x + 1.5 * stretch * r, y + 1.5 * r))
        else:  # nodule, mass, other lesion
            boxes.append((x - r, y - r, x + r, y + r))
    return boxes

"""The finding model shared by every synthetic dataset: patients, their anatomy and their findings.

One model drives all five datasets, so that what a model learns from the MIMIC-like reports
transfers to the NIH-, VinBigData-, Shenzhen- and COVID-like images. Each dataset only maps the
same latent findings onto its own label vocabulary (:mod:`refers.data.synth.labels`).

Coordinates ("body frame", shared by all views of a patient): ``x`` runs from -1 (image left) to
+1 (image right) on a frontal view, which is the **patient's right at image left** (radiological
convention, PA and AP alike), so a finding on the patient's *left* side (``side == "L"``) has
``x > 0``. ``y`` runs from -1 (top, head) to +1 (bottom). ``z`` runs from -1 (anterior) to +1
(posterior); the lateral view shows ``(z, y)`` with the patient facing image left.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

# Latent findings. The first group is common (15-25 %, independent) and carries most of the
# learnable signal; the rest are rarer, so that every label of every dataset occurs.
MAJOR_PREVALENCE: dict[str, float] = {
    "cardiomegaly": 0.20,
    "effusion": 0.20,
    "pneumothorax": 0.15,
    "consolidation": 0.18,
    "nodule": 0.18,
    "atelectasis": 0.18,
    "edema": 0.15,
}
MINOR_PREVALENCE: dict[str, float] = {
    "mass": 0.06,
    "infiltration": 0.08,
    "pneumonia": 0.06,
    "emphysema": 0.05,
    "fibrosis": 0.04,
    "pleural_thickening": 0.05,
    "hernia": 0.03,
    "aortic_enlargement": 0.08,
    "enlarged_cardiomediastinum": 0.05,
    "calcification": 0.05,
    "ild": 0.04,
    "fracture": 0.04,
    "other_lesion": 0.04,
    "support_devices": 0.10,
    "tuberculosis": 0.02,
}
# Patterns only the COVID-19 collection uses (its ``finding`` column decides which).
COVID_PATTERNS = ("covid", "viral", "bacterial", "fungal")
FINDINGS = tuple(MAJOR_PREVALENCE) + tuple(MINOR_PREVALENCE) + COVID_PATTERNS

# Findings whose side matters ("B" = both); the others are midline or diffuse.
SIDED = {
    "effusion", "pneumothorax", "consolidation", "nodule", "atelectasis", "mass", "infiltration", "pneumonia",
    "pleural_thickening", "calcification", "fracture", "other_lesion", "tuberculosis", "bacterial",
}


@dataclass
class Lesion:
    """One finding of one patient, in body-frame coordinates (see the module docstring).

    Attributes:
        kind: a name from :data:`FINDINGS`.
        side: "R" or "L" (the patient's side), "B" for both, "" for midline/diffuse findings.
        severity: 0.35-1, how large or dense it is; subtle ones are sometimes reported as uncertain.
        x, y, z: centre (frontal x/y, lateral z/y).
        size: radius in body units (nodules, masses, blobs).
        seed: drives the finding's own irregular shape (patchy opacities, lesion positions).
    """

    kind: str
    side: str = ""
    severity: float = 1.0
    x: float = 0.0
    y: float = 0.0
    z: float = 0.0
    size: float = 0.0
    seed: int = 0


@dataclass
class Patient:
    """A simulated patient: demographics, anatomy and findings (shared by all of its views)."""

    sex: str
    age: int
    body: float          # thorax width factor (0.88-1.08)
    inspiration: float   # diaphragm position factor (deeper breath = lower diaphragm)
    ctr: float           # cardiothoracic ratio (normal ~0.42 +- 0.035, cardiomegaly 0.50-0.63)
    lesions: dict[str, Lesion] = field(default_factory=dict)

    def has(self, kind: str) -> bool:
        return kind in self.lesions


@dataclass(frozen=True)
class Geometry:
    """Frontal anatomy of a patient in body units (derived from :class:`Patient`, never stored)."""

    bw: float         # thorax half-width
    ax: float         # lung half-width
    cx: float         # |x| of the lung centres
    top: float        # lung apex y
    yd_r: float       # right (image-left) hemidiaphragm y
    yd_l: float       # left (image-right) hemidiaphragm y
    hw: float         # heart half-width
    hx: float         # heart centre x (to the patient's left)
    hy: float         # heart centre y

    def yd(self, sign: int) -> float:
        return self.yd_l if sign > 0 else self.yd_r

    def lung_edges(self, t):
        """Medial and lateral ``|x|`` of a lung at relative height ``t`` (0 apex, 1 diaphragm).

        The lung is narrow and rounded at the apex and widest at the base (``sqrt`` profile).
        Works on floats and on numpy arrays alike.
        """
        t = np.clip(t, 0.0, 1.0)
        inner = 0.11 + 0.02 * t
        outer = inner + (0.92 * self.bw - inner) * (0.2 + 0.8 * np.sqrt(t))
        return inner, outer

    @property
    def cy(self) -> float:
        return 0.5 * (self.top + 0.5 * (self.yd_r + self.yd_l))

    @property
    def ay(self) -> float:
        return 0.5 * (0.5 * (self.yd_r + self.yd_l) - self.top) * 1.08


def geometry(patient: Patient) -> Geometry:
    """The frontal anatomy of ``patient`` (lungs, diaphragm, heart) in body units."""
    bw = 0.80 * patient.body
    ax = (0.92 * bw - 0.09) / 2
    flatten = 0.06 if patient.has("emphysema") else 0.0
    yd = 0.40 + 0.08 * (patient.inspiration - 1.0) / 0.1 + flatten
    yd_r, yd_l = yd - 0.05, yd
    if patient.has("atelectasis"):  # volume loss raises the hemidiaphragm on the affected side
        lesion = patient.lesions["atelectasis"]
        lift = 0.04 + 0.06 * lesion.severity
        if lesion.side == "L":
            yd_l -= lift
        else:
            yd_r -= lift
    hw = patient.ctr * 0.92 * bw
    return Geometry(bw=bw, ax=ax, cx=0.09 + ax, top=-0.80, yd_r=yd_r, yd_l=yd_l, hw=hw, hx=0.3 * hw, hy=yd - 0.2)


def _side(rng: np.random.Generator, both: float = 0.15) -> str:
    draw = rng.random()
    return "B" if draw < both else ("R" if draw < (1 + both) / 2 else "L")


def _in_lung(rng: np.random.Generator, geo: Geometry, sign: int, zone: str) -> tuple[float, float]:
    """A point well inside one lung, in the upper, middle or lower zone."""
    lo, hi = {"upper": (0.15, 0.38), "middle": (0.40, 0.62), "lower": (0.62, 0.80), "any": (0.15, 0.80)}[zone]
    t = rng.uniform(lo, hi)
    y = geo.top + (geo.yd(sign) - geo.top) * t
    inner, outer = geo.lung_edges(t)
    if sign > 0 and y > geo.hy - 0.2:  # keep left-lower lesions lateral to the heart border
        inner = max(inner, geo.hx + geo.hw - 0.02)
    x = sign * (inner + (outer - inner) * rng.uniform(0.25, 0.75))
    return float(x), float(y)


def place_lesion(rng: np.random.Generator, patient: Patient, kind: str, side: str | None = None) -> Lesion:
    """Sample where and how large a finding is for this patient."""
    geo = geometry(patient)
    severity = float(rng.uniform(0.35, 1.0))
    if side is None:
        side = _side(rng, both=0.5 if kind in ("effusion", "tuberculosis") else 0.12) if kind in SIDED else ""
    if kind in ("pneumothorax", "fracture", "nodule", "mass", "other_lesion", "bacterial") and side == "B":
        side = "R" if rng.random() < 0.5 else "L"
    sign = 1 if side == "L" else -1
    lesion = Lesion(kind, side, severity, seed=int(rng.integers(2**31)), z=float(rng.uniform(-0.5, 0.6)))
    if kind in ("nodule", "mass", "calcification", "other_lesion"):
        lesion.x, lesion.y = _in_lung(rng, geo, sign, "any")
        lesion.size = {"nodule": 0.065 + 0.045 * severity, "mass": 0.13 + 0.07 * severity,
                       "calcification": 0.02, "other_lesion": 0.06 + 0.03 * severity}[kind]
    elif kind in ("consolidation", "pneumonia", "bacterial", "infiltration"):
        zone = "lower" if rng.random() < 0.6 else "middle"
        lesion.x, lesion.y = _in_lung(rng, geo, sign, zone)
        lesion.size = 0.10 + 0.08 * severity
    elif kind == "tuberculosis":
        lesion.x, lesion.y = _in_lung(rng, geo, sign, "upper")
        lesion.size = 0.10 + 0.06 * severity
    elif kind == "atelectasis":
        lesion.x, lesion.y = sign * geo.cx, geo.yd(sign) - 0.12 - 0.05 * rng.random()
    elif kind == "fracture":
        lesion.x = sign * (geo.cx + 0.75 * geo.ax)
        lesion.y = geo.top + (geo.yd(sign) - geo.top) * rng.uniform(0.3, 0.7)
    else:
        lesion.x, lesion.y = 0.0, geo.hy
    return lesion


def sample_patient(rng: np.random.Generator, prevalence_scale: float = 1.0,
                   forced: dict[str, str | None] | None = None, exclude: tuple[str, ...] = ()) -> Patient:
    """Draw a patient with independent findings.

    Args:
        rng: the random source (one per patient keeps the output independent of batching).
        prevalence_scale: multiplies every prevalence (Shenzhen and COVID use fewer incidental findings).
        forced: findings to add whatever the draw, with their side (None = random).
        exclude: findings never drawn.
    """
    sex = "M" if rng.random() < 0.55 else "F"
    age = int(np.clip(rng.normal(58, 17), 18, 95))
    patient = Patient(sex=sex, age=age, body=float(rng.uniform(0.88, 1.08)),
                      inspiration=float(rng.uniform(0.9, 1.1)), ctr=float(np.clip(rng.normal(0.42, 0.035), 0.33, 0.49)))
    drawn = [k for k, p in {**MAJOR_PREVALENCE, **MINOR_PREVALENCE}.items()
             if rng.random() < p * prevalence_scale and k not in exclude]
    wanted: dict[str, str | None] = {k: None for k in drawn}
    wanted.update(forced or {})
    if "cardiomegaly" in wanted:
        patient.ctr = float(rng.uniform(0.50, 0.63))
    for kind in ("emphysema", "atelectasis"):  # these change the geometry others are placed in
        if kind in wanted:
            patient.lesions[kind] = place_lesion(rng, patient, kind, wanted[kind])
    for kind, side in wanted.items():
        if kind not in patient.lesions:
            patient.lesions[kind] = place_lesion(rng, patient, kind, side)
    if "cardiomegaly" in patient.lesions:
        patient.lesions["cardiomegaly"].severity = (patient.ctr - 0.46) / 0.17
    return patient


@dataclass
class View:
    """One radiograph of a patient: projection and nuisance (position, exposure, noise, devices)."""

    projection: str      # "PA", "AP" or "LATERAL"
    shift_x: float = 0.0
    shift_y: float = 0.0
    scale: float = 1.0
    rotation: float = 0.0  # radians
    gain: float = 1.0
    gamma: float = 1.0
    offset: float = 0.0
    noise: float = 0.02
    leads: bool = False    # ECG leads/buttons (not a support device label)
    marker: bool = True    # the radiographer's side marker
    seed: int = 0


def sample_view(rng: np.random.Generator, projection: str) -> View:
    """Nuisance of one exposure; AP (portable) films are noisier, more rotated and carry more leads."""
    portable = projection == "AP"
    if projection == "CT":  # an axial slice: centred, no film markers or leads
        return View(projection, scale=float(rng.uniform(0.95, 1.05)), noise=float(rng.uniform(0.01, 0.03)),
                    marker=False, seed=int(rng.integers(2**31)))
    return View(
        projection=projection,
        shift_x=float(rng.normal(0, 0.035)), shift_y=float(rng.normal(0.0, 0.04)),
        scale=float(rng.uniform(0.9, 1.05) * (1.04 if portable else 1.0)),
        rotation=float(rng.normal(0, 0.06 if portable else 0.035)),
        gain=float(rng.uniform(0.8, 1.15)), gamma=float(rng.uniform(0.8, 1.25)), offset=float(rng.uniform(-0.06, 0.05)),
        noise=float(rng.uniform(0.012, 0.04 if portable else 0.03)),
        leads=bool(rng.random() < (0.6 if portable else 0.15)), marker=bool(rng.random() < 0.8),
        seed=int(rng.integers(2**31)),
    )


def to_image(view: View, x: np.ndarray, y: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Body-frame points -> pixel coordinates of ``view`` (column, row), for bounding boxes."""
    c, s = math.cos(view.rotation), math.sin(view.rotation)
    u = view.shift_x + view.scale * (c * x - s * y)
    v = view.shift_y + view.scale * (s * x + c * y)
    return (u + 1) * size / 2, (v + 1) * size / 2

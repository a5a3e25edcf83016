"""Free-text reports in the style of MIMIC-CXR, and the CheXpert labels their wording implies.

Each sentence records which CheXpert classes it mentions and how (1 positive, 0 negated, -1
uncertain); the study's label row then follows the CheXpert labeler's rule (positive beats
uncertain beats negative; unmentioned stays blank). Sides are the *patient's* sides: a "left"
effusion lies at the image's right on a frontal view (see :mod:`refers.data.synth.findings`).
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from typing import Callable

import numpy as np

from refers.data.registry import CHEXPERT_CLASSES
from refers.data.synth.findings import Lesion, Patient, geometry

Sentence = tuple[str, dict[str, float]]

SIDE = {"R": "right", "L": "left", "B": "bilateral"}
INDICATIONS = (
    "___M with cough and fever  // eval for pneumonia", "___F with shortness of breath  // ?CHF",
    "History: ___M with chest pain", "___F s/p line placement  // line position", "___M with hypoxia  // eval",
    "___F with dyspnea and leg swelling  // effusion?", "Pre-operative evaluation.", "___M with fall  // rib fracture?",
    "___F with chronic cough  // mass?", "Follow-up of known pulmonary findings.",
)


def _adj(severity: float, words=("mild", "moderate", "severe")) -> str:
    return words[0] if severity < 0.55 else (words[1] if severity < 0.8 else words[2])


def _size(severity: float) -> str:
    return _adj(severity, ("small", "moderate", "large"))


def _zone(patient: Patient, lesion: Lesion) -> str:
    g = geometry(patient)
    frac = (lesion.y - g.top) / (g.yd(1 if lesion.side == "L" else -1) - g.top)
    return "upper" if frac < 0.4 else ("mid" if frac < 0.62 else "lower")


def _where(patient: Patient, lesion: Lesion) -> str:
    zone = _zone(patient, lesion)
    return f"both {zone} lungs" if lesion.side == "B" else f"the {SIDE[lesion.side]} {zone} lung"


@dataclass(frozen=True)
class _Wording:
    """What the sentences about one present finding are made of."""

    sev: float  # severity in [0, 1]
    side: str  # "right" / "left" / "bilateral", or "" for a finding without a side
    where: str  # "the left lower lung", "both mid lungs", or ""
    zone: str  # "upper" / "mid" / "lower", or ""
    mm: int  # the lesion's size in mm
    bilateral: bool
    seed: int  # the lesion's own seed (the renderer's too)


def _wording(patient: Patient, lesion: Lesion) -> _Wording:
    where, zone = (_where(patient, lesion), _zone(patient, lesion)) if lesion.side else ("", "")
    mm = int(round(lesion.size * 2 * 120))  # one body unit ~ 12 cm
    return _Wording(lesion.severity, SIDE.get(lesion.side, ""), where, zone, mm, lesion.side == "B", lesion.seed)


# Each present finding: (its sentences, one drawn at random; the hedged sentence of a subtle one, or None).
Wordings = tuple[list[Sentence], Sentence | None]


def _cardiomegaly(w: _Wording) -> Wordings:
    return ([(f"{_adj(w.sev).capitalize()} cardiomegaly.", {"Cardiomegaly": 1}),
             (f"The heart is {_adj(w.sev)}ly enlarged.", {"Cardiomegaly": 1}),
             ("The cardiac silhouette is enlarged.", {"Cardiomegaly": 1})],
            ("The heart size is borderline enlarged.", {"Cardiomegaly": -1}))


def _effusion(w: _Wording) -> Wordings:
    side, size, plural = w.side, _size(w.sev), "s" if w.bilateral else ""
    return ([(f"{size.capitalize()} {side} pleural effusion{plural}.", {"Pleural Effusion": 1}),
             (f"There {'are' if plural else 'is'} a {size} {side} pleural effusion{plural}.", {"Pleural Effusion": 1}),
             (f"Blunting of the {side} costophrenic angle{plural} consistent with {size} effusion{plural}.",
              {"Pleural Effusion": 1})],
            (f"Possible small {side} pleural effusion.", {"Pleural Effusion": -1}))


def _pneumothorax(w: _Wording) -> Wordings:
    return ([(f"{_size(w.sev).capitalize()} {w.side} apical pneumothorax.", {"Pneumothorax": 1}),
             (f"There is a {_size(w.sev)} {w.side} pneumothorax.", {"Pneumothorax": 1}),
             (f"A {w.side} pleural line is seen with absent lung markings peripherally, consistent with pneumothorax.",
              {"Pneumothorax": 1})],
            (f"A tiny {w.side} apical pneumothorax cannot be excluded.", {"Pneumothorax": -1}))


def _consolidation(w: _Wording) -> Wordings:
    return ([(f"Focal consolidation in {w.where}.", {"Consolidation": 1}),
             (f"Dense opacity in {w.where}, consistent with consolidation.", {"Consolidation": 1, "Lung Opacity": 1}),
             (f"{w.side.capitalize()} {w.zone} lobe consolidation.", {"Consolidation": 1})],
            (f"Subtle opacity in {w.where} could reflect atelectasis, though early consolidation cannot be excluded.",
             {"Atelectasis": -1, "Consolidation": -1, "Lung Opacity": 1}))


def _pneumonia(w: _Wording) -> Wordings:
    return ([(f"Patchy opacity in {w.where}, concerning for pneumonia.", {"Pneumonia": 1, "Lung Opacity": 1}),
             (f"{w.side.capitalize()} {w.zone} lobe pneumonia.", {"Pneumonia": 1})],
            (f"Ill-defined opacity in {w.where}; infection is possible.", {"Pneumonia": -1, "Lung Opacity": 1}))


def _nodule(w: _Wording) -> Wordings:
    return ([(f"A {w.mm} mm nodule projects over {w.where}.", {"Lung Lesion": 1}),
             (f"{w.side.capitalize()} {w.zone} pulmonary nodule measuring {w.mm} mm.", {"Lung Lesion": 1})],
            (f"Questionable nodular opacity in {w.where}.", {"Lung Lesion": -1}))


def _mass(w: _Wording) -> Wordings:
    return ([(f"{w.side.capitalize()} {w.zone} lung mass measuring {w.mm / 10:.1f} cm.", {"Lung Lesion": 1}),
             (f"Large lobulated mass in {w.where}, concerning for malignancy.", {"Lung Lesion": 1})], None)


def _atelectasis(w: _Wording) -> Wordings:
    return ([(f"{w.side.capitalize()} basilar atelectasis.", {"Atelectasis": 1}),
             (f"Plate-like atelectasis at the {w.side} lung base.", {"Atelectasis": 1}),
             (f"Linear opacity at the {w.side} base with elevation of the {w.side} hemidiaphragm, likely atelectasis.",
              {"Atelectasis": 1, "Lung Opacity": 1})], None)


def _edema(w: _Wording) -> Wordings:
    return ([(f"{_adj(w.sev).capitalize()} pulmonary edema.", {"Edema": 1}),
             (f"Perihilar haziness and vascular congestion consistent with {_adj(w.sev)} pulmonary edema.", {"Edema": 1}),
             ("Interstitial edema with Kerley B lines at the bases.", {"Edema": 1})],
            ("Possible mild pulmonary vascular congestion.", {"Edema": -1}))


def _tuberculosis(w: _Wording) -> Wordings:
    cavity = w.seed % 2 == 1  # the renderer draws a cavity for odd seeds
    return ([(f"Nodular opacities in {w.where}" + (" with cavitation" if cavity else "") + ", concerning for tuberculosis.",
              {"Lung Opacity": 1, **({"Lung Lesion": 1} if cavity else {})}),
             (f"{w.side.capitalize()} upper lobe fibronodular opacities, compatible with tuberculosis.", {"Lung Opacity": 1})],
            None)


def _sided(w: _Wording) -> dict[str, list[Sentence]]:
    """The sentences of the findings that need no more than the side and the place (none hedged)."""
    return {
        "infiltration": [(f"Hazy ill-defined opacities in {w.where}.", {"Lung Opacity": 1}),
                         (f"Patchy infiltrates in {w.where}.", {"Lung Opacity": 1})],
        "pleural_thickening": [(f"{w.side.capitalize()} apical and lateral pleural thickening.", {"Pleural Other": 1})],
        "calcification": [(f"Calcified granulomas in {w.where}.", {}), (f"Punctate calcifications project over {w.where}.", {})],
        "other_lesion": [(f"Ill-defined density in {w.where}; a lesion is not excluded, recommend CT.", {"Lung Lesion": -1}),
                         (f"Focal nodular density in {w.where}.", {"Lung Lesion": 1})],
        "fracture": [(f"Healing fracture of a {w.side} lateral rib.", {"Fracture": 1}),
                     (f"Old {w.side} rib fracture with callus formation.", {"Fracture": 1})],
    }


SIDED = ("infiltration", "pleural_thickening", "calcification", "other_lesion", "fracture")


# The findings whose sentences are fixed text.
FIXED: dict[str, list[Sentence]] = {
    "emphysema": [("The lungs are hyperinflated with flattened hemidiaphragms, consistent with emphysema.", {}),
                  ("Hyperlucent, hyperexpanded lungs compatible with COPD.", {})],
    "fibrosis": [("Coarse reticular opacities at the lung bases, compatible with pulmonary fibrosis.", {"Lung Opacity": 1})],
    "ild": [("Diffuse reticular interstitial abnormality, compatible with interstitial lung disease.", {"Lung Opacity": 1})],
    "hernia": [("Retrocardiac air-fluid level consistent with a hiatal hernia.", {}), ("Moderate hiatal hernia.", {})],
    "aortic_enlargement": [("The aortic knob is enlarged.", {}), ("The thoracic aorta is tortuous and dilated.", {})],
    "enlarged_cardiomediastinum": [("The mediastinum is widened.", {"Enlarged Cardiomediastinum": 1}),
                                   ("The cardiomediastinal silhouette is enlarged.", {"Enlarged Cardiomediastinum": 1})],
}

WORDINGS: dict[str, Callable[[_Wording], Wordings]] = {
    "cardiomegaly": _cardiomegaly, "effusion": _effusion, "pneumothorax": _pneumothorax,
    "consolidation": _consolidation, "pneumonia": _pneumonia, "nodule": _nodule, "mass": _mass,
    "atelectasis": _atelectasis, "edema": _edema, "tuberculosis": _tuberculosis,
}


def _support_devices(seed: int) -> Sentence:
    """The devices the lesion's seed bits choose, in one sentence group."""
    parts = []
    if seed & 1 or not seed & 7:
        parts.append("Endotracheal tube terminates approximately 4 cm above the carina.")
    if seed & 2:
        parts.append("Right internal jugular central venous catheter tip in the mid SVC.")
    if seed & 4:
        parts.append("Left-sided pacemaker with its lead in the right ventricle.")
    return " ".join(parts), {"Support Devices": 1}


def _positive(patient: Patient, lesion: Lesion, rng: np.random.Generator) -> Sentence | None:
    """One sentence stating a present finding, or None for findings reports do not mention."""
    wording = _wording(patient, lesion)
    uncertain = lesion.severity < 0.5 and rng.random() < 0.45  # subtle findings are often hedged
    kind = lesion.kind
    if kind == "support_devices":
        return _support_devices(lesion.seed)
    if kind in WORDINGS:
        choices, hedged = WORDINGS[kind](wording)
    elif kind in SIDED:
        choices, hedged = _sided(wording)[kind], None
    elif kind in FIXED:
        choices, hedged = FIXED[kind], None
    else:
        return None
    if uncertain and hedged is not None:
        return hedged
    return choices[int(rng.integers(len(choices)))]


# Negations of absent findings: (finding, sentence, CheXpert mentions). Some negate several at once.
NEGATIONS: tuple[tuple[tuple[str, ...], str, dict[str, float]], ...] = (
    (("consolidation", "effusion", "pneumothorax"), "There is no focal consolidation, pleural effusion or pneumothorax.",
     {"Consolidation": 0, "Pleural Effusion": 0, "Pneumothorax": 0}),
    (("effusion", "pneumothorax"), "No pleural effusion or pneumothorax.", {"Pleural Effusion": 0, "Pneumothorax": 0}),
    (("effusion",), "No pleural effusion.", {"Pleural Effusion": 0}),
    (("pneumothorax",), "There is no pneumothorax.", {"Pneumothorax": 0}),
    (("consolidation",), "No focal consolidation is seen.", {"Consolidation": 0}),
    (("cardiomegaly", "enlarged_cardiomediastinum"), "The cardiomediastinal silhouette is normal.",
     {"Cardiomegaly": 0, "Enlarged Cardiomediastinum": 0}),
    (("cardiomegaly",), "Heart size is normal.", {"Cardiomegaly": 0}),
    (("edema",), "No pulmonary edema.", {"Edema": 0}),
    (("edema",), "There is no pulmonary vascular congestion.", {"Edema": 0}),
    (("nodule", "mass"), "No suspicious pulmonary nodules or masses.", {"Lung Lesion": 0}),
    (("pneumonia",), "No evidence of pneumonia.", {"Pneumonia": 0}),
    (("atelectasis",), "No atelectasis.", {"Atelectasis": 0}),
    (("fracture",), "No acute osseous abnormality.", {"Fracture": 0}),
)
ORDER = ("support_devices", "consolidation", "pneumonia", "infiltration", "tuberculosis", "nodule", "mass",
         "other_lesion", "calcification", "atelectasis", "edema", "ild", "fibrosis", "emphysema", "effusion",
         "pneumothorax", "pleural_thickening", "cardiomegaly", "enlarged_cardiomediastinum", "aortic_enlargement",
         "hernia", "fracture")


def _findings_sentences(patient: Patient, rng: np.random.Generator) -> tuple[list[Sentence], list[Sentence]]:
    """(findings section sentences, positive sentences reused in the impression)."""
    positives = [s for k in ORDER if k in patient.lesions and (s := _positive(patient, patient.lesions[k], rng))]
    negatives: list[Sentence] = []
    covered: set[str] = set()
    for kinds, text, mentions in NEGATIONS:
        if any(k in patient.lesions or k in covered for k in kinds) or rng.random() < 0.45:
            continue
        negatives.append((text, mentions))
        covered.update(kinds)
    if rng.random() < 0.04 and "pneumonia" not in patient.lesions and "pneumonia" not in covered:
        negatives.append(("Early pneumonia cannot be excluded.", {"Pneumonia": -1}))
    lung_kinds = {"consolidation", "pneumonia", "infiltration", "tuberculosis", "nodule", "mass", "edema", "ild",
                  "fibrosis", "atelectasis", "other_lesion"}
    if not lung_kinds & set(patient.lesions) and rng.random() < 0.6:
        negatives.insert(0, (("The lungs are clear.", "Lungs are well expanded and clear.")[int(rng.integers(2))], {}))
    order = rng.permutation(len(negatives))
    return positives + [negatives[i] for i in order], [p for p in positives if p[1]]


def chexpert_row(mentions: list[dict[str, float]]) -> dict[str, float | None]:
    """CheXpert labels of a report: 1 if any positive mention, else -1 if any uncertain, else 0, else blank."""
    row: dict[str, float | None] = {name: None for name in CHEXPERT_CLASSES}
    for name in CHEXPERT_CLASSES:
        values = [m[name] for m in mentions if name in m]
        if values:
            row[name] = 1.0 if 1 in values else (-1.0 if -1 in values else 0.0)
    pathology = [v for n, v in row.items() if n not in ("No Finding", "Support Devices") and v in (1.0, -1.0)]
    row["No Finding"] = None if pathology else 1.0
    return row


def _wrap(text: str) -> list[str]:
    return [" " + line for line in textwrap.wrap(text, 76)] or [" "]


def mimic_report(patient: Patient, projections: list[str], rng: np.random.Generator) -> tuple[str, dict[str, float | None]]:
    """A MIMIC-CXR style free-text report and its CheXpert label row.

    Args:
        patient: the simulated patient (findings and sides).
        projections: the views of the study ("PA", "AP", "LATERAL").
        rng: random source for wording and section choices.
    """
    findings, positives = _findings_sentences(patient, rng)
    portable = "AP" in projections
    exam = "CHEST (PORTABLE AP)" if portable else ("CHEST (PA AND LAT)" if "LATERAL" in projections else "CHEST (PA)")
    technique = "Portable AP chest radiograph." if portable else (
        "Chest PA and lateral" if "LATERAL" in projections else "Chest PA")
    if positives:
        impression_parts = [p[0] for p in positives]
        if len(impression_parts) > 1 and rng.random() < 0.4:
            impression = " ".join(f"{i}. {text}" for i, text in enumerate(impression_parts, 1))
        else:
            impression = " ".join(impression_parts)
    else:
        impression = ("No acute cardiopulmonary process.", "No acute intrathoracic process.",
                      "Normal chest radiograph.")[int(rng.integers(3))]
    layout = rng.random()  # ~10 % lack FINDINGS, ~10 % lack IMPRESSION, as in the real reports
    lines = ["                                 FINAL REPORT"]
    if rng.random() < 0.85:
        lines += [f" EXAMINATION:  {exam}", " "]
        lines += [f" INDICATION:  {INDICATIONS[int(rng.integers(len(INDICATIONS)))]}", " "]
    else:
        lines += [" PA AND LATERAL CHEST RADIOGRAPH" if not portable else " PORTABLE CHEST RADIOGRAPH", " ",
                  f" HISTORY:  {INDICATIONS[int(rng.integers(len(INDICATIONS)))]}", " "]
    lines += [f" TECHNIQUE:  {technique}", " ", f" COMPARISON:  {'None.' if rng.random() < 0.5 else '___'}", " "]
    mentions: list[dict[str, float]] = []
    if layout >= 0.1:
        lines += [" FINDINGS: ", " "] + _wrap(" ".join(s[0] for s in findings)) + [" "]
        mentions += [s[1] for s in findings]
    if layout < 0.1 or layout >= 0.2:
        lines += [" IMPRESSION: ", " "] + _wrap(impression)
        mentions += [p[1] for p in positives]
    return "\n".join(lines) + "\n", chexpert_row(mentions)


def shenzhen_reading(patient: Patient) -> str:
    """A Shenzhen ``ClinicalReadings`` text: sex and age, then the reading."""
    lesion = patient.lesions.get("tuberculosis")
    sex = "male" if patient.sex == "M" else "female"
    if lesion is None:
        reading = "normal"
    else:
        side = {"R": "right", "L": "left", "B": "bilateral"}[lesion.side]
        reading = f"{side} PTB" if lesion.side == "B" or lesion.seed % 3 else f"{side} upper ATB"
        if "effusion" in patient.lesions:
            reading += ", pleural effusion"
    return f"{sex} {patient.age}yrs\n{reading}\n"

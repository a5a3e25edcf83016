"""Free-text reports in the style of MIMIC-CXR, and the CheXpert labels their wording implies.

Each sentence records which CheXpert classes it mentions and how (1 positive, 0 negated, -1
uncertain); the study's label row then follows the CheXpert labeler's rule (positive beats
uncertain beats negative; unmentioned stays blank). Sides are the *patient's* sides: a "left"
effusion lies at the image's right on a frontal view (see :mod:`refers.data.synth.findings`).
"""

from __future__ import annotations

import textwrap

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


def _positive(patient: Patient, lesion: Lesion, rng: np.random.Generator) -> Sentence | None:
    """One sentence stating a present finding, or None for findings reports do not mention."""
    k, sev, side = lesion.kind, lesion.severity, SIDE.get(lesion.side, "")
    where, zone = (_where(patient, lesion), _zone(patient, lesion)) if lesion.side else ("", "")
    mm = int(round(lesion.size * 2 * 120))  # one body unit ~ 12 cm
    uncertain = sev < 0.5 and rng.random() < 0.45  # subtle findings are often hedged
    choices: list[Sentence]
    if k == "cardiomegaly":
        if uncertain:
            return "The heart size is borderline enlarged.", {"Cardiomegaly": -1}
        choices = [(f"{_adj(sev).capitalize()} cardiomegaly.", {"Cardiomegaly": 1}),
                   (f"The heart is {_adj(sev)}ly enlarged.", {"Cardiomegaly": 1}),
                   ("The cardiac silhouette is enlarged.", {"Cardiomegaly": 1})]
    elif k == "effusion":
        if uncertain:
            return f"Possible small {side} pleural effusion.", {"Pleural Effusion": -1}
        plural = "s" if lesion.side == "B" else ""
        choices = [(f"{_size(sev).capitalize()} {side} pleural effusion{plural}.", {"Pleural Effusion": 1}),
                   (f"There {'are' if plural else 'is'} a {_size(sev)} {side} pleural effusion{plural}.", {"Pleural Effusion": 1}),
                   (f"Blunting of the {side} costophrenic angle{plural} consistent with {_size(sev)} effusion{plural}.",
                    {"Pleural Effusion": 1})]
    elif k == "pneumothorax":
        if uncertain:
            return f"A tiny {side} apical pneumothorax cannot be excluded.", {"Pneumothorax": -1}
        choices = [(f"{_size(sev).capitalize()} {side} apical pneumothorax.", {"Pneumothorax": 1}),
                   (f"There is a {_size(sev)} {side} pneumothorax.", {"Pneumothorax": 1}),
                   (f"A {side} pleural line is seen with absent lung markings peripherally, consistent with pneumothorax.",
                    {"Pneumothorax": 1})]
    elif k == "consolidation":
        if uncertain:
            return (f"Subtle opacity in {where} could reflect atelectasis, though early consolidation cannot be excluded.",
                    {"Atelectasis": -1, "Consolidation": -1, "Lung Opacity": 1})
        choices = [(f"Focal consolidation in {where}.", {"Consolidation": 1}),
                   (f"Dense opacity in {where}, consistent with consolidation.", {"Consolidation": 1, "Lung Opacity": 1}),
                   (f"{side.capitalize()} {zone} lobe consolidation.", {"Consolidation": 1})]
    elif k == "pneumonia":
        choices = [(f"Patchy opacity in {where}, concerning for pneumonia.", {"Pneumonia": 1, "Lung Opacity": 1}),
                   (f"{side.capitalize()} {zone} lobe pneumonia.", {"Pneumonia": 1})]
        if uncertain:
            return f"Ill-defined opacity in {where}; infection is possible.", {"Pneumonia": -1, "Lung Opacity": 1}
    elif k == "infiltration":
        choices = [(f"Hazy ill-defined opacities in {where}.", {"Lung Opacity": 1}),
                   (f"Patchy infiltrates in {where}.", {"Lung Opacity": 1})]
    elif k == "nodule":
        if uncertain:
            return f"Questionable nodular opacity in {where}.", {"Lung Lesion": -1}
        choices = [(f"A {mm} mm nodule projects over {where}.", {"Lung Lesion": 1}),
                   (f"{side.capitalize()} {zone} pulmonary nodule measuring {mm} mm.", {"Lung Lesion": 1})]
    elif k == "mass":
        choices = [(f"{side.capitalize()} {zone} lung mass measuring {mm / 10:.1f} cm.", {"Lung Lesion": 1}),
                   (f"Large lobulated mass in {where}, concerning for malignancy.", {"Lung Lesion": 1})]
    elif k == "atelectasis":
        choices = [(f"{side.capitalize()} basilar atelectasis.", {"Atelectasis": 1}),
                   (f"Plate-like atelectasis at the {side} lung base.", {"Atelectasis": 1}),
                   (f"Linear opacity at the {side} base with elevation of the {side} hemidiaphragm, likely atelectasis.",
                    {"Atelectasis": 1, "Lung Opacity": 1})]
    elif k == "edema":
        if uncertain:
            return "Possible mild pulmonary vascular congestion.", {"Edema": -1}
        choices = [(f"{_adj(sev).capitalize()} pulmonary edema.", {"Edema": 1}),
                   (f"Perihilar haziness and vascular congestion consistent with {_adj(sev)} pulmonary edema.", {"Edema": 1}),
                   ("Interstitial edema with Kerley B lines at the bases.", {"Edema": 1})]
    elif k == "tuberculosis":
        cavity = lesion.seed % 2 == 1  # the renderer draws a cavity for odd seeds
        choices = [(f"Nodular opacities in {where}" + (" with cavitation" if cavity else "") + ", concerning for tuberculosis.",
                    {"Lung Opacity": 1, **({"Lung Lesion": 1} if cavity else {})}),
                   (f"{side.capitalize()} upper lobe fibronodular opacities, compatible with tuberculosis.", {"Lung Opacity": 1})]
    elif k == "emphysema":
        choices = [("The lungs are hyperinflated with flattened hemidiaphragms, consistent with emphysema.", {}),
                   ("Hyperlucent, hyperexpanded lungs compatible with COPD.", {})]
    elif k == "fibrosis":
        choices = [("Coarse reticular opacities at the lung bases, compatible with pulmonary fibrosis.", {"Lung Opacity": 1})]
    elif k == "ild":
        choices = [("Diffuse reticular interstitial abnormality, compatible with interstitial lung disease.", {"Lung Opacity": 1})]
    elif k == "pleural_thickening":
        choices = [(f"{side.capitalize()} apical and lateral pleural thickening.", {"Pleural Other": 1})]
    elif k == "calcification":
        choices = [(f"Calcified granulomas in {where}.", {}), (f"Punctate calcifications project over {where}.", {})]
    elif k == "other_lesion":
        choices = [(f"Ill-defined density in {where}; a lesion is not excluded, recommend CT.", {"Lung Lesion": -1}),
                   (f"Focal nodular density in {where}.", {"Lung Lesion": 1})]
    elif k == "hernia":
        choices = [("Retrocardiac air-fluid level consistent with a hiatal hernia.", {}), ("Moderate hiatal hernia.", {})]
    elif k == "aortic_enlargement":
        choices = [("The aortic knob is enlarged.", {}), ("The thoracic aorta is tortuous and dilated.", {})]
    elif k == "enlarged_cardiomediastinum":
        choices = [("The mediastinum is widened.", {"Enlarged Cardiomediastinum": 1}),
                   ("The cardiomediastinal silhouette is enlarged.", {"Enlarged Cardiomediastinum": 1})]
    elif k == "fracture":
        choices = [(f"Healing fracture of a {side} lateral rib.", {"Fracture": 1}),
                   (f"Old {side} rib fracture with callus formation.", {"Fracture": 1})]
    elif k == "support_devices":
        parts = []
        if lesion.seed & 1 or not lesion.seed & 7:
            parts.append(("Endotracheal tube terminates approximately 4 cm above the carina.", {"Support Devices": 1}))
        if lesion.seed & 2:
            parts.append(("Right internal jugular central venous catheter tip in the mid SVC.", {"Support Devices": 1}))
        if lesion.seed & 4:
            parts.append(("Left-sided pacemaker with its lead in the right ventricle.", {"Support Devices": 1}))
        return " ".join(p[0] for p in parts), {"Support Devices": 1}
    else:
        return None
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

"""IU X-ray (Open-i's Indiana University chest X-ray collection) in the official download's layout::

    IU_X-ray/
      NLMCXR_png/CXR1_1_IM-0001-3001.png               (one PNG per image; CXR<report>_<k>_IM-<a>-<b>)
      NLMCXR_reports/ecgen-radiology/1.xml             (NLMCXR_reports.tgz extracted: one XML per report)
      indiana_projections.csv                          (the DICOM-derived views Kaggle's copy adds: uid, filename, projection)

Each XML holds the report's COMPARISON / INDICATION / FINDINGS / IMPRESSION sections as
``AbstractText`` elements, its MeSH terms (``<major>Pleural Effusion/right</major>``) and one
``parentImage`` per image; as in the real files, some sections are empty, a few reports have no
image, and words are de-identified as ``XXXX``.
"""

from __future__ import annotations

import re
from xml.sax.saxutils import escape, quoteattr

import numpy as np

from refers.data.synth.findings import sample_patient, sample_view
from refers.data.synth.io import csv_text, write_png
from refers.data.synth.plan import DatasetPlan, ImageJob, SynthConfig
from refers.data.synth.reports import mimic_report

NAME = "IU_X-ray"
REPORTS = "NLMCXR_reports/ecgen-radiology"
IMAGES = "NLMCXR_png"

# The MeSH "major" term a finding is indexed under (side and place added where the finding has them).
MESH = {
    "cardiomegaly": "Cardiomegaly/mild", "effusion": "Pleural Effusion", "pneumothorax": "Pneumothorax",
    "consolidation": "Consolidation/lung", "nodule": "Nodule/lung", "mass": "Mass/lung",
    "atelectasis": "Pulmonary Atelectasis/base", "edema": "Pulmonary Edema", "pneumonia": "Pneumonia",
    "infiltration": "Infiltrate/lung", "emphysema": "Pulmonary Emphysema", "fibrosis": "Pulmonary Fibrosis",
    "support_devices": "Catheters, Indwelling", "fracture": "Fractures, Bone/ribs",
    "pleural_thickening": "Thickening/pleural", "calcification": "Calcified Granuloma/lung",
    "hernia": "Hernia, Hiatal", "aortic_enlargement": "Aorta/tortuous",
}
SIDES = {"R": "right", "L": "left", "B": "bilateral"}


def _section(text: str, name: str) -> str:
    """A section of a MIMIC-style report, on one line ("" when the report has none)."""
    match = re.search(rf"^ {name}: *\n \n(.*?)(?=\n \n|\Z)", text, flags=re.S | re.M)
    return " ".join(match.group(1).split()) if match else ""


def _deidentify(text: str, rng: np.random.Generator) -> str:
    """Open-i's de-identification: now and then a word becomes ``XXXX``."""
    words = text.split(" ")
    if len(words) > 3 and rng.random() < 0.3:
        words[int(rng.integers(1, len(words)))] = "XXXX"
    return " ".join(words)


def _mesh_terms(patient) -> list[str]:
    terms = []
    for kind, lesion in sorted(patient.lesions.items()):
        if kind in MESH:
            side = SIDES.get(lesion.side)
            terms.append(MESH[kind] + (f"/{side}" if side else ""))
    return terms or ["normal"]


def report_xml(uid: int, findings: str, impression: str, indication: str, mesh: list[str], images: list[str]) -> str:
    """One report in the layout of ``ecgen-radiology/<uid>.xml``."""
    def section(label: str, text: str) -> str:
        return f'<AbstractText Label="{label}">{escape(text)}</AbstractText>' if text else f'<AbstractText Label="{label}"/>'

    parents = "".join(
        f"<parentImage id={quoteattr(image)}><figureId>F{k}</figureId><caption>Xray Chest PA and Lateral</caption>"
        f'<panel type="single"><url>/hadoop/storage/radiology/extract/{escape(image)}.jpg</url><imgModality>7</imgModality>'
        "</panel></parentImage>\n" for k, image in enumerate(images, 1))
    majors = "".join(f"<major>{escape(term)}</major>" for term in mesh)
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n<eCitation>\n<meta type="rr"/>\n'
        f'<uId id="CXR{uid}"/>\n<pmcId id="{uid}"/>\n<docSource>CXR</docSource>\n<IUXRId id="{uid}"/>\n'
        "<licenseType>open-access</licenseType>\n<licenseURL>http://creativecommons.org/licenses/by-nc-nd/4.0/</licenseURL>\n"
        "<publisher>Indiana University</publisher>\n<title>Indiana University Chest X-ray Collection</title>\n"
        '<MedlineCitation Owner="Indiana University" Status="supplied"><Article PubModel="Electronic">'
        "<ArticleTitle>Indiana University Chest X-ray Collection</ArticleTitle><Abstract>\n"
        f'{section("COMPARISON", "None.")}\n{section("INDICATION", indication)}\n'
        f'{section("FINDINGS", findings)}\n{section("IMPRESSION", impression)}\n'
        "</Abstract></Article></MedlineCitation>\n"
        f"<MeSH>{majors}</MeSH>\n{parents}</eCitation>\n"
    )


def build(cfg: SynthConfig) -> DatasetPlan:
    """Plan ``cfg.studies`` reports: most with a frontal and a lateral image, some with none or no text."""
    plan = DatasetPlan(NAME)
    projection_rows = []
    image_number = 0
    without_images = 0
    for uid in range(1, cfg.studies + 1):
        rng = cfg.rng(NAME, uid)
        patient = sample_patient(rng)
        # Every 33rd report has no image (3%, 104 of 3,955 in the real archive), every 50th no text.
        projections = [] if uid % 33 == 2 else (["PA", "LATERAL"] if rng.random() < 0.85 else ["PA"])
        text, _ = mimic_report(patient, projections or ["PA"], rng)
        findings, impression = _deidentify(_section(text, "FINDINGS"), rng), _section(text, "IMPRESSION")
        if uid % 50 == 5:
            findings = impression = ""  # both sections empty: not a study
        images = []
        for k, projection in enumerate(projections, 1):
            image_number += 1
            image = f"CXR{uid}_{k}_IM-{image_number:04d}-{1000 * k + 1:04d}"
            images.append(image)
            plan.images.append(ImageJob(f"{IMAGES}/{image}.png", patient, sample_view(rng, projection), write_png))
            projection_rows.append((uid, f"{uid}_{image.split('_', 2)[2]}.dcm.png", "Frontal" if projection == "PA" else "Lateral"))
        without_images += not images
        indication = _deidentify("XXXX-year-old male with chest pain.", rng)
        plan.texts[f"{REPORTS}/{uid}.xml"] = report_xml(uid, findings, impression, indication, _mesh_terms(patient), images)
    plan.texts["indiana_projections.csv"] = csv_text(("uid", "filename", "projection"), projection_rows)
    plan.counts = {"reports": cfg.studies, "images": len(plan.images), "reports without images": without_images}
    return plan

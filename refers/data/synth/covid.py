"""The COVID-19 Image Data Collection (ieee8023/covid-chestxray-dataset) in its official layout::

    COVID-19_Image_Data_Collection/
      images/<filename>            (.jpeg, .jpg and .png files)
      metadata.csv                 (the repository's columns; ``finding`` is hierarchical, e.g.
                                    Pneumonia/Viral/COVID-19; views PA, AP, AP Supine, L; a few CT rows)
"""

from __future__ import annotations

import numpy as np

from refers.data.synth.findings import sample_patient, sample_view
from refers.data.synth.io import csv_text, write_jpeg, write_png
from refers.data.synth.plan import DatasetPlan, ImageJob, SynthConfig, date_from, hex_id

NAME = "COVID-19_Image_Data_Collection"
HEADER = (
    "patientid", "offset", "sex", "age", "finding", "RT_PCR_positive", "survival", "intubated", "intubation_present",
    "went_icu", "in_icu", "needed_supplemental_O2", "extubated", "temperature", "pO2_saturation", "leukocyte_count",
    "neutrophil_count", "lymphocyte_count", "view", "modality", "date", "location", "folder", "filename", "doi", "url",
    "license", "clinical_notes", "other_notes", "Unnamed: 29",
)
# finding -> (relative frequency, image pattern drawn from the shared finding model, or None for normal)
FINDINGS: dict[str, tuple[float, str | None]] = {
    "Pneumonia/Viral/COVID-19": (0.62, "covid"),
    "Pneumonia/Viral/SARS": (0.02, "viral"),
    "Pneumonia/Viral/MERS-CoV": (0.01, "viral"),
    "Pneumonia/Viral/Influenza": (0.02, "viral"),
    "Pneumonia/Viral/Varicella": (0.01, "viral"),
    "Pneumonia/Bacterial/Streptococcus": (0.03, "bacterial"),
    "Pneumonia/Bacterial/Klebsiella": (0.01, "bacterial"),
    "Pneumonia/Bacterial/Mycoplasma": (0.01, "bacterial"),
    "Pneumonia/Bacterial/Legionella": (0.01, "bacterial"),
    "Pneumonia/Bacterial/Staphylococcus/MRSA": (0.01, "bacterial"),
    "Pneumonia/Fungal/Pneumocystis": (0.03, "fungal"),
    "Pneumonia/Fungal/Aspergillosis": (0.005, "fungal"),
    "Pneumonia/Lipoid": (0.01, "pneumonia"),
    "Pneumonia/Aspiration": (0.01, "pneumonia"),
    "Pneumonia": (0.01, "pneumonia"),
    "Tuberculosis": (0.02, "tuberculosis"),
    "No Finding": (0.12, None),
}
LOCATIONS = ("Wuhan, China", "Milan, Italy", "Toronto, Canada", "Madrid, Spain", "Seoul, South Korea", "Tehran, Iran",
             "Sydney, Australia", "San Diego, California, USA", "")
VIEWS = {"PA": 0.5, "AP": 0.3, "AP Supine": 0.13, "L": 0.04, "Axial": 0.03}


def size_for(studies: int) -> int:
    """Image rows (about 1,000 at 2,000 studies, like the real collection's ~950)."""
    return max(12, round(0.5 * studies))


def _pick(rng: np.random.Generator, table: dict) -> str:
    keys = list(table)
    weights = np.array([v[0] if isinstance(v, tuple) else v for v in table.values()], dtype=float)
    return keys[int(rng.choice(len(keys), p=weights / weights.sum()))]


def _maybe(rng: np.random.Generator, value: str, p: float = 0.4) -> str:
    return value if rng.random() < p else ""


def build(cfg: SynthConfig) -> DatasetPlan:
    total = size_for(cfg.studies)
    plan = DatasetPlan(NAME)
    rows = []
    patient_id = 1
    while len(plan.images) < total:
        patient_id += 1
        rng = cfg.rng(NAME, patient_id)
        finding = _pick(rng, FINDINGS)
        pattern = FINDINGS[finding][1]
        covid = pattern == "covid"
        n_images = min(total - len(plan.images), int(rng.geometric(0.55)))
        first_day = date_from(rng, 2020, 2020)
        offset = int(rng.integers(0, 10))
        sex, age = ("M" if rng.random() < 0.6 else "F"), int(np.clip(rng.normal(55, 16), 20, 90))
        survival = _maybe(rng, "Y" if rng.random() < 0.8 else "N")
        location = LOCATIONS[int(rng.integers(len(LOCATIONS)))]
        for k in range(n_images):
            forced = {pattern: None} if pattern else {}
            patient = sample_patient(rng, prevalence_scale=0.2, forced=forced, exclude=("tuberculosis",))
            patient.sex, patient.age = sex, age
            # Mostly drawn, but every 30th row is a CT slice and every 15th a lateral, so that even
            # small runs hold the rows later code must handle.
            view_name = _pick(rng, VIEWS)
            view_name = {5: "Axial", 20: "L"}.get(len(plan.images) % 30, "PA" if view_name == "Axial" else view_name)
            modality = "CT" if view_name == "Axial" else "X-ray"
            projection = {"PA": "PA", "AP": "AP", "AP Supine": "AP", "L": "LATERAL", "Axial": "CT"}[view_name]
            ext = ("jpeg", "jpg", "png")[int(rng.integers(3))]
            filename = f"{hex_id(rng, (8,))}-{patient_id}-{k}.{ext}"
            writer = write_png if ext == "png" else write_jpeg
            plan.images.append(ImageJob(f"images/{filename}", patient, sample_view(rng, projection), writer))
            day = first_day.fromordinal(first_day.toordinal() + offset)
            notes = (f"{age} year old {'man' if sex == 'M' else 'woman'} with fever and cough."
                     if pattern else f"{age} year old, routine check, normal radiograph.")
            rows.append((
                patient_id, _maybe(rng, str(offset), 0.7), sex, age, finding,
                ("Y" if covid and rng.random() < 0.8 else ("Unclear" if covid else "")),
                survival, _maybe(rng, "Y" if rng.random() < 0.3 else "N"), "", _maybe(rng, "N"), "", _maybe(rng, "Y"), "",
                _maybe(rng, f"{rng.normal(38.3 if pattern else 36.8, 0.5):.1f}", 0.3), _maybe(rng, str(int(rng.integers(82, 99))), 0.3),
                "", "", "", view_name, modality, day.strftime("%B %d, %Y"), location, "images", filename,
                f"10.1000/synthetic.{patient_id}", "", "CC BY-NC-SA 4.0", notes, "", "",
            ))
            offset += int(rng.integers(1, 6))
    plan.texts["metadata.csv"] = csv_text(HEADER, rows)
    n_covid = sum(1 for row in rows if row[4] == "Pneumonia/Viral/COVID-19" and row[19] == "X-ray")
    plan.counts = {"images": total, "covid19_xray": n_covid, "ct": sum(1 for row in rows if row[19] == "CT")}
    return plan

"""The Shenzhen tuberculosis set (NLM China set) in its official layout::

    Shenzhen_Tuberculosis/
      ChinaSet_AllFiles/CXR_png/CHNCXR_0001_0.png           (_0 normal, _1 tuberculosis; normals first)
      ChinaSet_AllFiles/ClinicalReadings/CHNCXR_0001_0.txt  ("male 35yrs" then the reading)
"""

from __future__ import annotations

from refers.data.synth.findings import sample_patient, sample_view
from refers.data.synth.io import write_png
from refers.data.synth.plan import DatasetPlan, ImageJob, SynthConfig
from refers.data.synth.reports import shenzhen_reading

NAME = "Shenzhen_Tuberculosis"
ROOT = "ChinaSet_AllFiles"


def size_for(studies: int) -> int:
    """662 images (the real set's size) at 2,000 studies, about half with tuberculosis."""
    return max(8, round(0.331 * studies))


def build(cfg: SynthConfig) -> DatasetPlan:
    total = size_for(cfg.studies)
    normal = total * 326 // 662
    plan = DatasetPlan(NAME)
    for index in range(total):
        label = int(index >= normal)
        rng = cfg.rng(NAME, index)
        # A screening population: few incidental findings; tuberculosis drives the label.
        forced = {"tuberculosis": None} if label else {}
        patient = sample_patient(rng, prevalence_scale=0.25, forced=forced, exclude=("tuberculosis",))
        stem = f"CHNCXR_{index + 1:04d}_{label}"
        plan.images.append(ImageJob(f"{ROOT}/CXR_png/{stem}.png", patient, sample_view(rng, "PA"), write_png))
        plan.texts[f"{ROOT}/ClinicalReadings/{stem}.txt"] = shenzhen_reading(patient)
    plan.counts = {"images": total, "normal": normal, "tuberculosis": total - normal}
    return plan

"""Radiographs from patients: anatomy + findings -> density -> exposure, noise and devices -> uint8.

Public entry points: :func:`render_views` (a batch, what the dataset writers use) and
:func:`render_patient` (one image, for tests and benchmarks). The output for a given batch and
seed is deterministic; no clock, no global random state.
"""

from __future__ import annotations

import math

import numpy as np

from refers.data.synth.anatomy import (
    Columns, column, frontal_anatomy, lateral_anatomy, markings, smooth_noise, soft_ellipse, step,
)
from refers.data.synth.findings import FINDINGS, Patient, View
from refers.data.synth.lesions import FRONTAL, Frame, lateral_effects

F32 = np.float32
# Pixels of one rendering batch: bounds memory (a dozen float32 arrays of this size) at any image size.
BATCH_PIXELS = 1 << 18


def batch_size(image_size: int) -> int:
    """How many images of ``image_size`` one batch renders."""
    return max(1, BATCH_PIXELS // (image_size * image_size))


def _grid(views: list[View], size: int) -> tuple[np.ndarray, np.ndarray]:
    """Body-frame coordinates of every pixel of every view: ``X, Y`` of shape ``[n, size, size]``."""
    axis = ((np.arange(size, dtype=F32) + 0.5) / size * 2 - 1)
    u, v = axis[None, None, :], axis[None, :, None]
    sx, sy = column([w.shift_x for w in views]), column([w.shift_y for w in views])
    scale = column([w.scale for w in views])
    cos, sin = column([math.cos(w.rotation) for w in views]), column([math.sin(w.rotation) for w in views])
    X = (cos * (u - sx) + sin * (v - sy)) / scale
    Y = (-sin * (u - sx) + cos * (v - sy)) / scale
    return X.astype(F32), Y.astype(F32)


def _frontal(X, Y, patients: list[Patient], rng: np.random.Generator) -> np.ndarray:
    g = Columns.of(patients)
    density, fields = frontal_anatomy(X, Y, g, patients, rng)
    gain = np.ones_like(density)
    for kind in FINDINGS:
        idx = np.array([i for i, p in enumerate(patients) if p.has(kind)], dtype=int)
        if idx.size == 0:
            continue
        frame = Frame(X[idx], Y[idx], g.take(idx), {s: tuple(a[idx] for a in f) for s, f in fields.items()}, rng)
        effect = FRONTAL[kind](frame, [patients[i].lesions[kind] for i in idx])
        density[idx] += effect.delta
        if effect.markings_gain is not None:
            gain[idx] *= effect.markings_gain
    density += 0.09 * markings(X, Y, g, {s: f[0] for s, f in fields.items()}, rng) * gain
    return density


def _lateral(X, Y, patients: list[Patient], rng: np.random.Generator) -> np.ndarray:
    g = Columns.of(patients)
    density, lung = lateral_anatomy(X, Y, g, patients, rng)
    for i, patient in enumerate(patients):
        if patient.lesions:
            sl = slice(i, i + 1)
            density[sl] += lateral_effects(X[sl], Y[sl], g.take(sl), lung[sl], list(patient.lesions.values()))
    return density


def _ct(X, Y, patients: list[Patient], rng: np.random.Generator) -> np.ndarray:
    """An axial CT slice through the lower chest (the COVID collection's few CT rows)."""
    g = Columns.of(patients)
    body = soft_ellipse(X, Y, 0, 0.05, 1.15 * g.bw, 0.62, edge=0.05)
    lungs = sum(soft_ellipse(X, Y, s * 0.38 * g.bw / 0.8, 0.0, 0.3, 0.4, edge=0.1) for s in (-1, 1))
    heart = soft_ellipse(X, Y, 0.08, -0.22, g.hw, 0.2, edge=0.1)
    spine = soft_ellipse(X, Y, 0, 0.5, 0.09, 0.09, edge=0.2)
    density = 0.5 * body - 0.45 * lungs * (1 - heart) + 0.4 * spine
    ggo = column([p.has("covid") or p.has("viral") or p.has("fungal") for p in patients])
    patches = np.clip(smooth_noise(rng, X.shape[0], X.shape[-1], 10), 0, 1)
    return density + 0.2 * ggo * lungs * patches


def _nuisance(image: np.ndarray, views: list[View], rng: np.random.Generator) -> np.ndarray:
    """ECG leads, the side marker and collimation, drawn in image coordinates (not body frame)."""
    size = image.shape[-1]
    axis = (np.arange(size, dtype=F32) + 0.5) / size * 2 - 1
    u, v = axis[None, :], axis[:, None]
    for i, view in enumerate(views):
        local = np.random.default_rng([view.seed, 1])
        if view.leads:
            for _ in range(int(local.integers(2, 5))):
                cu, cv = local.uniform(-0.7, 0.7), local.uniform(-0.8, 0.3)
                dist = np.sqrt((u - cu) ** 2 + (v - cv) ** 2)
                image[i] += 0.35 * step(0.035 - dist, 0.01) * step(dist - 0.02, 0.01)
        if view.marker:
            # An "L" marker at the top corner of the patient's left (image right on frontal views).
            cu, cv = 0.78, -0.85
            stem = step(0.012 - np.abs(u - cu), 0.004) * step(0.05 - np.abs(v - cv), 0.004)
            foot = step(0.012 - np.abs(v - cv - 0.04), 0.004) * step(u - cu, 0.004) * step(cu + 0.04 - u, 0.004)
            image[i] += 0.6 * np.maximum(stem, foot)
        if local.random() < 0.25:
            border = local.uniform(0.02, 0.1)
            image[i] *= step(1 - border - np.abs(u), 0.01) * 0.85 + 0.15
    return image


def render_views(patients: list[Patient], views: list[View], size: int, seed: int) -> np.ndarray:
    """Render one radiograph per (patient, view) pair.

    Args:
        patients: the simulated patients.
        views: one view per patient (projection, position, exposure).
        size: output side in pixels (square images).
        seed: seeds the textures and noise of this batch.

    Returns:
        uint8 array ``[n, size, size]``, white = dense (bone, fluid), black = air.
    """
    rng = np.random.default_rng(seed)
    X, Y = _grid(views, size)
    density = np.zeros_like(X)
    projection = np.array([w.projection for w in views])
    for names, render in ((("PA", "AP"), _frontal), (("LATERAL",), _lateral), (("CT",), _ct)):
        idx = np.flatnonzero(np.isin(projection, names))
        if idx.size:
            density[idx] = render(X[idx], Y[idx], [patients[i] for i in idx], rng)
    # Film response: saturates softly, so overlapping densities (heart + fluid) stay distinguishable;
    # the per-view ``gamma`` sets the film's contrast (steepness), gain and offset its exposure.
    gamma, gain = column([w.gamma for w in views]), column([w.gain for w in views])
    offset, noise = column([w.offset for w in views]), column([w.noise for w in views])
    steepness = 1.8 / gamma
    image = gain * (1 - np.exp(-steepness * np.maximum(density, 0.0))) / (1 - np.exp(-steepness)) + offset + 0.03
    image = _nuisance(image, views, rng)
    image += noise * rng.standard_normal(image.shape, dtype=F32)
    return (np.clip(image, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)


def render_patient(patient: Patient, view: View | str = "PA", size: int = 128, seed: int = 0) -> np.ndarray:
    """One radiograph of ``patient`` as a uint8 ``[size, size]`` array.

    ``view`` is a :class:`View` or a projection name ("PA", "AP", "LATERAL") for a centred,
    standard exposure. Example::

        rng = np.random.default_rng(0)
        patient = sample_patient(rng, forced={"effusion": "L"})
        image = render_patient(patient, "PA", size=64)   # fluid at the image's right base
    """
    if isinstance(view, str):
        view = View(projection=view.upper(), marker=False)
    return render_views([patient], [view], size, seed)[0]

"""Normal chest anatomy as an X-ray density map, vectorised over a batch of patients.

A density map is a float32 array ``[n, H, W]``: 0 is air (black on the film), ~0.55 soft tissue,
bones and metal add to it. Every function takes body-frame coordinates ``X, Y`` (``[n, H, W]``,
see :mod:`refers.data.synth.findings`) and per-patient parameters as ``[n, 1, 1]`` arrays, so a
whole batch is drawn with a few dozen numpy operations.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from refers.data.synth.findings import Geometry, Patient, geometry

F32 = np.float32


def column(values) -> np.ndarray:
    """Per-sample scalars as an ``[n, 1, 1]`` float32 array (broadcasts against ``[n, H, W]``)."""
    return np.asarray(values, dtype=F32).reshape(-1, 1, 1)


def soft_ellipse(X, Y, cx, cy, ax, ay, edge: float = 0.08) -> np.ndarray:
    """1 inside the ellipse, 0 outside, with a linear ramp of relative width ``edge``."""
    r2 = ((X - cx) / ax) ** 2 + ((Y - cy) / ay) ** 2
    return np.clip((1.0 - r2) / edge, 0.0, 1.0)


def gaussian(X, Y, cx, cy, sx, sy) -> np.ndarray:
    return np.exp(-0.5 * (((X - cx) / sx) ** 2 + ((Y - cy) / sy) ** 2))


def step(t, width: float = 0.02) -> np.ndarray:
    """A smooth 0 -> 1 step where ``t`` crosses 0 (in place on a fresh product: this is the hot loop)."""
    out = t * (0.5 / width)
    out += 0.5
    np.minimum(out, 1.0, out=out)
    np.maximum(out, 0.0, out=out)
    return out


def _upsample_axis(coarse: np.ndarray, size: int, axis: int) -> np.ndarray:
    """Linear interpolation of ``coarse`` to ``size`` samples along ``axis`` (elementwise, no BLAS:
    matrix products spin up BLAS threads, which costs more than it saves on small arrays)."""
    res = coarse.shape[axis]
    pos = (np.arange(size, dtype=F32) + 0.5) / size * (res - 1)
    lo = np.clip(np.floor(pos).astype(np.intp), 0, res - 2)
    shape = [1] * coarse.ndim
    shape[axis] = size
    frac = (pos - lo).reshape(shape)
    return np.take(coarse, lo, axis=axis) * (1 - frac) + np.take(coarse, lo + 1, axis=axis) * frac


def smooth_noise(rng: np.random.Generator, n: int, size: int, res: int) -> np.ndarray:
    """Smooth random fields ``[n, size, size]`` (unit-variance noise on a ``res`` grid, upsampled)."""
    coarse = rng.standard_normal((n, res, res), dtype=F32)
    return _upsample_axis(_upsample_axis(coarse, size, 1), size, 2)


def ridges(noise: np.ndarray, sharpness: float = 3.0) -> np.ndarray:
    """Thin branching lines (vessel-like) along the zero crossings of a smooth field."""
    return np.clip(1.0 - np.abs(noise) * sharpness, 0.0, 1.0) ** 2


def _narrow(wave: np.ndarray) -> np.ndarray:
    """Thin bright bands from a cosine: ((1 + cos) / 2) ** 8 by repeated squaring (cheaper than pow)."""
    band = 0.5 + 0.5 * wave
    band *= band
    band *= band
    band *= band
    return band


@dataclass
class Columns:
    """:class:`Geometry` of a batch, each field an ``[n, 1, 1]`` array."""

    bw: np.ndarray
    ax: np.ndarray
    cx: np.ndarray
    top: np.ndarray
    yd_r: np.ndarray
    yd_l: np.ndarray
    hw: np.ndarray
    hx: np.ndarray
    hy: np.ndarray
    cy: np.ndarray
    ay: np.ndarray

    @classmethod
    def of(cls, patients: list[Patient]) -> "Columns":
        geos = [geometry(p) for p in patients]
        names = [f.name for f in fields(Geometry)]
        values = {name: column([getattr(g, name) for g in geos]) for name in names}
        values["cy"] = column([g.cy for g in geos])
        values["ay"] = column([g.ay for g in geos])
        return cls(**values)

    def yd(self, sign) -> np.ndarray:
        return np.where(np.asarray(sign) > 0, self.yd_l, self.yd_r)

    def take(self, idx) -> "Columns":
        return Columns(**{f.name: getattr(self, f.name)[idx] for f in fields(self)})


def lung_field(X, Y, g: Columns, sign):
    """One lung (``sign`` +1: the patient's left = image right) and coordinates inside it.

    Returns:
        ``(mask, lateral, t)``, each ``[n, H, W]``: ``lateral`` runs 0 (mediastinal border) to 1
        (chest wall), ``t`` 0 (apex) to 1 (diaphragm); findings use them to sit where they belong.
    """
    side = X * sign
    yd = g.yd(sign)
    t = (Y - g.top) / (yd - g.top)
    tc = np.clip(t, 0.0, 1.0)
    inner = 0.11 + 0.02 * tc  # keep in step with Geometry.lung_edges
    outer = inner + (0.92 * g.bw - inner) * (0.2 + 0.8 * np.sqrt(tc))
    lateral = np.clip((side - inner) / (outer - inner), 0.0, 1.0)
    # Hemidiaphragm dome: highest mid-hemithorax, deepest at the costophrenic angle.
    dome = yd + 0.03 * lateral - 0.1 * (1 - (2 * lateral - 1) ** 2)
    mask = step(side - inner, 0.02) * step(outer - side, 0.03) * step(Y - g.top, 0.04) * step(dome - Y, 0.02)
    return mask, lateral, t


def heart_mask(X, Y, g: Columns) -> np.ndarray:
    """The cardiac silhouette: an ellipse tilted so that its apex points down to the patient's left."""
    cos, sin = 0.9, 0.436  # 26 degrees
    dx, dy = X - g.hx, Y - g.hy
    return soft_ellipse(dx * cos + dy * sin, dy * cos - dx * sin, 0.0, 0.0, 1.08 * g.hw, 0.2 + 0.15 * g.hw, edge=0.1)


def frontal_anatomy(X, Y, g: Columns, patients: list[Patient], rng: np.random.Generator):
    """Density of a normal PA/AP chest, and the two lung masks.

    Returns:
        ``(density, fields)`` with ``fields = {-1: right lung, +1: left lung}`` as returned by
        :func:`lung_field`, all ``[n, H, W]``.
    """
    n = X.shape[0]
    body = soft_ellipse(np.abs(X) ** 2, np.abs(Y - 0.15) ** 2, 0, 0, (1.1 * g.bw) ** 2, 1.25**2, edge=0.15)
    neck = step(0.2 - np.abs(X), 0.04) * step(-0.7 - Y, 0.1)
    density = 0.55 * np.maximum(body, neck)
    fields_ = {s: lung_field(X, Y, g, s) for s in (-1, 1)}
    lungs = {s: f[0] for s, f in fields_.items()}
    # Heart: in front of the medial lungs, shifted to the patient's left (image right); it hides
    # the lung behind it, so the lungs' air and markings are counted only where it is not.
    heart = heart_mask(X, Y, g)
    for s in (-1, 1):
        lungs[s] = lungs[s] * (1 - 0.85 * heart)
    lung = lungs[-1] + lungs[1]
    density -= 0.34 * lung
    knob = soft_ellipse(X, Y, 0.07 + 0.02 * g.bw, -0.40, 0.055, 0.055, edge=0.3)
    density += 0.25 * knob * lung
    trachea = step(0.035 - np.abs(X - 0.0), 0.01) * step(-0.35 - Y, 0.05)
    density -= 0.12 * trachea
    spine = step(0.065 - np.abs(X), 0.01) * (0.75 + 0.25 * np.cos(2 * np.pi * Y / 0.11))
    density += 0.07 * spine * step(g.yd_l + 0.3 - Y, 0.05)
    # Ribs: posterior arcs sloping down laterally, fainter anterior ones; clavicles.
    thorax = step(1.02 * g.bw - np.abs(X), 0.05) * step(Y - (g.top - 0.08), 0.05) * step(g.yd_l + 0.05 - Y, 0.05)
    ax_ = np.abs(X)
    posterior = _narrow(np.cos(2 * np.pi * (Y - 0.55 * (ax_ - 0.15) ** 2 + 0.1 * ax_) / 0.16))
    anterior = _narrow(np.cos(2 * np.pi * (Y + 0.4 * ax_**2 - 0.05) / 0.2))
    density += thorax * (0.4 + 0.6 * lung) * (0.075 * posterior + 0.03 * anterior)
    clavicle_y = -0.76 + 0.18 * (np.abs(X) - 0.1)
    clavicle = step(0.028 - np.abs(Y - clavicle_y), 0.01) * step(np.abs(X) - 0.07, 0.02) * step(0.62 - np.abs(X), 0.04)
    density += 0.12 * clavicle
    # Gastric bubble under the left hemidiaphragm (image right), for most patients.
    bubble = column([0.15 * (rng.random() < 0.6) for _ in range(n)])
    density -= bubble * soft_ellipse(X, Y, 0.75 * g.cx, g.yd_l + 0.1, 0.09, 0.05, edge=0.4)
    female = np.array([p.sex == "F" for p in patients])
    if female.any():  # breast shadows over the lower lateral lungs
        Xf, Yf, gf = X[female], Y[female], g.take(female)
        density[female] += 0.05 * sum(gaussian(Xf, Yf, s * (gf.cx + 0.15), gf.yd_l - 0.05, 0.18, 0.12) for s in (-1, 1))
    fields_ = {s: (lungs[s], *fields_[s][1:]) for s in (-1, 1)}
    return density.astype(F32), fields_


def markings(X, Y, g: Columns, lungs, rng: np.random.Generator) -> np.ndarray:
    """Lung markings (vessels): branching lines, densest at the hila, fading to the periphery."""
    n, size = X.shape[0], X.shape[-1]
    lines = ridges(smooth_noise(rng, n, size, 28), 2.5)
    hilum = sum(gaussian(X, Y, s * (g.cx - 0.2 * g.ax), g.hy - 0.22, 0.35, 0.45) for s in (-1, 1))
    return lines * (0.35 + hilum) * (lungs[-1] + lungs[1])


def lateral_anatomy(X, Y, g: Columns, patients: list[Patient], rng: np.random.Generator):
    """Density of a normal lateral chest (anterior at image left), and the lung mask ``[n, H, W]``."""
    depth = 0.62 * g.bw
    body = soft_ellipse(np.abs(X) ** 2, np.abs(Y - 0.15) ** 2, 0, 0, (1.05 * depth) ** 2, 1.25**2, edge=0.15)
    density = 0.55 * body
    yd = 0.5 * (g.yd_r + g.yd_l)
    lung = soft_ellipse(X, Y, 0.03, g.cy, 0.85 * depth, g.ay, edge=0.12)
    dome = yd - 0.12 * (1 - np.clip((X - 0.03) / (0.85 * depth), -1, 1) ** 2) + 0.08 * X
    lung = lung * step(dome - Y, 0.025)
    density -= 0.30 * lung
    # Heart: anterior and inferior, against the anterior lung edge; it grows backwards when enlarged.
    heart = soft_ellipse(X, Y, -0.75 * depth + 0.8 * g.hw, g.hy + 0.02, 0.8 * g.hw, 0.22 + 0.25 * g.hw, edge=0.1)
    density += 0.25 * heart * lung
    spine_x = 0.72 * depth
    vertebrae = step(0.07 - np.abs(X - spine_x), 0.01) * (0.6 + 0.4 * (np.cos(2 * np.pi * Y / 0.12) > -0.6))
    density += 0.12 * vertebrae * body
    sternum = step(0.02 - np.abs(X + 0.8 * depth + 0.02 * Y), 0.01) * step(0.3 - np.abs(Y + 0.3), 0.05)
    density += 0.1 * sternum
    ribs = _narrow(np.cos(2 * np.pi * (Y - 0.25 * X) / 0.15))
    density += 0.03 * ribs * lung
    lines = ridges(smooth_noise(rng, X.shape[0], X.shape[-1], 24), 2.5)
    density += 0.05 * lines * lung
    return density.astype(F32), lung

"""How each finding changes the density map, on frontal and lateral views.

Each renderer receives a :class:`Frame` holding only the patients that have the finding and returns
an :class:`Effect`: density added to the film, and optionally a factor on the lung markings (a
pneumothorax has none, fluid and emphysema hide them, edema congests them). Strengths are tuned so
that findings are visible at 64 px but not trivial (a too-strong finding makes training from
scratch perfect; see ``shared/reference/demo-feasibility.md``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from refers.data.synth.anatomy import Columns, column, gaussian, ridges, smooth_noise, soft_ellipse, step
from refers.data.synth.findings import Lesion


@dataclass
class Frame:
    """Coordinates, geometry and lung fields of the patients having one finding.

    ``fields[sign]`` is ``(mask, lateral, t)`` of :func:`refers.data.synth.anatomy.lung_field`.
    """

    X: np.ndarray
    Y: np.ndarray
    g: Columns
    fields: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]
    rng: np.random.Generator

    @property
    def lungs(self) -> dict[int, np.ndarray]:
        return {s: f[0] for s, f in self.fields.items()}

    def _pick(self, sign, k: int) -> np.ndarray:
        return np.where(np.asarray(sign) > 0, self.fields[1][k], self.fields[-1][k])

    def lung(self, sign) -> np.ndarray:
        return self._pick(sign, 0)

    def lateral(self, sign) -> np.ndarray:
        return self._pick(sign, 1)

    def height(self, sign) -> np.ndarray:
        return self._pick(sign, 2)


@dataclass
class Effect:
    delta: np.ndarray
    markings_gain: np.ndarray | None = None


def _signs(lesions: list[Lesion]) -> list[tuple[np.ndarray, np.ndarray]]:
    """(sign, weight) pairs: the lesion's own side, then the mirrored side for bilateral ones."""
    primary = column([1 if le.side == "L" else -1 for le in lesions])
    both = column([le.side == "B" for le in lesions])
    return [(primary, np.ones_like(primary)), (-primary, both)]


def _attr(lesions: list[Lesion], name: str) -> np.ndarray:
    return column([getattr(le, name) for le in lesions])


def _mirror_x(lesions: list[Lesion], sign: np.ndarray) -> np.ndarray:
    """The lesion's x moved to the side ``sign``."""
    return sign * np.abs(_attr(lesions, "x"))


def _patchy(f: Frame, res: int = 14) -> np.ndarray:
    return np.clip(0.35 + 0.6 * smooth_noise(f.rng, f.X.shape[0], f.X.shape[-1], res), 0.0, 1.0)


def effusion(f: Frame, lesions: list[Lesion]) -> Effect:
    """Basal fluid with a meniscus rising laterally; it blunts the costophrenic angle."""
    sev = _attr(lesions, "severity")
    delta = np.zeros_like(f.X)
    gain = np.ones_like(f.X)
    for sign, weight in _signs(lesions):
        level = 0.88 - 0.28 * sev - 0.15 * sev * f.lateral(sign) ** 2
        fluid = weight * f.lung(sign) * step(f.height(sign) - level, 0.05)
        delta += 0.22 * fluid
        gain *= 1 - 0.8 * fluid
    return Effect(delta, gain)


def pneumothorax(f: Frame, lesions: list[Lesion]) -> Effect:
    """A lucent apical/lateral rim without lung markings, bounded by a thin pleural line."""
    sev = _attr(lesions, "severity")
    sign = column([1 if le.side == "L" else -1 for le in lesions])
    lung, t = f.lung(sign), f.height(sign)
    edge = np.minimum(1 - f.lateral(sign), 1.6 * np.maximum(t, 0))  # distance to chest wall or apex
    width = (0.12 + 0.25 * sev) * np.clip(1.15 - t, 0.0, 1.0)
    rim = lung * step(width - edge, 0.02)
    line = lung * np.exp(-(((edge - width) / 0.03) ** 2)) * (1 - rim) * step(width - 0.03, 0.02)
    return Effect(-0.06 * rim + 0.10 * line + 0.03 * sev * lung * (1 - rim), 1 - rim)


def _blob_finding(amplitude: float, elongation: float = 1.25, patchy: bool = False) -> Callable[[Frame, list[Lesion]], Effect]:
    def render(f: Frame, lesions: list[Lesion]) -> Effect:
        sev, size, y = _attr(lesions, "severity"), _attr(lesions, "size"), _attr(lesions, "y")
        delta = np.zeros_like(f.X)
        texture = _patchy(f) if patchy else 1.0
        for sign, weight in _signs(lesions):
            x = _mirror_x(lesions, sign)
            blob = np.clip(1.6 * gaussian(f.X, f.Y, x, y, elongation * size, size) - 0.3, 0.0, 1.0)
            delta += weight * blob * f.lung(sign) * texture
        return Effect(amplitude * (0.6 + 0.4 * sev) * delta)

    return render


def _disc_finding(amplitude: float, lobulated: bool = False) -> Callable[[Frame, list[Lesion]], Effect]:
    def render(f: Frame, lesions: list[Lesion]) -> Effect:
        sev, size = _attr(lesions, "severity"), _attr(lesions, "size")
        x, y = _attr(lesions, "x"), _attr(lesions, "y")
        dist = np.sqrt((f.X - x) ** 2 + (f.Y - y) ** 2)
        radius = size
        if lobulated:
            phase = column([le.seed % 628 / 100 for le in lesions])
            radius = size * (1 + 0.15 * np.sin(3 * np.arctan2(f.Y - y, f.X - x) + phase))
        disc = np.clip((radius - dist) / (0.3 * size), 0.0, 1.0)
        return Effect(amplitude * (0.75 + 0.25 * sev) * disc)

    return render


def atelectasis(f: Frame, lesions: list[Lesion]) -> Effect:
    """A plate-like basal band and increased basal density (the raised hemidiaphragm is geometry)."""
    sev, x, y = _attr(lesions, "severity"), _attr(lesions, "x"), _attr(lesions, "y")
    delta = np.zeros_like(f.X)
    for sign, weight in _signs(lesions):
        xs = sign * np.abs(x)
        band = step(0.02 + 0.02 * sev - np.abs(f.Y - y - 0.18 * sign * (f.X - xs)), 0.01)
        band *= step(0.85 * f.g.ax - np.abs(f.X - xs), 0.05)
        basal = step(f.Y - y, 0.04)
        delta += weight * f.lung(sign) * (0.2 * band + 0.07 * basal)
    return Effect((0.7 + 0.3 * sev) * delta)


def edema(f: Frame, lesions: list[Lesion]) -> Effect:
    """Bilateral perihilar haze, basal septal (Kerley B) lines and congested vessels."""
    sev = _attr(lesions, "severity")
    g = f.g
    lung = f.lungs[-1] + f.lungs[1]
    haze = sum(gaussian(f.X, f.Y, s * 0.3 * g.bw, g.hy - 0.2, 0.2, 0.28) for s in (-1, 1))
    kerley = sum(f.fields[s][0] * step(f.fields[s][1] - 0.75, 0.05) * step(f.fields[s][2] - 0.6, 0.05) for s in (-1, 1))
    kerley = kerley * (np.cos(2 * np.pi * f.Y / 0.045) > 0.85)
    delta = lung * (0.05 + 0.05 * sev) * haze + 0.04 * sev * kerley
    return Effect(delta, 1 + 0.4 * sev * lung)


def tuberculosis(f: Frame, lesions: list[Lesion]) -> Effect:
    """Upper-lobe patchy nodular opacities, often with a cavity and fibrotic streaks to the hilum."""
    delta = np.zeros_like(f.X)
    sev = _attr(lesions, "severity")
    for sign, weight in _signs(lesions):
        x0, y0, spread = _mirror_x(lesions, sign), _attr(lesions, "y"), _attr(lesions, "size")
        for k in range(6):
            offs = [np.random.default_rng([le.seed, k]).uniform(-1, 1, 3) for le in lesions]
            dx, dy, dr = (column([o[i] for o in offs]) for i in range(3))
            bx, by, br = x0 + dx * spread, y0 + 0.7 * dy * spread, 0.035 + 0.015 * dr
            delta += weight * 0.16 * np.clip(1.5 * gaussian(f.X, f.Y, bx, by, br, br) - 0.2, 0, 1)
        cavity = column([le.seed % 2 for le in lesions]) * weight
        dist = np.sqrt((f.X - x0) ** 2 + (f.Y - y0) ** 2)
        ring = np.exp(-(((dist - 0.045) / 0.015) ** 2))
        delta += cavity * (0.14 * ring - 0.1 * step(0.035 - dist, 0.01))
        hilum_x = sign * 0.3 * f.g.bw
        t = np.clip(((f.X - x0) * (hilum_x - x0) + (f.Y - y0) * (f.g.hy - 0.25 - y0))
                    / ((hilum_x - x0) ** 2 + (f.g.hy - 0.25 - y0) ** 2), 0, 1)
        px, py = x0 + t * (hilum_x - x0), y0 + t * (f.g.hy - 0.25 - y0)
        streak = step(0.012 - np.sqrt((f.X - px) ** 2 + (f.Y - py) ** 2), 0.006)
        delta += weight * 0.1 * streak
    return Effect((0.7 + 0.3 * sev) * delta * (f.lungs[-1] + f.lungs[1]))


def emphysema(f: Frame, lesions: list[Lesion]) -> Effect:
    """Hyperlucent lungs with sparse markings and apical bullae (the flat diaphragm is geometry)."""
    sev = _attr(lesions, "severity")
    lung = f.lungs[-1] + f.lungs[1]
    bulla = sum(soft_ellipse(f.X, f.Y, s * 0.27 * f.g.bw, f.g.top + 0.2, 0.08, 0.07, edge=0.3) for s in (-1, 1))
    return Effect(-(0.04 + 0.04 * sev) * lung - 0.05 * bulla * lung, 1 - 0.5 * sev * lung)


def _reticular(amplitude: float, where: str) -> Callable[[Frame, list[Lesion]], Effect]:
    def render(f: Frame, lesions: list[Lesion]) -> Effect:
        sev = _attr(lesions, "severity")
        lines = ridges(smooth_noise(f.rng, f.X.shape[0], f.X.shape[-1], 44), 3.0)
        lung = f.lungs[-1] + f.lungs[1]
        zone = 1.0
        if where == "basal-peripheral":
            zone = sum(f.fields[s][0] * step(f.fields[s][1] - 0.45, 0.1) * step(f.fields[s][2] - 0.5, 0.1) for s in (-1, 1))
        return Effect(amplitude * (0.6 + 0.4 * sev) * lines * lung * zone)

    return render


def pleural_thickening(f: Frame, lesions: list[Lesion]) -> Effect:
    """A dense band along the lateral and apical pleura."""
    sev = _attr(lesions, "severity")
    delta = np.zeros_like(f.X)
    for sign, weight in _signs(lesions):
        t = f.height(sign)
        edge = np.minimum(1 - f.lateral(sign), 1.6 * np.maximum(t, 0))
        delta += weight * f.lung(sign) * step(0.06 + 0.05 * sev - edge, 0.02) * np.clip(1.2 - t, 0, 1)
    return Effect(0.2 * delta)


def hernia(f: Frame, lesions: list[Lesion]) -> Effect:
    """A retrocardiac round opacity with an air-fluid level (hiatal hernia)."""
    sev = _attr(lesions, "severity")
    cy = f.g.hy + 0.05
    sac = soft_ellipse(f.X, f.Y, 0.02, cy, 0.09 + 0.04 * sev, 0.08 + 0.03 * sev, edge=0.2)
    air = step(cy - 0.01 - f.Y, 0.005)
    return Effect(sac * (0.12 - 0.24 * air))


def aortic_enlargement(f: Frame, lesions: list[Lesion]) -> Effect:
    sev = _attr(lesions, "severity")
    radius = 0.08 + 0.035 * sev
    knob = soft_ellipse(f.X, f.Y, 0.1 + 0.5 * radius, -0.40, radius, radius * 1.1, edge=0.25)
    return Effect(0.2 * knob * (f.lungs[1] + 0.3))


def enlarged_cardiomediastinum(f: Frame, lesions: list[Lesion]) -> Effect:
    sev = _attr(lesions, "severity")
    band = step(0.15 + 0.07 * sev - np.abs(f.X - 0.01), 0.02) * step(f.Y + 0.72, 0.05) * step(f.g.hy - 0.15 - f.Y, 0.05)
    return Effect(0.24 * band * (f.lungs[-1] + f.lungs[1]))


def calcification(f: Frame, lesions: list[Lesion]) -> Effect:
    """Two to four small very dense dots (calcified granulomas)."""
    delta = np.zeros_like(f.X)
    for sign, weight in _signs(lesions):
        x0, y0 = _mirror_x(lesions, sign), _attr(lesions, "y")
        for k in range(3):
            offs = [np.random.default_rng([le.seed, 7, k]).uniform(-0.12, 0.12, 2) for le in lesions]
            bx, by = x0 + column([o[0] for o in offs]), y0 + column([o[1] for o in offs])
            dist = np.sqrt((f.X - bx) ** 2 + (f.Y - by) ** 2)
            present = 1.0 if k < 2 else column([le.seed % 2 for le in lesions])
            delta += weight * present * np.clip((0.022 - dist) / 0.008, 0, 1)
    return Effect(0.45 * delta)


def fracture(f: Frame, lesions: list[Lesion]) -> Effect:
    """A lateral rib gap with a small callus."""
    x, y = _attr(lesions, "x"), _attr(lesions, "y")
    gap = step(0.008 - np.abs(f.X - x - 0.3 * (f.Y - y)), 0.004) * step(0.05 - np.abs(f.Y - y), 0.01)
    callus = gaussian(f.X, f.Y, x + 0.02, y, 0.025, 0.02)
    return Effect(-0.08 * gap + 0.12 * callus)


def support_devices(f: Frame, lesions: list[Lesion]) -> Effect:
    """Metal: an endotracheal tube, a right central line and/or a left pacemaker with its lead."""
    kinds = np.array([[(le.seed >> b) & 1 for b in range(3)] for le in lesions], dtype=np.float32)
    kinds[kinds.sum(1) == 0, 0] = 1
    tube = step(0.012 - np.abs(f.X), 0.004) * step(f.Y + 1.2, 0.01) * step(-0.45 - f.Y, 0.01)
    line_x = -0.5 + 0.46 * np.clip((f.Y + 0.82) / 0.55, 0, 1) ** 0.6
    line = step(0.008 - np.abs(f.X - line_x), 0.004) * step(f.Y + 0.82, 0.01) * step(-0.27 - f.Y, 0.01)
    box = step(0.07 - np.abs(f.X - 0.55), 0.01) * step(0.045 - np.abs(f.Y + 0.72), 0.01)
    lead_x = 0.55 - 0.5 * np.clip((f.Y + 0.72) / (f.g.hy + 0.72), 0, 1)
    lead = step(0.007 - np.abs(f.X - lead_x), 0.003) * step(f.Y + 0.72, 0.01) * step(f.g.hy - f.Y, 0.01)
    metal = (column(kinds[:, 0]) * tube + column(kinds[:, 1]) * line + column(kinds[:, 2]) * np.maximum(box, lead))
    return Effect(0.5 * np.clip(metal, 0, 1))


def covid(f: Frame, lesions: list[Lesion]) -> Effect:
    """Bilateral, peripheral, lower-zone ground-glass opacities."""
    sev = _attr(lesions, "severity")
    texture = _patchy(f, 12)
    zone = sum(m * np.clip((lat - 0.45) / 0.3, 0, 1) * step(t - 0.45, 0.15) for m, lat, t in f.fields.values())
    return Effect((0.09 + 0.08 * sev) * zone * texture)


def viral(f: Frame, lesions: list[Lesion]) -> Effect:
    """Bilateral perihilar interstitial opacities (non-COVID viral pneumonia)."""
    sev = _attr(lesions, "severity")
    lines = ridges(smooth_noise(f.rng, f.X.shape[0], f.X.shape[-1], 36), 3.0)
    haze = sum(gaussian(f.X, f.Y, s * 0.3 * f.g.bw, f.g.hy - 0.25, 0.22, 0.3) for s in (-1, 1))
    return Effect((0.06 + 0.05 * sev) * (haze + 0.8 * lines * haze) * (f.lungs[-1] + f.lungs[1]))


def fungal(f: Frame, lesions: list[Lesion]) -> Effect:
    """Diffuse bilateral ground glass, sparing the periphery (Pneumocystis-like)."""
    sev = _attr(lesions, "severity")
    zone = sum(m * np.clip((0.85 - lat) / 0.3, 0, 1) for m, lat, _ in f.fields.values())
    return Effect((0.07 + 0.05 * sev) * zone)


FRONTAL: dict[str, Callable[[Frame, list[Lesion]], Effect]] = {
    "cardiomegaly": lambda f, lesions: Effect(np.zeros_like(f.X)),  # the heart size is geometry
    "effusion": effusion,
    "pneumothorax": pneumothorax,
    "consolidation": _blob_finding(0.27),
    "nodule": _disc_finding(0.25),
    "atelectasis": atelectasis,
    "edema": edema,
    "mass": _disc_finding(0.28, lobulated=True),
    "infiltration": _blob_finding(0.16, elongation=1.6, patchy=True),
    "pneumonia": _blob_finding(0.24, patchy=True),
    "emphysema": emphysema,
    "fibrosis": _reticular(0.16, "basal-peripheral"),
    "pleural_thickening": pleural_thickening,
    "hernia": hernia,
    "aortic_enlargement": aortic_enlargement,
    "enlarged_cardiomediastinum": enlarged_cardiomediastinum,
    "calcification": calcification,
    "ild": _reticular(0.11, "diffuse"),
    "fracture": fracture,
    "other_lesion": _blob_finding(0.2, elongation=0.8),
    "support_devices": support_devices,
    "tuberculosis": tuberculosis,
    "covid": covid,
    "viral": viral,
    "bacterial": _blob_finding(0.3),
    "fungal": fungal,
}


def lateral_effects(X, Y, g: Columns, lung: np.ndarray, lesions: list[Lesion]) -> np.ndarray:
    """What one patient's findings add to a lateral view (``[1, H, W]`` inputs).

    The lateral view shows depth ``z`` horizontally (anterior at image left): focal lesions appear
    at ``(z, y)``, effusions fill the posterior costophrenic sulcus, edema hazes the hila.
    """
    depth = 0.62 * g.bw
    delta = np.zeros_like(X)
    for le in lesions:
        s = 0.6 + 0.4 * le.severity
        if le.kind == "effusion":
            level = 0.5 * (g.yd_r + g.yd_l) - 0.1 - 0.3 * le.severity
            delta += 0.25 * lung * step(Y - level + 0.15 * (X / depth), 0.03) * step(X + 0.1, 0.1)
        elif le.kind in ("nodule", "mass", "calcification", "other_lesion"):
            cx = le.z * 0.6 * depth
            dist = np.sqrt((X - cx) ** 2 + (Y - le.y) ** 2)
            amp = 0.45 if le.kind == "calcification" else 0.22
            delta += amp * s * np.clip((le.size - dist) / (0.3 * le.size), 0, 1)
        elif le.kind in ("consolidation", "pneumonia", "bacterial", "infiltration", "tuberculosis", "atelectasis"):
            size = le.size or 0.1
            delta += 0.2 * s * lung * np.clip(1.6 * gaussian(X, Y, le.z * 0.6 * depth, le.y, size, size) - 0.3, 0, 1)
        elif le.kind in ("edema", "viral", "fungal", "covid"):
            delta += 0.1 * s * lung * gaussian(X, Y, 0.0, g.hy - 0.2, 0.3, 0.35)
        elif le.kind == "hernia":
            delta += 0.12 * soft_ellipse(X, Y, 0.1, g.hy + 0.05, 0.1, 0.08, edge=0.2)
        elif le.kind == "support_devices" and le.seed & 1:
            delta += 0.5 * step(0.012 - np.abs(X + 0.3 * depth), 0.004) * step(-0.45 - Y, 0.01)
    return delta

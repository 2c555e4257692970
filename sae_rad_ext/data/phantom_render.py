"""Project the phantom chest into frontal / lateral radiographs with ground-truth masks.

Attenuation line integrals ``P = ∫ mu dl`` (closed-form chords, see ``phantom_geometry``) → detector
transmission ``I/I0 = exp(-P)`` with quantum noise and scatter → log → a film-like characteristic
curve with edge enhancement (bright = dense: bone, heart, metal; dark = lung, air).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from sae_rad_ext.data.phantom_anatomy import SGN, SIDES, FindingState, Patient, build_devices, heart_geometry
from sae_rad_ext.data.phantom_geometry import (
    ViewGrid,
    ellipsoid_interval,
    inter,
    length,
    make_view,
    rot_xyz,
    section_interval,
    splat,
    tube_projection,
)

MU_SOFT = 0.2  # 1/cm, water-like at ~60 keV
RHO_LUNG = 0.2  # aerated lung relative to soft tissue
MU_BONE = 0.42  # extra over soft tissue
MU_METAL = 3.0
FOV = 40.0  # cm


@dataclass
class Acquisition:
    """Per-image positioning / exposure (varies between studies of one patient)."""

    view: str  # PA / AP / LATERAL
    yaw: float
    roll: float
    shift: tuple[float, float, float]
    photons: float
    contrast: float
    brightness: float
    scatter: float


def sample_acquisition(rng: np.random.Generator, view: str) -> Acquisition:
    return Acquisition(
        view=view, yaw=float(np.deg2rad(rng.normal(0, 2.5))), roll=float(np.deg2rad(rng.normal(0, 1.5))),
        shift=(float(rng.normal(0, 0.8)), 0.0, float(rng.normal(-5.0, 1.0))),
        photons=float(rng.uniform(0.6e5, 2.5e5)), contrast=float(rng.normal(1.0, 0.08)),
        brightness=float(rng.normal(0.0, 0.04)), scatter=float(rng.uniform(0.08, 0.2)),
    )


def _lung_terms(p: Patient, st: FindingState, ox, oy, oz, d, heart_iv, cuts):
    """Per-ray lengths of aerated lung, pneumothorax air, pleural fluid and visceral pleura."""
    out = {"lung": 0.0, "ptx": {}, "fluid": {}, "pleura": 0.0, "hull": {}, "collapsed": {}}
    for side in SIDES:
        dc, dax = p.dome(side)
        dome_iv = ellipsoid_interval(ox, oy, oz, d, dc, dax)
        hd = inter(heart_iv, dome_iv)

        def f(x, dome_iv=dome_iv, hd=hd):
            v = length(x) - length(inter(x, dome_iv)) - length(inter(x, heart_iv)) + length(inter(x, hd))
            for c in cuts:
                v = v - length(inter(x, c))
            return np.maximum(v, 0.0)

        hull = section_interval(ox, oy, d, *p.lung_section(side, oz))
        ptx = st.pneumothorax.get(side, 0.0)
        if ptx > 0:
            retract, drop = 1.5 + 5.0 * ptx, 1.0 + 4.0 * ptx
            coll = section_interval(ox, oy, d, *p.lung_section(side, oz, retract, drop))
            coll_in = section_interval(ox, oy, d, *p.lung_section(side, oz, retract, drop, shrink=0.25))
        else:
            coll = coll_in = hull
        eff = st.effusion.get(side, 0.0)
        if eff > 0:
            level = p.lung_floor + 1.0 + 9.0 * eff
            g = np.sqrt(np.clip((oz - level) / (2.5 + 3.0 * eff), 0.0, 1.0))
            cx, cy, a, b = p.lung_section(side, oz)
            sg = SGN[side]
            free = section_interval(ox, oy, d, cx - sg * (1 - g) * a * 0.35, cy + (1 - g) * b * 0.35,
                                    a * g * 1.02 + 1e-3 * (g > 0), b * g * 1.02 + 1e-3 * (g > 0))
            free = (np.where(g > 0, free[0], 1e9), np.where(g > 0, free[1], -1e9))
            f_hull = f(hull)
            f_hull_free = f(inter(hull, free))
            out["fluid"][side] = np.maximum(f_hull - f_hull_free, 0.0)
            coll_f, coll_in_f = inter(coll, free), inter(coll_in, free)
        else:
            f_hull_free = f(hull)
            coll_f, coll_in_f = coll, coll_in
        air = f(coll_f)
        out["lung"] = out["lung"] + air
        out["hull"][side] = length(hull)
        out["collapsed"][side] = coll_f
        if ptx > 0:
            out["ptx"][side] = np.maximum(f_hull_free - air, 0.0)
            out["pleura"] = out["pleura"] + np.maximum(air - f(coll_in_f), 0.0)
    return out


def render_view(p: Patient, st: FindingState, acq: Acquisition, size: int, rng: np.random.Generator,
                vessels: tuple[list[np.ndarray], list[float]]) -> tuple[np.ndarray, dict[str, np.ndarray], dict]:
    """One radiograph (uint8 ``[size, size]``), its masks, and measurements (CTR, tips in pixels)."""
    kind = "lateral" if acq.view in ("LATERAL", "LL") else "frontal"
    view = make_view(size, FOV, kind, acq.yaw, acq.roll, acq.shift)
    ox, oy, oz = view.coords()
    d = view.d
    P = np.zeros((size, size))
    masks: dict[str, np.ndarray] = {}
    info: dict = {}
    # body + soft tissue
    body = length(section_interval(ox, oy, d, *p.body_section(oz)))
    P += MU_SOFT * body
    if p.breast > 0:
        for side in SIDES:
            c = np.array([SGN[side] * 8.0, p.body_b * 0.8, p.dome_right - 1.5])
            P += MU_SOFT * 0.4 * length(ellipsoid_interval(ox, oy, oz, d, c, np.array([6.0, 4.0, 5.5]) * p.breast))
    # heart and mediastinal cuts out of the lungs
    hc, hax, hrot = heart_geometry(p, st)
    if acq.view == "AP":
        hax = hax * np.array([1.07, 1.0, 1.04])
    heart_iv = ellipsoid_interval(ox, oy, oz, d, hc, hax, hrot)
    knob = ellipsoid_interval(ox, oy, oz, d, np.array([2.6, -1.0, p.carina_z + 2.2]), np.array([1.7, 2.4, 1.6]))
    svc = ellipsoid_interval(ox, oy, oz, d, np.array([-2.3, 0.3, p.carina_z + 1.5]), np.array([1.4, 1.4, 5.5]))
    desc = ellipsoid_interval(ox, oy, oz, d, np.array([2.2, -4.2, -9.0]), np.array([1.3, 1.3, 11.0]))
    terms = _lung_terms(p, st, ox, oy, oz, d, heart_iv, [knob, svc, desc])
    P -= MU_SOFT * (1 - RHO_LUNG) * terms["lung"]
    for side, v in terms["ptx"].items():
        P -= MU_SOFT * v
        masks[f"pneumothorax_{side}"] = v > 0.4
    P += MU_SOFT * 1.8 * terms["pleura"]
    for side, v in terms["fluid"].items():
        masks[f"pleural_effusion_{side}"] = v > 0.6
    # consolidation: nested ellipsoids (soft edge) inside the aerated lung
    for side, _zone, c, ax in st.opacity:
        coll = terms["collapsed"][side]
        tot = np.zeros_like(P)
        for k, sc in enumerate((1.0, 0.8, 0.6)):
            ln = length(inter(ellipsoid_interval(ox, oy, oz, d, c, ax * sc), coll))
            tot += ln
            if k == 0:
                key = f"lung_opacity_{side}"
                masks[key] = masks.get(key, np.zeros_like(ln, bool)) | (ln > 0.8)
        P += MU_SOFT * (0.85 - RHO_LUNG) * tot / 3.0
    # airway
    car = np.array([0.0, -0.8, p.carina_z])
    P += tube_projection(view, [np.array([[0.0, -1.5, 22.0], [0.0, -1.0, 8.0], car])], 0.85, -MU_SOFT)
    P += tube_projection(view, [np.array([car, car + [-2.2, 0.2, -2.2]]), np.array([car, car + [3.8, 0.2, -2.6]])],
                         0.55, -MU_SOFT * 0.9)
    # hila (pulmonary arteries) + vessels
    for side in SIDES:
        c = np.array([SGN[side] * (p.medi + 1.6), -0.3, p.carina_z - 3.5])
        P += MU_SOFT * 0.8 * length(ellipsoid_interval(ox, oy, oz, d, c, np.array([1.5, 1.6, 2.6])))
    segs, radii = vessels
    if segs:
        from sae_rad_ext.data.phantom_geometry import polyline_points

        pts, wts = [], []
        for s, r in zip(segs, radii, strict=True):
            q, w = polyline_points(s, view.px * 0.5)
            pts.append(q)
            wts.append(w * np.pi * r * r * MU_SOFT * 0.95)
        v = splat(view, np.concatenate(pts), np.concatenate(wts))
        P += ndimage.gaussian_filter(v, 0.9 * size / 224)
    # bones
    P += _spine(p, ox, oy, oz, d)
    ribs = p.ribs()
    k = ribs[0].shape[0] * 9 // 20
    P += tube_projection(view, [r[: k + 1] for r in ribs], 0.55, MU_BONE * 0.8, hollow=0.62)
    P += tube_projection(view, [r[k:] for r in ribs], 0.55, MU_BONE * 0.4, hollow=0.62)
    P += tube_projection(view, p.clavicles(), 0.7, MU_BONE, hollow=0.55)
    for side in SIDES:
        sg = SGN[side]
        rs = rot_xyz(0.0, 0.0, sg * 0.5)
        sc = np.array([sg * (p.body_a - 1.5), -p.body_b * 0.55, p.rib1_z - 6.5])
        P += MU_BONE * 0.5 * length(ellipsoid_interval(ox, oy, oz, d, sc, np.array([4.2, 0.7, 7.0]), rs))
        if kind == "frontal":
            hh = np.array([sg * (p.body_a * 1.18 + 1.0), -1.0, p.rib1_z - 0.5])
            P += MU_BONE * 0.7 * length(ellipsoid_interval(ox, oy, oz, d, hh, np.array([2.7, 2.7, 2.9])))
    # devices
    dev_masks: dict[str, np.ndarray] = {}
    for dev in build_devices(p, st):
        proj = tube_projection(view, dev.curves, dev.radius, MU_METAL * dev.mu / 9.0)
        if dev.kind == "ett":  # radiopaque stripe inside a faint plastic tube
            proj = proj * 0.5 + tube_projection(view, dev.curves, 0.1, MU_METAL * 0.6)
        if dev.generator is not None:
            gc, gax = dev.generator
            gen = MU_METAL * length(ellipsoid_interval(ox, oy, oz, d, gc, gax))
            proj = proj + np.minimum(gen, 3.5)
        m = ndimage.binary_dilation(proj > 0.08, iterations=max(1, size // 112))
        key = "pacemaker" if dev.kind in ("pacemaker", "icd") else dev.kind
        dev_masks[key] = dev_masks.get(key, np.zeros_like(m)) | m
        P += proj
        r, c = view.to_pixel(dev.tip)
        info[f"tip_{dev.kind}"] = (float(r), float(c))
    masks.update(dev_masks)
    heart_mask = length(heart_iv) > 0
    masks["heart"] = heart_mask
    lungs = sum(terms["hull"].values()) > 0
    masks["lungs"] = lungs
    if kind == "frontal":
        hcols = np.flatnonzero(heart_mask.any(0))
        widths = [np.ptp(np.flatnonzero(row)) for row in lungs if row.sum() > 1]
        if hcols.size and widths:
            info["ctr"] = float((np.ptp(hcols) + 1) / (max(widths) + 1))
    img = _film(P, body > 0.5, acq, size, rng)
    return img, masks, info


def _spine(p: Patient, ox, oy, oz, d) -> np.ndarray:
    """Vertebral bodies (cortex + cancellous), pedicles and spinous processes, C6 to L2."""
    out = np.zeros_like(ox)
    body_o = length(section_interval(ox, oy, d, 0.0, -5.6, 2.1, 1.8))
    body_i = length(section_interval(ox, oy, d, 0.0, -5.6, 1.75, 1.45))
    period = p.rib_spacing * 1.02
    phase = np.mod(oz - (p.rib1_z + 0.9), period) / period
    vert = (phase > 0.16) & (oz < p.rib1_z + 6.0)
    out += MU_BONE * 0.28 * (body_o - 0.55 * body_i) * vert
    for sx in (-1.6, 1.6):
        ped = section_interval(ox, oy, d, sx, -7.6, 0.55, 1.1)
        out += MU_BONE * 0.3 * length(ped) * (phase > 0.35) * (phase < 0.75) * (oz < p.rib1_z + 6.0)
    sp = section_interval(ox, oy, d, 0.0, -9.3, 0.55, 1.6)
    out += MU_BONE * 0.2 * length(sp) * (phase > 0.05) * (phase < 0.55) * (oz < p.rib1_z + 6.0)
    return out


def _film(P: np.ndarray, body: np.ndarray, acq: Acquisition, size: int, rng: np.random.Generator) -> np.ndarray:
    T = np.exp(-P)
    T = T + acq.scatter * ndimage.uniform_filter(T, size // 4) * 0.3
    noise = rng.standard_normal(T.shape) * np.sqrt(T / acq.photons)
    T = np.clip(T + noise, 1e-5, None)
    D = -np.log(T)
    D = ndimage.gaussian_filter(D, 0.45 * size / 224)
    vals = D[body] if body.any() else D.ravel()
    lo, hi = np.percentile(vals, [1.0, 99.7])
    lo = lo - 0.12 * (hi - lo)
    y = np.clip((D - lo) / max(hi - lo, 1e-6), -0.3, 1.2)
    y = y + 0.55 * (y - ndimage.gaussian_filter(y, 2.5 * size / 224))  # unsharp mask (DR processing)
    y = 1.0 / (1.0 + np.exp(-(y - 0.48 - acq.brightness) * 4.2 * acq.contrast))
    y = (y - 1.0 / (1.0 + np.exp(0.48 * 4.2))) / (1.0 / (1.0 + np.exp(-0.52 * 4.2)) - 1.0 / (1.0 + np.exp(0.48 * 4.2)))
    return (np.clip(y, 0, 1) * 255 + 0.5).astype(np.uint8)

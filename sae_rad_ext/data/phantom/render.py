"""Project the phantom chest into frontal / lateral radiographs with ground-truth masks.

Attenuation line integrals ``P = ∫ mu dl`` (closed-form chords, see ``phantom_geometry``) → detector
transmission ``I/I0 = exp(-P)`` with quantum noise and scatter → log → a film-like characteristic
curve with edge enhancement (bright = dense: bone, heart, metal; dark = lung, air).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from sae_rad_ext.data.phantom.anatomy import SGN, SIDES, FindingState, Patient, build_devices, heart_geometry
from sae_rad_ext.data.phantom.geometry import (
    ViewGrid,
    add_ellipsoid,
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
        dome_iv = section_interval(ox, oy, d, *p.dome_section(side, oz))
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
            dome_top = p.dome_right if side == "right" else p.dome_left
            level = dome_top - 2.5 + 11.0 * eff
            g = np.sqrt(np.clip((oz - level) / (3.0 + 5.0 * eff), 0.0, 1.0))
            cx, cy, a, b = p.lung_section(side, oz)
            sg = SGN[side]
            free = section_interval(ox, oy, d, cx - sg * (1 - g) * a * 0.5, cy + (1 - g) * b * 0.4,
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


def _vessels(view: ViewGrid, vessels, size: int) -> np.ndarray:
    nodes, n_valid, radii = vessels
    if len(nodes) == 0:
        return np.zeros((size, size))
    seg = np.diff(nodes, axis=1)  # [S, 4, 3]
    seglen = np.linalg.norm(seg, axis=2)
    m = max(1, int(np.ceil(seglen.max() / (view.px * 0.6))))
    t = (np.arange(m) + 0.5) / m
    pts = nodes[:, :-1, None, :] + t[None, None, :, None] * seg[:, :, None, :]  # [S, 4, m, 3]
    valid = np.arange(4)[None, :] < (n_valid[:, None] - 1)
    w = (seglen / m) * valid * (np.pi * radii[:, None] ** 2 * MU_SOFT * 1.1)
    w = np.repeat(w[:, :, None], m, axis=2)
    v = splat(view, pts.reshape(-1, 3), w.reshape(-1))
    return ndimage.gaussian_filter(v, 0.75 * size / 224)


def render_view(p: Patient, st: FindingState, acq: Acquisition, size: int, rng: np.random.Generator,
                vessels) -> tuple[np.ndarray, dict[str, np.ndarray], dict]:
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
            add_ellipsoid(P, view, c, np.array([6.0, 4.0, 5.5]) * p.breast, MU_SOFT * 0.4)
    # heart and mediastinal cuts out of the lungs
    hc, hax, hrot = heart_geometry(p, st)
    if acq.view == "AP":
        hax = hax * np.array([1.07, 1.0, 1.04])
    heart_iv = ellipsoid_interval(ox, oy, oz, d, hc, hax, hrot)
    knob = ellipsoid_interval(ox, oy, oz, d, np.array([2.6, -1.0, p.carina_z + 2.2]), np.array([1.7, 2.4, 1.6]))
    terms = _lung_terms(p, st, ox, oy, oz, d, heart_iv, [knob])
    P -= MU_SOFT * (1 - RHO_LUNG) * terms["lung"]
    for side, v in terms["ptx"].items():
        P -= MU_SOFT * v
        masks[f"pneumothorax_{side}"] = v > 1.2
    P += MU_SOFT * 1.0 * terms["pleura"]
    for side, v in terms["fluid"].items():
        masks[f"pleural_effusion_{side}"] = v > 0.6
    # consolidation: lobulated clusters of nested ellipsoids (soft edges) inside the aerated lung
    for side, _zone, c, ax in st.opacity:
        coll = terms["collapsed"][side]
        box = view.bbox(c, float(np.max(ax)) * 1.6)
        if box is None:
            continue
        r0, r1, c0, c1 = box
        sub = (coll[0][r0:r1, c0:c1], coll[1][r0:r1, c0:c1])
        bx, by, bz = ox[r0:r1, c0:c1], oy[r0:r1, c0:c1], oz[r0:r1, c0:c1]
        tot = np.zeros(sub[0].shape)
        key = f"lung_opacity_{side}"
        mk = masks.setdefault(key, np.zeros((size, size), bool))
        lob = np.random.default_rng(int(abs(c[0] * 1000 + c[2] * 37)) % 2**31)
        for j in range(3):
            cj = c + (lob.normal(0, 0.35, 3) * ax if j else 0)
            axj = ax * (1.0 if j == 0 else lob.uniform(0.55, 0.8))
            for k, (sc, w) in enumerate(((1.0, 0.5), (0.8, 0.45), (0.55, 0.4))):
                ln = length(inter(ellipsoid_interval(bx, by, bz, d, cj, axj * sc), sub))
                tot += w * ln
                if k == 0:
                    mk[r0:r1, c0:c1] |= ln > 0.8
        P[r0:r1, c0:c1] += MU_SOFT * (1.0 - RHO_LUNG) * np.minimum(tot, 12.0)
    # airway, gastric bubble
    car = np.array([0.0, -0.8, p.carina_z])
    P += tube_projection(view, [np.array([[0.0, -1.5, 22.0], [0.0, -1.0, 8.0], car])], 1.0, -MU_SOFT)
    P += tube_projection(view, [np.array([car, car + [-2.2, 0.2, -2.2]]), np.array([car, car + [3.8, 0.2, -2.6]])],
                         0.55, -MU_SOFT * 0.9)
    add_ellipsoid(P, view, np.array([6.5, 0.5, p.dome_left - 2.6]), np.array([2.6, 2.4, 1.4]) * p.bubble, -0.8 * MU_SOFT)
    # hila (pulmonary arteries) + vessels
    for side in SIDES:
        c = np.array([SGN[side] * (p.medi + 1.6), -0.3, p.carina_z - 3.5])
        add_ellipsoid(P, view, c, np.array([1.5, 1.6, 2.6]), MU_SOFT * 0.8)
    P += _vessels(view, vessels, size)
    # bones
    P += _spine(p, view)
    ribs = p.ribs()
    k = ribs[0].shape[0] * 9 // 20
    P += tube_projection(view, [r[: k + 1] for r in ribs] + [r[k:] for r in ribs], 0.55,
                         [MU_BONE * 0.8] * len(ribs) + [MU_BONE * 0.4] * len(ribs), hollow=0.62)
    P += tube_projection(view, p.clavicles(), 0.7, MU_BONE, hollow=0.55)
    for side in SIDES:
        sg = SGN[side]
        rs = rot_xyz(0.0, 0.0, sg * 0.5)
        sc = np.array([sg * (p.body_a - 1.5), -p.body_b * 0.55, p.rib1_z - 6.5])
        add_ellipsoid(P, view, sc, np.array([4.2, 0.7, 7.0]), MU_BONE * 0.5, rs)
        if kind == "frontal":
            hh = np.array([sg * (p.body_a * 1.18 + 1.0), -1.0, p.rib1_z - 0.5])
            add_ellipsoid(P, view, hh, np.array([2.7, 2.7, 2.9]), MU_BONE * 0.7)
    # devices
    dev_masks: dict[str, np.ndarray] = {}
    for dev in build_devices(p, st):
        proj = tube_projection(view, dev.curves, dev.radius, MU_METAL * dev.mu / 9.0)
        if dev.kind == "ett":  # radiopaque stripe inside a faint plastic tube
            proj = proj * 0.5 + tube_projection(view, dev.curves, 0.14, MU_METAL * 1.5)
        if dev.generator is not None:
            gc, gax = dev.generator
            add_ellipsoid(proj, view, gc, gax, MU_METAL, cap=1.2)
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


def _spine(p: Patient, view: ViewGrid) -> np.ndarray:
    """Vertebral bodies (cortex + cancellous), pedicles and spinous processes, C6 to L2 (column band only)."""
    size = view.size
    out = np.zeros((size, size))
    _, col = view.to_pixel(np.array([0.0, -6.5, 0.0]))
    half = int(np.ceil(6.0 / view.px)) + 2
    c0, c1 = max(0, int(col) - half), min(size, int(col) + half + 1)
    if c0 >= c1:
        return out
    ox, oy, oz = view.coords(0, size, c0, c1)
    d = view.d
    sub = np.zeros(ox.shape)
    body_o = length(section_interval(ox, oy, d, 0.0, -5.6, 2.1, 1.8))
    body_i = length(section_interval(ox, oy, d, 0.0, -5.6, 1.75, 1.45))
    period = p.rib_spacing * 1.02
    phase = np.mod(oz - (p.rib1_z + 0.9), period) / period
    top = oz < p.rib1_z + 6.0
    sub += MU_BONE * 0.22 * (body_o - 0.55 * body_i) * ((phase > 0.16) & top)
    for sx in (-1.6, 1.6):
        ped = section_interval(ox, oy, d, sx, -7.6, 0.55, 1.1)
        sub += MU_BONE * 0.3 * length(ped) * ((phase > 0.35) & (phase < 0.75) & top)
    sp = section_interval(ox, oy, d, 0.0, -9.3, 0.55, 1.6)
    sub += MU_BONE * 0.2 * length(sp) * ((phase > 0.05) & (phase < 0.55) & top)
    out[:, c0:c1] = sub
    return out


def _film(P: np.ndarray, body: np.ndarray, acq: Acquisition, size: int, rng: np.random.Generator) -> np.ndarray:
    T = np.exp(-P)
    T = T + acq.scatter * ndimage.uniform_filter(T, size // 4) * 0.3
    noise = rng.standard_normal(T.shape) * np.sqrt(T / acq.photons)
    T = np.clip(T + noise, 1e-5, None)
    D = -np.log(T)
    D = ndimage.gaussian_filter(D, 0.45 * size / 224)
    # DR-style dynamic-range equalisation: compress large-scale density, keep local detail
    low = ndimage.gaussian_filter(D, 14.0 * size / 224)
    ref = np.median(low[body]) if body.any() else low.mean()
    D = D - 0.4 * np.maximum(low - ref, 0.0)
    vals = D[body] if body.any() else D.ravel()
    lo, hi = np.percentile(vals, [1.0, 99.7])
    lo, hi = lo - 0.12 * (hi - lo), hi + 0.18 * (hi - lo)  # headroom: dense regions and metal stay unsaturated
    y = np.clip((D - lo) / max(hi - lo, 1e-6), -0.3, 1.2)
    y = y + 0.55 * (y - ndimage.gaussian_filter(y, 2.5 * size / 224))  # unsharp mask (DR processing)
    y = 1.0 / (1.0 + np.exp(-(y - 0.48 - acq.brightness) * 4.2 * acq.contrast))
    y = (y - 1.0 / (1.0 + np.exp(0.48 * 4.2))) / (1.0 / (1.0 + np.exp(-0.52 * 4.2)) - 1.0 / (1.0 + np.exp(0.48 * 4.2)))
    return (np.clip(y, 0, 1) * 255 + 0.5).astype(np.uint8)

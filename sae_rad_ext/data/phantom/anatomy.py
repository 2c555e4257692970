"""The 3-D phantom chest: a patient's anatomy (per-patient variation) and the findings planted in it.

Units are centimetres; ``x`` patient's left, ``y`` anterior, ``z`` superior (see ``phantom_geometry``).
A ``Patient`` is fixed for life (anatomy); a ``FindingState`` is one time point (what is planted).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from sae_rad_ext.data.phantom.geometry import rot_xyz, smooth_curve

SIDES = ("right", "left")
SGN = {"right": -1.0, "left": 1.0}


@dataclass
class Patient:
    patient_id: str
    sex: str
    body_a: float  # torso half-width
    body_b: float  # torso half-depth
    lung_top: float  # apex height
    lung_h: float  # apex-to-full-width height
    dome_right: float  # top of the right hemidiaphragm (inspiration depth)
    dome_left: float
    lung_floor: float  # deepest costophrenic sulcus
    medi: float  # mediastinal half-width at the lungs' medial edge
    heart_center: np.ndarray
    heart_axes: np.ndarray
    heart_rot: np.ndarray
    carina_z: float
    rib_spacing: float
    rib1_z: float
    fat: float  # habitus (soft-tissue thickness factor)
    breast: float  # 0 = none
    seed: int
    vessel_seed: int
    bubble: float = 1.0  # gastric air bubble scale

    def lung_section(self, side: str, z: np.ndarray, retract: float = 0.0, apex_drop: float = 0.0,
                     shrink: float = 0.0):
        """Horizontal ellipse (cx, cy, a, b) of a lung hull at heights ``z`` (optionally collapsed)."""
        sg = SGN[side]
        inner = self.body_a - 1.6 - 0.9 * self.fat
        a_max = (inner - self.medi) / 2.0
        cx_full = sg * (self.medi + a_max)
        top = self.lung_top - apex_drop
        f = np.sqrt(np.clip((top - z) / self.lung_h, 0.0, 1.0))
        f = f * (z > self.lung_floor)
        a = a_max * f
        cx = cx_full + sg * a_max * (1 - f) * 0.25
        b = (self.body_b - 2.2 - 0.8 * self.fat) * np.clip(f * 1.05, 0, 1)
        cy = -1.1 + 0 * z
        a = a - retract / 2.0 - shrink
        cx = cx - sg * retract / 2.0
        b = b - retract * 0.1 - shrink
        return cx, cy, np.maximum(a, 0.0), np.maximum(b, 0.0)

    def body_section(self, z: np.ndarray):
        zz = np.array([-40.0, -18.0, 0.0, 5.0, 9.0, 11.5, 13.5, 16.0, 40.0])
        fa = np.array([1.0, 1.0, 1.02, 1.08, 1.2, 1.12, 0.5, 0.4, 0.4])
        fb = np.array([1.0, 1.0, 0.95, 0.9, 0.75, 0.65, 0.55, 0.5, 0.5])
        a = self.body_a * np.interp(z, zz, fa)
        b = self.body_b * np.interp(z, zz, fb)
        cy = np.interp(z, zz, [0, 0, 0, -0.5, -1.5, -2.0, -2.0, -1.5, -1.5])
        return 0.0 * z, cy, a, b

    def dome_section(self, side: str, z: np.ndarray):
        """Hemidiaphragm as a paraboloid ``z_d = top - ((x-cx)/3.4)^2 - ((y-cy)/3.6)^2``: at height ``z``
        the sub-diaphragmatic region is the ellipse returned here (empty above the dome's top)."""
        top = self.dome_right if side == "right" else self.dome_left
        h = np.sqrt(np.clip(top - z, 0.0, None))
        return SGN[side] * 6.2 + 0 * z, 1.5 + 0 * z, 3.4 * h + 1e-6, 3.6 * h + 1e-6

    def below_dome(self, side: str, pts: np.ndarray) -> np.ndarray:
        cx, cy, a, b = self.dome_section(side, pts[:, 2])
        return ((pts[:, 0] - cx) / a) ** 2 + ((pts[:, 1] - cy) / b) ** 2 < 1

    def ribs(self) -> list[np.ndarray]:
        out = []
        for side in SIDES:
            sg = SGN[side]
            for i in range(12):
                z0 = self.rib1_z - i * self.rib_spacing
                zc = np.array([z0])
                _, _, a, b = self.body_section(zc)
                grow = min(1.0, 0.45 + 0.14 * i)
                ra = (float(a[0]) - 0.9 - 0.8 * self.fat) * grow
                rb = (float(b[0]) - 1.0 - 0.6 * self.fat) * (0.55 + 0.45 * grow)
                th_max = np.pi * (0.8 if i < 8 else (0.6 if i < 10 else 0.35))
                th = np.linspace(0.12, th_max, 14)
                x = sg * (1.3 + ra * np.sin(th))
                y = -3.8 - (rb - 2.6) * np.cos(th) + 0.4 * np.sin(th)
                z = z0 + 1.6 * np.sin(th * 0.8) - 9.0 * (th / np.pi) ** 2.2 * (1 + 0.02 * i)
                out.append(smooth_curve(np.stack([x, y, z], 1), 28))
        return out

    def clavicles(self) -> list[np.ndarray]:
        out = []
        z0 = self.rib1_z - 3.3
        for side in SIDES:
            sg = SGN[side]
            ctrl = [[sg * 1.8, 6.0, z0 + 1.0], [sg * 6, 5.0, z0 + 1.6], [sg * 10.5, 2.0, z0 + 2.6],
                    [sg * 14.5, -1.0, z0 + 3.6]]
            out.append(smooth_curve(np.array(ctrl), 20))
        return out


@dataclass
class Device:
    kind: str  # pacemaker / icd / ett / ng_tube / central_line
    curves: list[np.ndarray]
    radius: float
    mu: float
    tip: np.ndarray
    generator: tuple[np.ndarray, np.ndarray] | None = None  # centre, axes
    side: str | None = None


@dataclass
class FindingState:
    """What is planted at one time point (sizes in [0, 1]; 0 = absent)."""

    cardiomegaly: float = 0.0  # heart scale excess (0 normal; 0.22-0.45 enlarged)
    effusion: dict[str, float] = field(default_factory=dict)  # side -> size (0.15 trace .. 1 large)
    pneumothorax: dict[str, float] = field(default_factory=dict)  # side -> size
    opacity: list[tuple[str, str, np.ndarray, np.ndarray]] = field(default_factory=list)  # side, zone, c, axes
    pacemaker: str | None = None  # None / "pacemaker" / "icd"
    pacemaker_side: str = "left"
    ett: float | None = None  # tip height above carina (cm)
    ng_tube: bool = False
    central_line: float | None = None  # tip height (cm, patient z)
    central_side: str = "right"


def sample_patient(rng: np.random.Generator, patient_id: str) -> Patient:
    sex = "F" if rng.random() < 0.45 else "M"
    size = rng.normal(1.0, 0.06)
    fat = float(np.clip(rng.normal(0.6, 0.35), 0.0, 1.6))
    a = 14.5 * size * (0.95 if sex == "F" else 1.0) + 0.8 * fat
    b = 10.0 * size + 0.8 * fat
    insp = rng.normal(0.0, 1.2)  # deeper inspiration -> lower domes
    dome_r = -13.5 - insp + rng.normal(0, 0.4)
    dome_l = dome_r - rng.uniform(0.8, 2.2)
    hc = np.array([1.6 + rng.normal(0, 0.4), 1.8, dome_r + 1.0])
    hax = np.array([6.0, 6.6, 5.0]) * rng.normal(1.0, 0.04) * size
    hrot = rot_xyz(0.0, np.deg2rad(rng.normal(-45, 5)), np.deg2rad(rng.normal(25, 5)))
    return Patient(
        patient_id=patient_id, sex=sex, body_a=float(a), body_b=float(b),
        lung_top=float(9.0 + rng.normal(0, 0.5)), lung_h=float(13.0 + rng.normal(0, 1.0)),
        dome_right=float(dome_r), dome_left=float(dome_l),
        lung_floor=float(dome_l - rng.uniform(7.5, 8.5)), medi=float(2.2 + rng.normal(0, 0.2)),
        heart_center=hc, heart_axes=hax, heart_rot=hrot, carina_z=float(rng.normal(-1.0, 0.7)),
        rib_spacing=float(2.45 * size + rng.normal(0, 0.08)), rib1_z=float(10.3 + rng.normal(0, 0.4)),
        fat=fat, breast=float(rng.uniform(0.6, 1.2)) if sex == "F" else 0.0,
        seed=int(rng.integers(2**31)), vessel_seed=int(rng.integers(2**31)), bubble=float(rng.uniform(0.5, 1.2)),
    )


def heart_geometry(p: Patient, state: FindingState) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    s = 1.0 + state.cardiomegaly
    axes = p.heart_axes * np.array([s, 1 + 0.5 * (s - 1), 1 + 0.4 * (s - 1)])
    c = p.heart_center + np.array([0.9 * (s - 1) * p.heart_axes[0], 0.0, 0.25 * (s - 1) * p.heart_axes[2]])
    return c, axes, p.heart_rot


def build_devices(p: Patient, st: FindingState) -> list[Device]:
    """Radiopaque devices as 3-D curves (pacemaker leads through SVC/RA into the RV apex, tubes)."""
    out: list[Device] = []
    hc, hax, hrot = heart_geometry(p, st)
    apex = hc + hrot @ np.array([hax[0] * 0.75, hax[1] * 0.3, -hax[2] * 0.2])
    ra = hc + hrot @ np.array([-hax[0] * 0.8, 0.0, hax[2] * 0.1])
    svc = np.array([-2.4, 0.5, p.carina_z + 1.0])
    if st.pacemaker:
        sg = SGN[st.pacemaker_side]
        gz = p.rib1_z - 6.0
        _, bcy, _, bb = p.body_section(np.array([gz]))
        gen_c = np.array([sg * 8.0, float(bcy[0] + bb[0]) * 0.93 - 0.9, gz])
        gen_ax = np.array([2.4, 0.45, 2.0]) * (1.25 if st.pacemaker == "icd" else 1.0)
        vein = np.array([sg * 5.0, 2.0, p.rib1_z - 1.5])
        lead1 = smooth_curve(np.array([gen_c + [-sg * 1.5, -0.5, 1.0], vein, [sg * 1.0, 0.5, p.rib1_z - 3.5],
                                       svc, ra, apex]), 60)
        curves = [lead1]
        if st.pacemaker == "pacemaker":
            curves.append(smooth_curve(np.array([gen_c + [-sg * 1.2, -0.5, 1.4], vein + [0, 0, 0.4],
                                                 svc + [0.3, 0, 0], ra + [0.4, 0.3, 1.5]]), 50))
        out.append(Device(st.pacemaker, curves, 0.13 if st.pacemaker == "pacemaker" else 0.2, 9.0, apex,
                          (gen_c, gen_ax), st.pacemaker_side))
    if st.ett is not None:
        tip = np.array([0.0, -0.8, p.carina_z + st.ett])
        c = smooth_curve(np.array([[0.0, 3.0, 24.0], [0.0, 0.5, 17.0], [0.0, -0.6, 10.0], tip]), 30)
        out.append(Device("ett", [c], 0.5, 1.3, tip))
    if st.ng_tube:
        tip = np.array([6.0, 2.5, p.dome_left - 5.5])
        c = smooth_curve(np.array([[0.3, 1.5, 24.0], [0.4, -2.2, 12.0], [0.6, -3.4, 0.0], [1.2, -3.0, -8.0],
                                   [2.6, -1.5, p.dome_left - 1.0], [4.5, 0.5, p.dome_left - 3.5], tip]), 60)
        out.append(Device("ng_tube", [c], 0.2, 3.5, tip))
    if st.central_line is not None:
        sg = SGN[st.central_side]
        tip = np.array([-2.3, 0.6, st.central_line])
        c = smooth_curve(np.array([[sg * 4.5, 1.0, 18.0], [sg * 4.0, 0.8, 11.0], [sg * 2.6, 0.6, p.rib1_z - 3.0],
                                   [-2.4, 0.6, p.carina_z + 2.0], tip]), 40)
        out.append(Device("central_line", [c], 0.14, 6.0, tip, side=st.central_side))
    return out


def vessel_tree(p: Patient, inside, rng: np.random.Generator, roots: int = 11, depth: int = 7):
    """Random branching pulmonary vessels from each hilum, generated a generation at a time (vectorised).

    ``inside(pts [N, 3]) -> bool [N]`` keeps vessels in the aerated lung. Returns ``(nodes [S, 5, 3],
    n_valid [S], radius [S])``: each segment is a 4-step random walk; nodes past ``n_valid`` are unused.
    """
    starts, dirs = [], []
    for side in SIDES:
        sg = SGN[side]
        hilum = np.array([sg * (p.medi + 2.3), -0.5, p.carina_z - 3.5])
        ang = np.linspace(-0.55, 0.6, roots) * np.pi + rng.normal(0, 0.08, roots)
        d = np.stack([sg * np.abs(np.cos(ang)) * 0.9 + 0.15 * sg, rng.normal(0, 0.5, roots), np.sin(ang) * 1.2], 1)
        starts.append(np.repeat(hilum[None], roots, 0))
        dirs.append(d)
    pts = np.concatenate(starts)
    d = np.concatenate(dirs)
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    r = np.full(len(pts), 0.36)
    out_nodes, out_n, out_r = [], [], []
    for _ in range(depth):
        if len(pts) == 0:
            break
        ln = (2.6 * r / 0.36 + 0.8)[:, None]
        steps = d[:, None, :] + np.cumsum(rng.normal(0, 0.13, (len(pts), 4, 3)), axis=1)
        steps /= np.linalg.norm(steps, axis=2, keepdims=True)
        nodes = np.concatenate([pts[:, None], pts[:, None] + np.cumsum(steps * (ln[:, :, None] / 4), axis=1)], 1)
        ok = inside(nodes[:, 1:].reshape(-1, 3)).reshape(-1, 4)
        n_ok = np.where(ok.all(1), 4, np.argmin(ok, axis=1)) + 1  # nodes kept (start + valid steps)
        keep = n_ok >= 2
        out_nodes.append(nodes[keep])
        out_n.append(n_ok[keep])
        out_r.append(r[keep])
        grow = (n_ok == 5) & (r > 0.07)
        tip, last = nodes[grow, -1], steps[grow, -1]
        kids = np.concatenate([last, last]) + rng.normal(0, 0.42, (2 * len(tip), 3))
        d = kids / np.linalg.norm(kids, axis=1, keepdims=True)
        pts = np.concatenate([tip, tip])
        r = np.concatenate([r[grow], r[grow]]) * 0.76
    if not out_nodes:
        return np.zeros((0, 5, 3)), np.zeros(0, int), np.zeros(0)
    return np.concatenate(out_nodes), np.concatenate(out_n), np.concatenate(out_r)

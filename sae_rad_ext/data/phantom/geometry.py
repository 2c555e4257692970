"""Closed-form ray geometry for the phantom chest: parallel rays, chord intervals, tube splatting.

Patient coordinates are centimetres: ``x`` to the patient's left, ``y`` anterior, ``z`` superior.
Every ray is horizontal (views are rotated about the vertical axis and rolled about the ray), so a
generalised cylinder whose horizontal cross-section at height ``z`` is an axis-aligned ellipse has a
closed-form chord, and so has any rotated ellipsoid. Objects are intersected as intervals ``[t0, t1]``
along each ray; intersections of convex sets stay intervals, so region lengths follow exactly from
inclusion–exclusion. Thin tubes (ribs, vessels, wires) are splatted as line densities and blurred into
their chord profile (exactly: convolution with the tube's disk, whose line integrals are the cylinder's
chords; here a Gaussian of equal second moment, for speed).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

Interval = tuple[np.ndarray, np.ndarray]


@dataclass
class ViewGrid:
    """A parallel-beam view: pixel centres ``o = s*e_u + v*e_v + shift`` and direction ``d``."""

    size: int
    fov: float
    e_u: np.ndarray
    e_v: np.ndarray
    d: np.ndarray
    shift: np.ndarray

    @property
    def px(self) -> float:
        return self.fov / self.size

    def coords(self, r0: int = 0, r1: int | None = None, c0: int = 0, c1: int | None = None):
        r1 = self.size if r1 is None else r1
        c1 = self.size if c1 is None else c1
        s = -self.fov / 2 + (np.arange(c0, c1) + 0.5) * self.px
        v = self.fov / 2 - (np.arange(r0, r1) + 0.5) * self.px
        o = (
            s[None, :, None] * self.e_u[None, None, :]
            + v[:, None, None] * self.e_v[None, None, :]
            + self.shift[None, None, :]
        )
        return o[..., 0], o[..., 1], o[..., 2]

    def to_pixel(self, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Project 3-D points ``[..., 3]`` to (row, col) floating pixel coordinates."""
        q = np.asarray(p, dtype=np.float64) - self.shift
        s = q @ self.e_u
        v = q @ self.e_v
        col = (s + self.fov / 2) / self.px - 0.5
        row = (self.fov / 2 - v) / self.px - 0.5
        return row, col

    def bbox(self, center: np.ndarray, radius: float, pad: int = 2) -> tuple[int, int, int, int] | None:
        row, col = self.to_pixel(np.asarray(center))
        rr = radius / self.px + pad
        r0, r1 = int(max(0, np.floor(row - rr))), int(min(self.size, np.ceil(row + rr) + 1))
        c0, c1 = int(max(0, np.floor(col - rr))), int(min(self.size, np.ceil(col + rr) + 1))
        if r0 >= r1 or c0 >= c1:
            return None
        return r0, r1, c0, c1


def make_view(size: int, fov: float, kind: str, yaw: float = 0.0, roll: float = 0.0,
              shift=(0.0, 0.0, 0.0)) -> ViewGrid:
    """``kind`` 'frontal' (image right = patient left) or 'lateral' (image left = anterior)."""
    if kind == "frontal":
        e_u, d = np.array([1.0, 0, 0]), np.array([0, 1.0, 0])
    else:
        e_u, d = np.array([0, -1.0, 0]), np.array([1.0, 0, 0])
    e_v = np.array([0, 0, 1.0])
    cr, sr = np.cos(roll), np.sin(roll)
    e_u, e_v = cr * e_u + sr * e_v, -sr * e_u + cr * e_v  # roll about the ray keeps rays horizontal
    cy, sy = np.cos(yaw), np.sin(yaw)
    rz = np.array([[cy, -sy, 0], [sy, cy, 0], [0, 0, 1.0]])
    return ViewGrid(size, fov, rz @ e_u, rz @ e_v, rz @ d, np.asarray(shift, dtype=np.float64))


EMPTY = 1e9


def ellipsoid_interval(ox, oy, oz, d, center, axes, rot=None) -> Interval:
    """Entry/exit parameters of rays through the ellipsoid ``|R^T (p - c) / axes| <= 1``."""
    rot = np.eye(3) if rot is None else rot
    ax = np.asarray(axes, dtype=np.float64)
    q = [ox - center[0], oy - center[1], oz - center[2]]
    q0 = [(rot[0, k] * q[0] + rot[1, k] * q[1] + rot[2, k] * q[2]) / ax[k] for k in range(3)]
    v = (rot.T @ d) / ax
    a = float(v @ v)
    b = q0[0] * v[0] + q0[1] * v[1] + q0[2] * v[2]
    c = q0[0] ** 2 + q0[1] ** 2 + q0[2] ** 2 - 1.0
    disc = b * b - a * c
    ok = disc > 0
    sq = np.sqrt(np.where(ok, disc, 0.0))
    t0 = np.where(ok, (-b - sq) / a, EMPTY)
    t1 = np.where(ok, (-b + sq) / a, -EMPTY)
    return t0, t1


def section_interval(ox, oy, d, cx, cy, a, b) -> Interval:
    """Rays (horizontal) through the ellipse ``((x-cx)/a)^2 + ((y-cy)/b)^2 <= 1`` at their own height.

    ``cx, cy, a, b`` broadcast against the ray arrays (usually functions of each row's height).
    """
    a = np.maximum(a, 1e-6)
    b = np.maximum(b, 1e-6)
    px, py = (ox - cx) / a, (oy - cy) / b
    vx, vy = d[0] / a, d[1] / b
    qa = vx * vx + vy * vy
    qb = px * vx + py * vy
    qc = px * px + py * py - 1.0
    disc = qb * qb - qa * qc
    ok = disc > 0
    sq = np.sqrt(np.where(ok, disc, 0.0))
    return np.where(ok, (-qb - sq) / qa, EMPTY), np.where(ok, (-qb + sq) / qa, -EMPTY)


def inter(*ivs: Interval) -> Interval:
    t0 = ivs[0][0]
    t1 = ivs[0][1]
    for a, b in ivs[1:]:
        t0 = np.maximum(t0, a)
        t1 = np.minimum(t1, b)
    return t0, t1


def length(iv: Interval) -> np.ndarray:
    return np.maximum(iv[1] - iv[0], 0.0)


def add_ellipsoid(P: np.ndarray, view: ViewGrid, center, axes, weight: float, rot=None,
                  cap: float | None = None) -> np.ndarray:
    """``P += weight * chord`` through one ellipsoid, evaluated on its projected bounding box only.

    Returns the chord image (zeros outside the box) for masks.
    """
    out = np.zeros_like(P)
    box = view.bbox(np.asarray(center, dtype=np.float64), float(np.max(axes)))
    if box is None:
        return out
    r0, r1, c0, c1 = box
    ox, oy, oz = view.coords(r0, r1, c0, c1)
    ch = length(ellipsoid_interval(ox, oy, oz, view.d, np.asarray(center, dtype=np.float64), axes, rot))
    out[r0:r1, c0:c1] = ch
    P[r0:r1, c0:c1] += weight * (ch if cap is None else np.minimum(ch, cap))
    return out


def rot_xyz(rx: float = 0.0, ry: float = 0.0, rz: float = 0.0) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = np.cos(rx), np.sin(rx), np.cos(ry), np.sin(ry), np.cos(rz), np.sin(rz)
    mx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    my = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    mz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return mz @ my @ mx


# ----------------------------------------------------------------------------- tubes by splatting
def polyline_points(nodes: np.ndarray, step: float) -> tuple[np.ndarray, np.ndarray]:
    """Resample a 3-D polyline at ``step`` cm; returns points ``[N, 3]`` and arc weights ``[N]``."""
    nodes = np.asarray(nodes, dtype=np.float64)
    seg = np.diff(nodes, axis=0)
    seglen = np.linalg.norm(seg, axis=1)
    k = np.maximum(1, np.ceil(seglen / step).astype(int))
    idx = np.repeat(np.arange(len(seg)), k)
    start = np.repeat(np.cumsum(k) - k, k)
    t = (np.arange(idx.size) - start + 0.5) / k[idx]
    return nodes[idx] + t[:, None] * seg[idx], (seglen / k)[idx]


def smooth_curve(ctrl: np.ndarray, n: int = 48) -> np.ndarray:
    """Catmull–Rom spline through control points (returns ``n`` nodes)."""
    ctrl = np.asarray(ctrl, dtype=np.float64)
    p = np.vstack([ctrl[:1], ctrl, ctrl[-1:]])
    m = len(ctrl) - 1
    u = np.linspace(0, m, n)
    i = np.minimum(u.astype(int), m - 1)
    t = (u - i)[:, None]
    p0, p1, p2, p3 = p[i], p[i + 1], p[i + 2], p[i + 3]
    return 0.5 * ((2 * p1) + (-p0 + p2) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t**2
                  + (-p0 + 3 * p1 - 3 * p2 + p3) * t**3)


def splat(view: ViewGrid, pts: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Bilinear splat of point weights (cm^3 of attenuation) onto the view, per pixel area."""
    img = np.zeros((view.size + 2) * (view.size + 2))
    if len(pts) == 0:
        return img.reshape(view.size + 2, view.size + 2)[1:-1, 1:-1]
    row, col = view.to_pixel(pts)
    r0, c0 = np.floor(row).astype(int), np.floor(col).astype(int)
    fr, fc = row - r0, col - c0
    n = view.size + 2
    for dr, dc, w in ((0, 0, (1 - fr) * (1 - fc)), (0, 1, (1 - fr) * fc), (1, 0, fr * (1 - fc)), (1, 1, fr * fc)):
        rr, cc = r0 + dr + 1, c0 + dc + 1
        ok = (rr >= 0) & (rr < n) & (cc >= 0) & (cc < n)
        img += np.bincount(rr[ok] * n + cc[ok], weights=(weights * w)[ok], minlength=n * n)
    return img.reshape(n, n)[1:-1, 1:-1] / (view.px**2)


def disk_blur(img: np.ndarray, radius_px: float) -> np.ndarray:
    """Blur a splatted centreline into a tube's chord profile.

    The exact kernel is the disk of the tube's radius (its line integrals are the cylinder's chords);
    a Gaussian with the same second moment (sigma = R / 2) is used for speed (separable filter).
    """
    return ndimage.gaussian_filter(img, max(radius_px / 2.0, 0.45), truncate=3.0)


def tube_projection(view: ViewGrid, curves: list[np.ndarray], radius: float, mu: float | list[float],
                    hollow: float = 0.0) -> np.ndarray:
    """Line integral of tubes of ``radius`` (cm) and attenuation ``mu`` along curves (lists of nodes).

    ``mu`` may be one value per curve. ``hollow`` in [0, 1): fraction of the radius that is a
    lower-density core (cortex / tube-wall look).
    """
    if not curves:
        return np.zeros((view.size, view.size))
    mus = [mu] * len(curves) if np.isscalar(mu) else list(mu)
    pts, wts = zip(*(polyline_points(c, view.px * 0.5) for c in curves), strict=True)
    wts = [w * m for w, m in zip(wts, mus, strict=True)]
    pts, wts = np.concatenate(pts), np.concatenate(wts)
    mu = 1.0
    line = splat(view, pts, wts)
    rpx = radius / view.px
    out = disk_blur(line, rpx) * (np.pi * radius**2 * mu)
    if hollow > 0:
        ri = radius * hollow
        out -= disk_blur(line, ri / view.px) * (np.pi * ri**2 * mu * 0.75)
    return out

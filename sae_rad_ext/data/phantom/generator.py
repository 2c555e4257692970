"""Planted-truth phantom chest radiograph studies.

    from sae_rad_ext.data.phantom.generator import generate_studies
    for study in generate_studies(100, seed=0, image_size=224):
        study.frontal, study.labels, study.metadata["masks"]["frontal"]["pleural_effusion"]

Each study is seeded independently from ``(seed, index)``: study ``i`` is reproducible without generating
``0..i-1`` (``generate_studies(1, seed, start=i)``) and generation parallelises. The 3-D phantom lives in
``phantom_anatomy``, projection in ``phantom_render``, reports in ``phantom_reports``; writing a
``datasets`` folder and the MIMIC-CXR-JPG layout in ``phantom_io``.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from datetime import date, timedelta
from typing import Any

import numpy as np

from sae_rad_ext.data.phantom.anatomy import (
    SGN,
    SIDES,
    FindingState,
    Patient,
    heart_geometry,
    sample_patient,
    vessel_tree,
)
from sae_rad_ext.data.phantom.render import render_view, sample_acquisition
from sae_rad_ext.data.phantom.reports import size_word, write_report
from sae_rad_ext.data.study import FINDINGS, Study
from sae_rad_ext.evaluation.splits import assign_split

DEFAULT_FINDING_PROBS: dict[str, float] = {
    "cardiomegaly": 0.3, "pleural_effusion": 0.3, "pneumothorax": 0.2, "lung_opacity": 0.3,
    "pacemaker": 0.2, "support_lines_tubes": 0.3,
}
MASK_KEYS = (*FINDINGS, "ett", "ng_tube", "central_line", "heart", "lungs")


def _rng(seed: int, index: int, stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(index), int(stream)]))


def split_of(patient_id: str, fractions: tuple[float, float] = (0.8, 0.1)) -> str:
    """The phantoms' data split of a patient: ``"train"`` / ``"validate"`` / ``"test"`` with the given
    train and validate fractions (the rest is test), by the project's patient split with the empty salt
    (:func:`sae_rad_ext.evaluation.splits.assign_split`)."""
    train, validate = fractions
    return assign_split(patient_id, {"train": train, "validate": validate, "test": 1.0 - train - validate})


# --------------------------------------------------------------------------------------- states
def _opacity_blob(rng: np.random.Generator, p: Patient, side: str | None = None):
    side = side or (SIDES[int(rng.integers(2))])
    zone = ("upper", "middle", "lower")[int(rng.integers(3))]
    dome = p.dome_right if side == "right" else p.dome_left
    z = {"upper": p.lung_top - 7.5, "middle": p.carina_z - 4.5, "lower": dome + 2.2}[zone] + rng.normal(0, 0.7)
    cx, _, a, _ = p.lung_section(side, np.array([z]))
    x = float(cx[0]) + SGN[side] * float(a[0]) * rng.uniform(-0.1, 0.25)
    c = np.array([x, rng.uniform(-3.0, 2.0), z])
    ax = np.array([rng.uniform(3.0, 4.3), rng.uniform(2.8, 4.2), rng.uniform(3.0, 4.5)])
    if zone == "upper":
        ax = ax * 0.85
    return side, zone, c, ax


def sample_state(rng: np.random.Generator, p: Patient, probs: dict[str, float]) -> FindingState:
    st = FindingState()
    if rng.random() < probs.get("cardiomegaly", 0):
        st.cardiomegaly = float(rng.uniform(0.35, 0.6))
    if rng.random() < probs.get("pleural_effusion", 0):
        u = rng.random()
        sides = ["right"] if u < 0.4 else ["left"] if u < 0.75 else ["right", "left"]
        st.effusion = {s: float(rng.uniform(0.15, 1.0)) for s in sides}
    if rng.random() < probs.get("pneumothorax", 0):
        st.pneumothorax = {SIDES[int(rng.integers(2))]: float(rng.uniform(0.2, 1.0))}
    if rng.random() < probs.get("lung_opacity", 0):
        st.opacity = [_opacity_blob(rng, p)]
        if rng.random() < 0.3:
            st.opacity.append(_opacity_blob(rng, p))
    if rng.random() < probs.get("pacemaker", 0):
        st.pacemaker = "pacemaker" if rng.random() < 0.75 else "icd"
        st.pacemaker_side = "left" if rng.random() < 0.85 else "right"
    if rng.random() < probs.get("support_lines_tubes", 0):
        while st.ett is None and not st.ng_tube and st.central_line is None:
            if rng.random() < 0.5:
                st.ett = float(rng.uniform(2.5, 6.0))
            st.ng_tube = bool(rng.random() < 0.5)
            if rng.random() < 0.6:
                st.central_line = float(p.carina_z - rng.uniform(1.5, 6.5))
                st.central_side = "right" if rng.random() < 0.8 else "left"
    return st


def _scaled(v: dict[str, float], f: float) -> dict[str, float]:
    return {k: float(np.clip(x * f, 0.15, 1.0)) for k, x in v.items()}


def prior_state(rng: np.random.Generator, p: Patient, cur: FindingState, probs: dict[str, float]) -> FindingState:
    """The same patient earlier: each finding new / increased / decreased / resolved / unchanged."""
    pr = copy.deepcopy(cur)
    for key in ("effusion", "pneumothorax"):
        now = getattr(cur, key)
        u = rng.random()
        if now:
            setattr(pr, key, {} if u < 0.3 else _scaled(now, 0.45) if u < 0.5 else _scaled(now, 1.8) if u < 0.7 else now)
        elif u < 0.25:
            setattr(pr, key, getattr(sample_state(rng, p, {"pleural_effusion": 1, "pneumothorax": 1}), key))
    u = rng.random()
    if cur.opacity:
        pr.opacity = [] if u < 0.3 else [(s, z, c, a * (0.6 if u < 0.5 else 1.45 if u < 0.7 else 1.0))
                                          for s, z, c, a in cur.opacity]
    elif u < 0.25:
        pr.opacity = [_opacity_blob(rng, p)]
    if cur.cardiomegaly > 0 and rng.random() < 0.1:
        pr.cardiomegaly = 0.0
    if cur.pacemaker and rng.random() < 0.15:
        pr.pacemaker = None
    lines = cur.ett is not None or cur.ng_tube or cur.central_line is not None
    if lines and rng.random() < 0.4:
        pr.ett, pr.ng_tube, pr.central_line = None, False, None
    elif not lines and rng.random() < 0.2:
        t = sample_state(rng, p, {"support_lines_tubes": 1})
        pr.ett, pr.ng_tube, pr.central_line, pr.central_side = t.ett, t.ng_tube, t.central_line, t.central_side
    return pr


def severity(st: FindingState) -> dict[str, float]:
    return {
        "cardiomegaly": st.cardiomegaly,
        "pleural_effusion": max(st.effusion.values(), default=0.0),
        "pneumothorax": max(st.pneumothorax.values(), default=0.0),
        "lung_opacity": float(sum(np.mean(a) for *_, a in st.opacity) / 4.0),
        "pacemaker": 1.0 if st.pacemaker else 0.0,
        "support_lines_tubes": float((st.ett is not None) or st.ng_tube or (st.central_line is not None)),
    }


def truth_summary(p: Patient, st: FindingState, ctr: float | None) -> dict:
    cl = st.central_line
    loc = None if cl is None else ("superior vena cava" if cl > p.carina_z - 2.5 else
                                   "cavoatrial junction" if cl > p.carina_z - 5.0 else "right atrium")
    return {
        "severity": severity(st), "effusion": dict(st.effusion), "pneumothorax": dict(st.pneumothorax),
        "opacity": [(s, z) for s, z, *_ in st.opacity], "pacemaker": st.pacemaker, "pacemaker_side": st.pacemaker_side,
        "ett": st.ett, "ng_tube": st.ng_tube, "central_line": cl, "central_side": st.central_side,
        "central_loc": loc, "ctr": ctr,
    }


def lung_inside(p: Patient, st: FindingState):
    """Membership test for points in the aerated (collapsed, if pneumothorax) lungs."""
    hc, hax, hrot = heart_geometry(p, st)

    def inside(pts: np.ndarray) -> np.ndarray:
        z = pts[:, 2]
        ok = np.zeros(len(pts), bool)
        for side in SIDES:
            ptx = st.pneumothorax.get(side, 0.0)
            r, dz = (1.5 + 5.0 * ptx, 1.0 + 4.0 * ptx) if ptx > 0 else (0.0, 0.0)
            cx, cy, a, b = p.lung_section(side, z, r, dz, shrink=0.4)
            m = ((pts[:, 0] - cx) / np.maximum(a, 1e-6)) ** 2 + ((pts[:, 1] - cy) / np.maximum(b, 1e-6)) ** 2 < 1
            m &= ~p.below_dome(side, pts)
            ok |= m
        q = ((pts - hc) @ hrot) / hax
        return ok & ((q**2).sum(1) > 1.1)

    return inside


# --------------------------------------------------------------------------------------- studies
def _render(p: Patient, st: FindingState, view: str, size: int, rng: np.random.Generator, ves=None):
    ves = ves if ves is not None else vessel_tree(p, lung_inside(p, st), np.random.default_rng(p.vessel_seed))
    acq = sample_acquisition(rng, view)
    img, masks, info = render_view(p, st, acq, size, rng, ves)
    out: dict[str, np.ndarray] = {}
    z = np.zeros((size, size), bool)
    sev = severity(st)
    out["cardiomegaly"] = masks["heart"] if sev["cardiomegaly"] > 0 else z
    for k in ("pleural_effusion", "pneumothorax", "lung_opacity"):
        out[k] = masks.get(f"{k}_right", z) | masks.get(f"{k}_left", z)
    out["pacemaker"] = masks.get("pacemaker", z)
    for k in ("ett", "ng_tube", "central_line"):
        out[k] = masks.get(k, z)
    out["support_lines_tubes"] = out["ett"] | out["ng_tube"] | out["central_line"]
    out["heart"], out["lungs"] = masks["heart"], masks["lungs"]
    return img, {k: out[k].astype(np.uint8) for k in MASK_KEYS}, info


def make_study(seed: int, index: int, *, image_size: int = 224, lateral_prob: float = 0.5,
               prior_prob: float = 0.3, finding_probs: dict[str, float] | None = None,
               force: dict[str, bool] | None = None) -> Study:
    """Study ``index`` of the phantom stream ``seed`` (independent of all other indices).

    ``force`` ({finding: present}) plants or removes findings *after* every other draw (views, prior,
    acquisition, noise), so two calls that differ only in ``force`` differ only in those findings.
    """
    probs = {**DEFAULT_FINDING_PROBS, **(finding_probs or {})}
    rng = _rng(seed, index, 0)
    pid = f"phantom-{seed}-{index}"
    p = sample_patient(_rng(seed, index, 1), pid)
    st = sample_state(rng, p, probs)
    has_prior = rng.random() < prior_prob
    pst = prior_state(rng, p, st, probs) if has_prior else None
    lines = st.ett is not None or st.central_line is not None
    frontal_view = "AP" if (lines or rng.random() < 0.25) else "PA"
    has_lat = frontal_view == "PA" and rng.random() < lateral_prob
    age = int(rng.integers(25, 90))
    d0 = date(2150, 1, 1) + timedelta(days=int(rng.integers(0, 3000)))
    prior_d = d0 - timedelta(days=int(rng.integers(1, 400))) if has_prior else None
    report_rng = _rng(seed, index, 2)
    img_rng = _rng(seed, index, 3)
    if force:
        st = force_findings(_rng(seed, index, 5), p, st, force)

    ves = vessel_tree(p, lung_inside(p, st), np.random.default_rng(p.vessel_seed))
    frontal, fmasks, finfo = _render(p, st, frontal_view, image_size, img_rng, ves)
    masks = {"frontal": fmasks}
    lateral = None
    if has_lat:
        lateral, lmasks, _ = _render(p, st, "LATERAL", image_size, img_rng, ves)
        masks["lateral"] = lmasks
    truth = truth_summary(p, st, finfo.get("ctr"))
    prior_img = prior_truth = prior_report = None
    pinfo = {}
    if pst is not None:
        prior_img, pmasks, pinfo = _render(p, pst, "AP" if rng.random() < 0.4 else "PA", image_size, img_rng)
        masks["prior_frontal"] = pmasks
        prior_truth = truth_summary(p, pst, pinfo.get("ctr"))
        prep = write_report(prior_truth, None, _rng(seed, index, 4), views=["PA"], age=age, sex=p.sex, prior_date=None)
        prior_report = prep["findings"]
    rep = write_report(truth, prior_truth, report_rng, views=[frontal_view] + (["LATERAL"] if has_lat else []),
                       age=age, sex=p.sex, prior_date=prior_d.isoformat() if prior_d else None)
    labels: dict[str, int | None] = {k: int(truth["severity"][k] > 0) for k in FINDINGS}
    labels["no_finding"] = int(not any(labels[k] for k in ("cardiomegaly", "pleural_effusion", "pneumothorax",
                                                              "lung_opacity")))
    tips = {k.removeprefix("tip_"): v for k, v in finfo.items() if k.startswith("tip_")}
    meta = {
        "source": "phantom", "seed": seed, "index": index, "patient_id": pid, "split": split_of(pid),
        "view_position": frontal_view, "lateral_view": "LATERAL" if has_lat else None,
        "study_date": d0.isoformat(), "prior_date": prior_d.isoformat() if prior_d else None,
        "age": age, "sex": p.sex, "image_size": image_size, "masks": masks,
        "ctr": finfo.get("ctr"), "prior_ctr": pinfo.get("ctr"), "tips_px": tips,
        "ett_cm_above_carina": st.ett, "central_line_tip": truth["central_loc"],
        "pacemaker_kind": st.pacemaker, "pacemaker_side": st.pacemaker_side if st.pacemaker else None,
        "effusion": {k: {"size": v, "grade": size_word(v)} for k, v in st.effusion.items()},
        "pneumothorax": {k: {"size": v, "grade": size_word(v)} for k, v in st.pneumothorax.items()},
        "opacity": [{"side": s, "zone": z} for s, z, *_ in st.opacity],
        "severity": truth["severity"], "prior_severity": prior_truth["severity"] if prior_truth else None,
        "change": rep["changes"], "report_labels": rep["report_labels"],
    }
    return Study(
        study_id=pid, frontal=frontal, lateral=lateral, prior_frontal=prior_img, prior_report=prior_report,
        indication=rep["indication"], technique=rep["technique"], comparison=rep["comparison"],
        findings=rep["findings"], impression=rep["impression"], labels=labels, metadata=meta,
    )


_FINDING_FIELDS = {"cardiomegaly": ("cardiomegaly",), "pleural_effusion": ("effusion",),
                   "pneumothorax": ("pneumothorax",), "lung_opacity": ("opacity",),
                   "pacemaker": ("pacemaker", "pacemaker_side"),
                   "support_lines_tubes": ("ett", "ng_tube", "central_line", "central_side")}


def force_findings(rng: np.random.Generator, p: Patient, st: FindingState, force: dict[str, bool]) -> FindingState:
    """A copy of ``st`` with each ``force`` finding planted (kept if already there, else sampled) or removed."""
    bad = sorted(set(force) - set(_FINDING_FIELDS))
    if bad:
        raise ValueError(f"unknown finding(s) {bad} in force; expected some of {list(_FINDING_FIELDS)}")
    out, empty = copy.deepcopy(st), FindingState()
    for k, present in force.items():
        if present and severity(out)[k] <= 0:
            new = sample_state(rng, p, {k: 1.0})
            for f in _FINDING_FIELDS[k]:
                setattr(out, f, getattr(new, f))
        elif not present:
            for f in _FINDING_FIELDS[k]:
                setattr(out, f, copy.deepcopy(getattr(empty, f)))
    return out


def make_study_pair(seed: int, index: int, finding: str, *, image_size: int = 224, lateral_prob: float = 0.5,
                    prior_prob: float = 0.3, finding_probs: dict[str, float] | None = None) -> tuple[Study, Study]:
    """``(absent, present)``: study ``index`` of stream ``seed`` without and with ``finding`` planted.

    Same patient, views, acquisition, noise, prior and other findings; the prompt sections (indication,
    technique, comparison) of ``present`` are set to ``absent``'s so the two prompts tokenize alike.
    Only the image(s) of the current study, the report and the labels differ. Ids end in ``-without-<finding>``
    / ``-with-<finding>``; ``metadata["pair"]`` = ``{"finding", "present"}``.
    """
    kw = dict(image_size=image_size, lateral_prob=lateral_prob, prior_prob=prior_prob, finding_probs=finding_probs)
    absent = make_study(seed, index, force={finding: False}, **kw)
    present = make_study(seed, index, force={finding: True}, **kw)
    present.indication, present.technique, present.comparison = absent.indication, absent.technique, absent.comparison
    for s, on in ((absent, False), (present, True)):
        s.study_id = f"{s.study_id}-{'with' if on else 'without'}-{finding}"
        s.metadata["pair"] = {"finding": finding, "present": on}
    return absent, present


def generate_studies(n: int, seed: int = 0, *, start: int = 0, image_size: int = 224, lateral_prob: float = 0.5,
                     prior_prob: float = 0.3, finding_probs: dict[str, float] | None = None) -> Iterator[Study]:
    """Yield studies ``start .. start+n-1`` of the phantom stream ``seed`` (deterministic pixels)."""
    for i in range(start, start + n):
        yield make_study(seed, i, image_size=image_size, lateral_prob=lateral_prob, prior_prob=prior_prob,
                         finding_probs=finding_probs)


_PHANTOM_SPEC_KEYS = {
    "n": int,
    "seed": int,
    "start": int,
    "image_size": int,
    "lateral_prob": float,
    "prior_prob": float,
}


def parse_phantom_source(source: str) -> dict[str, Any]:
    """Parse a CLI study source ``phantom:N[,seed=S][,start=I][,image_size=PX][,lateral_prob=P][,prior_prob=P]``
    (``N`` may also be written ``n=N``) into ``generate_studies`` keyword arguments plus ``n`` (absent when
    not given). Raises ``ValueError`` naming the bad part and the expected form."""
    if not source.startswith("phantom:"):
        raise ValueError(f"not a phantom source: {source!r}; expected 'phantom:N[,seed=S,...]'")
    out: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in source[len("phantom:") :].split(","))):
        key, sep, val = part.partition("=")
        if not sep:
            key, val = "n", part
        cast = _PHANTOM_SPEC_KEYS.get(key)
        try:
            if cast is None or not val:
                raise ValueError
            out[key] = cast(val)
        except ValueError:
            raise ValueError(
                f"bad phantom option {part!r} in {source!r}; expected "
                "phantom:N[,seed=S][,start=I][,image_size=PX][,lateral_prob=P][,prior_prob=P]"
            ) from None
    return out

"""Radiology reports for phantom studies, consistent with the planted truth.

``write_report`` turns a planted-truth summary (and the prior's, if any) into INDICATION / TECHNIQUE /
COMPARISON / FINDINGS / IMPRESSION with varied phrasing: many templates and synonyms, negations of absent
findings (sometimes omitted), hedged language for borderline findings and longitudinal language
(new / increased / decreased / resolved / unchanged) when a prior exists. It also returns what the
FINDINGS text asserts per finding (1 / 0 / -1 / None) — the target for the labeler's tests.
"""

from __future__ import annotations

import numpy as np

from sae_rad_ext.data.study import FINDINGS

SIZE_WORDS = {"trace": ["trace", "tiny"], "small": ["small", "small", "mild"], "moderate": ["moderate", "moderate-sized"],
              "large": ["large", "large", "extensive"]}
ZONE_WORDS = {"upper": ["upper lobe", "upper lung", "apical"], "middle": ["mid lung", "perihilar"],
              "lower": ["lower lobe", "lung base", "basilar", "lower lung"]}


def size_word(x: float) -> str:
    return "trace" if x < 0.25 else "small" if x < 0.45 else "moderate" if x < 0.75 else "large"


def _c(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def _sides(d: dict[str, float]) -> str:
    s = [k for k, v in d.items() if v > 0]
    return "bilateral" if len(s) == 2 else s[0]


def _cap(s: str) -> str:
    return s[0].upper() + s[1:] if s else s


def _change(cur: float, prev: float | None) -> str | None:
    if prev is None:
        return None
    if cur > 0 and prev <= 0:
        return "new"
    if cur <= 0 and prev > 0:
        return "resolved"
    if cur <= 0:
        return "absent"
    if cur > prev + 0.12:
        return "increased"
    if cur < prev - 0.12:
        return "decreased"
    return "unchanged"


def longitudinal_changes(truth: dict, prior: dict | None) -> dict[str, str]:
    """Per finding: new / increased / decreased / resolved / unchanged (absent in both: 'absent')."""
    if prior is None:
        return {}
    out = {}
    for k in FINDINGS:
        out[k] = _change(truth["severity"][k], prior["severity"][k]) or "absent"
    return out


def _effusion(rng, truth, prior, change):
    eff = truth["effusion"]
    if not any(v > 0 for v in eff.values()):
        if change == "resolved":
            side = _sides(prior["effusion"])
            eff_s, has = ("effusions", "have") if side == "bilateral" else ("effusion", "has")
            return _c(rng, [f"The previously seen {side} pleural {eff_s} {has} resolved.",
                            f"Interval resolution of the {side} pleural {eff_s}.",
                            f"No residual {side} pleural {eff_s}."]), 0
        if rng.random() < 0.85:
            return _c(rng, ["No pleural effusion.", "There is no pleural effusion.", "No pleural effusions.",
                            "The costophrenic angles are sharp.", "No effusion is seen.",
                            "There is no evidence of pleural effusion."]), 0
        return None, None
    side = _sides(eff)
    size = size_word(max(eff.values()))
    sw = _c(rng, SIZE_WORDS[size])
    plural = "effusions" if side == "bilateral" else "effusion"
    a_, there, has = ("", "There are", "have") if side == "bilateral" else ("a ", "There is a", "has")
    if size == "trace" and rng.random() < 0.7:
        return _c(rng, [f"Possible trace {side} pleural {plural}.",
                        f"Blunting of the {side} costophrenic {'angles' if a_ == '' else 'angle'} may reflect tiny {plural}.",
                        f"Cannot exclude small {side} pleural {plural}.",
                        f"Questionable small {side} pleural {plural}."]), -1
    if change == "new":
        return _c(rng, [f"New {sw} {side} pleural {plural}.", f"Interval development of {a_}{sw} {side} pleural {plural}.",
                        f"{there} new {sw} {side} pleural {plural}."]), 1
    if change == "increased":
        return _c(rng, [f"Increased {side} pleural {plural}, now {sw}.", f"Interval increase in the {side} pleural {plural}.",
                        f"The {side} pleural {plural} {has} enlarged."]), 1
    if change == "decreased":
        return _c(rng, [f"Decreased {side} pleural {plural}, now {sw}.", f"Interval decrease in the {sw} {side} pleural {plural}.",
                        f"The {side} pleural {plural} {has} decreased, now {sw}."]), 1
    if change == "unchanged":
        return _c(rng, [f"Unchanged {sw} {side} pleural {plural}.", f"Stable {sw} {side} pleural {plural}.",
                        f"{_cap(sw)} {side} pleural {plural}, unchanged."]), 1
    base = [f"{_cap(sw)} {side} pleural {plural}.", f"{there} {sw} {side} pleural {plural}.",
            f"{_cap(side)} pleural {plural}, {sw} in size."]
    if size in ("moderate", "large") and side != "bilateral":
        base.append(f"{_cap(sw)} {side} pleural effusion layering along the lateral chest wall with a meniscus.")
    return _c(rng, base), 1


def _ptx(rng, truth, prior, change):
    ptx = truth["pneumothorax"]
    if not any(v > 0 for v in ptx.values()):
        if change == "resolved":
            side = _sides(prior["pneumothorax"])
            return _c(rng, [f"Resolution of the previously seen {side} pneumothorax.",
                            f"The {side} pneumothorax has resolved.", f"No residual {side} pneumothorax."]), 0
        if rng.random() < 0.85:
            return _c(rng, ["No pneumothorax.", "There is no pneumothorax.", "No pneumothorax is seen.",
                            "No evidence of pneumothorax."]), 0
        return None, None
    side = _sides(ptx)
    size = size_word(max(ptx.values()))
    sw = {"trace": "tiny", "small": "small", "moderate": "moderate", "large": "large"}[size]
    if size == "trace" and rng.random() < 0.6:
        return _c(rng, [f"Possible tiny {side} apical pneumothorax.", f"A tiny {side} pneumothorax cannot be excluded."]), -1
    line = _c(rng, ["", " with a visible pleural line", " with the visceral pleural line displaced from the chest wall"])
    if change == "new":
        return _c(rng, [f"New {sw} {side} pneumothorax{line}.", f"Interval development of a {sw} {side} pneumothorax."]), 1
    if change == "increased":
        return _c(rng, [f"Increased {side} pneumothorax, now {sw}.", f"The {side} pneumothorax has increased in size."]), 1
    if change == "decreased":
        return _c(rng, [f"Decreased {side} pneumothorax, now {sw}.", f"Interval decrease in the {side} pneumothorax."]), 1
    if change == "unchanged":
        return _c(rng, [f"Unchanged {sw} {side} pneumothorax.", f"Stable {sw} {side} pneumothorax."]), 1
    return _c(rng, [f"{_cap(sw)} {side} pneumothorax{line}.", f"There is a {sw} {side} pneumothorax{line}.",
                    f"{_cap(sw)} {side} apicolateral pneumothorax."]), 1


def _opacity(rng, truth, prior, change):
    ops = truth["opacity"]
    if not ops:
        if change == "resolved":
            side, zone = prior["opacity"][0]
            return _c(rng, [f"Interval resolution of the {side} {_c(rng, ZONE_WORDS[zone])} opacity.",
                            f"The previously noted {side} consolidation has cleared."]), 0
        if rng.random() < 0.8:
            return _c(rng, ["The lungs are clear.", "No focal consolidation.", "Lungs are clear without focal consolidation.",
                            "There is no focal airspace opacity.", "No consolidation to suggest pneumonia."]), 0
        return None, None
    side, zone = ops[0]
    sides = {s for s, _ in ops}
    side = "bilateral" if len(sides) == 2 else side
    zw = _c(rng, ZONE_WORDS[zone])
    noun = _c(rng, ["opacity", "consolidation", "airspace opacity", "airspace consolidation"])
    if change == "new":
        return _c(rng, [f"New {side} {zw} {noun}.", f"Interval development of {side} {zw} {noun}, concerning for pneumonia."]), 1
    if change == "increased":
        return _c(rng, [f"Worsening {side} {zw} {noun}.", f"Increased {side} {zw} {noun}."]), 1
    if change == "decreased":
        return _c(rng, [f"Improving {side} {zw} {noun}.", f"Decreased {side} {zw} {noun}."]), 1
    if change == "unchanged":
        return _c(rng, [f"Persistent {side} {zw} {noun}.", f"Unchanged {side} {zw} {noun}."]), 1
    return _c(rng, [f"{_cap(side)} {zw} {noun}, which may represent pneumonia.",
                    f"Focal {noun} in the {side} {zw}.", f"There is {side} {zw} {noun} concerning for pneumonia.",
                    f"{_cap(side)} {zw} {noun} may reflect atelectasis or infection."]), 1


def _heart(rng, truth, prior, change):
    if truth["severity"]["cardiomegaly"] <= 0:
        if rng.random() < 0.8:
            return _c(rng, ["Heart size is normal.", "The heart is normal in size.", "Normal heart size.",
                            "The cardiac silhouette is not enlarged.", "No cardiomegaly."]), 0
        return None, None
    deg = "moderate" if truth["ctr"] > 0.6 else "mild"
    if change == "new":
        return _c(rng, ["The heart is now enlarged.", f"Interval enlargement of the cardiac silhouette, now {deg} cardiomegaly."]), 1
    if change in ("unchanged", "increased", "decreased"):
        return _c(rng, [f"Stable {deg} cardiomegaly.", "Unchanged cardiomegaly.", "The heart remains enlarged."]), 1
    return _c(rng, [f"{_cap(deg)} cardiomegaly.", "The heart is enlarged.", "Cardiomegaly.",
                    "The cardiac silhouette is enlarged.", f"There is {deg} enlargement of the cardiac silhouette."]), 1


def _devices(rng, truth, prior, changes):
    out = []
    pm = truth["pacemaker"]
    if pm:
        side = truth["pacemaker_side"]
        what = "pacemaker" if pm == "pacemaker" else _c(rng, ["ICD", "defibrillator", "AICD"])
        leads = "leads" if pm == "pacemaker" else "lead"
        ch = changes.get("pacemaker")
        if ch == "unchanged":
            out.append((_c(rng, [f"{_cap(side)}-sided {what} {leads} unchanged in position.",
                                 f"Unchanged {side} chest wall {what} with {leads} in the right heart."]), "pacemaker", 1))
        elif ch == "new":
            out.append((f"Interval placement of a {side}-sided {what} with {leads} terminating in the right ventricle.",
                        "pacemaker", 1))
        else:
            out.append((_c(rng, [f"{_cap(side)}-sided {what} with {leads} in the right atrium and right ventricle.",
                                 f"A {side} chest wall {what} is present with {leads} terminating in the right ventricle.",
                                 f"{_cap(what)} device projects over the {side} chest with {leads} in expected position."]),
                        "pacemaker", 1))
    elif changes.get("pacemaker") == "resolved":
        out.append(("Interval removal of the pacemaker device.", "pacemaker", 0))
    tubes = []
    if truth["ett"] is not None:
        tubes.append(_c(rng, [f"Endotracheal tube terminates {truth['ett']:.0f} cm above the carina.",
                              f"The ET tube tip is {truth['ett']:.0f} cm above the carina.",
                              "Endotracheal tube in standard position."]))
    if truth["ng_tube"]:
        tubes.append(_c(rng, ["Enteric tube courses below the diaphragm into the stomach.",
                              "Nasogastric tube tip in the stomach.", "NG tube extends into the stomach."]))
    if truth["central_line"] is not None:
        loc = truth["central_loc"]
        tubes.append(_c(rng, [f"{_cap(truth['central_side'])} internal jugular central venous catheter terminates in the {loc}.",
                              f"{_cap(truth['central_side'])} IJ line with tip in the {loc}.",
                              f"Central line tip projects over the {loc}."]))
    ch = changes.get("support_lines_tubes")
    if tubes:
        if ch == "unchanged" and rng.random() < 0.5:
            tubes = [t.rstrip(".") + ", unchanged." for t in tubes]
        elif ch == "new":
            tubes[0] = "Interval placement of " + tubes[0][0].lower() + tubes[0][1:]
        out.extend((t, "support_lines_tubes", 1) for t in tubes)
    elif ch == "resolved":
        out.append((_c(rng, ["Interval removal of the support lines and tubes.",
                             "The previously seen lines and tubes have been removed."]), "support_lines_tubes", 0))
    return out


def write_report(truth: dict, prior: dict | None, rng: np.random.Generator, *, views: list[str],
                 age: int, sex: str, prior_date: str | None) -> dict:
    changes = longitudinal_changes(truth, prior)
    labels: dict[str, int | None] = {k: None for k in FINDINGS}
    sents: list[str] = []
    for text, key, lab in _devices(rng, truth, prior, changes):
        sents.append(text)
        labels[key] = lab
    body = []
    for key, fn in (("lung_opacity", _opacity), ("pleural_effusion", _effusion), ("pneumothorax", _ptx),
                    ("cardiomegaly", _heart)):
        text, lab = fn(rng, truth, prior, changes.get(key))
        if text:
            body.append((key, text))
            labels[key] = lab
    # frequent real-report style: pleura sentences combined
    keys = [k for k, _ in body]
    if (labels["pleural_effusion"] == 0 and labels["pneumothorax"] == 0 and rng.random() < 0.5
            and changes.get("pleural_effusion") != "resolved" and changes.get("pneumothorax") != "resolved"):
        body = [(k, t) for k, t in body if k not in ("pleural_effusion", "pneumothorax")]
        body.insert(min(1, len(body)), ("pleura", _c(rng, ["No pleural effusion or pneumothorax.",
                                                           "There is no pleural effusion or pneumothorax.",
                                                           "No pneumothorax or pleural effusion."])))
    if keys and rng.random() < 0.15:
        body.reverse()
    sents += [t for _, t in body]
    if rng.random() < 0.6:
        sents.append(_c(rng, ["The mediastinal and hilar contours are unremarkable.", "Mediastinal contours are normal.",
                              "Hilar contours are within normal limits."]))
    if rng.random() < 0.4:
        sents.append(_c(rng, ["No acute osseous abnormality.", "Osseous structures are intact.",
                              "Visualized upper abdomen is unremarkable."]))
    findings = " ".join(sents)
    pos = [k for k in ("cardiomegaly", "pleural_effusion", "pneumothorax", "lung_opacity") if labels[k] == 1]
    if not pos:
        impression = _c(rng, ["No acute cardiopulmonary process.", "No acute cardiopulmonary abnormality.",
                              "No acute intrathoracic process."])
    else:
        names = {"cardiomegaly": "cardiomegaly", "pleural_effusion": "pleural effusion", "pneumothorax": "pneumothorax",
                 "lung_opacity": "opacity concerning for pneumonia"}
        impression = _cap(", ".join(names[k] for k in pos)) + "."
    hedged = any(labels[k] == -1 for k in ("cardiomegaly", "pleural_effusion", "pneumothorax", "lung_opacity"))
    labels["no_finding"] = 0 if (pos or hedged) else 1
    ind = _c(rng, ["Shortness of breath.", "Cough and fever.", "Evaluate for pneumonia.", "Chest pain.",
                   "Dyspnea.", "Evaluate for interval change.", "Hypoxia.", "Preoperative evaluation."])
    if truth["ett"] is not None:
        ind = _c(rng, ["Intubated patient.", "Evaluate endotracheal tube position.", "Line placement."])
    indication = f"___-year-old {'woman' if sex == 'F' else 'man'} ({age}). {ind}" if rng.random() < 0.5 else (
        f"___{sex} with {ind[0].lower()}{ind[1:]}")
    if "LATERAL" in views:
        technique = _c(rng, ["PA and lateral views of the chest.", "Chest, two views.", "Frontal and lateral chest radiographs."])
    elif views[0] == "AP":
        technique = _c(rng, ["Portable AP view of the chest.", "Single portable frontal view of the chest.", "AP upright chest."])
    else:
        technique = _c(rng, ["Single PA view of the chest.", "Frontal view of the chest."])
    comparison = (_c(rng, [f"Chest radiograph {prior_date}.", f"Prior study from {prior_date}.", "___."])
                  if prior_date else _c(rng, ["None.", "None available."]))
    return {"indication": indication, "technique": technique, "comparison": comparison,
            "findings": findings, "impression": impression, "report_labels": labels, "changes": changes}

"""CheXpert-style finding labeler: mention → negation / uncertainty → one label per finding.

    from sae_rad_ext.data.labels import label_report
    label_report("No pleural effusion or pneumothorax. Cannot exclude small left effusion.")
    # {'pleural_effusion': -1, 'pneumothorax': 0, 'cardiomegaly': None, ..., 'no_finding': 0}

Values follow ``sae_rad_ext.data.study``: 1 positive, 0 negative, -1 uncertain, None not mentioned;
``no_finding`` is 1 unless a pathology (cardiomegaly, effusion, pneumothorax, opacity) is positive or
uncertain (support devices do not count, as in CheXpert). Aggregation over mentions as in CheXpert:
positive beats uncertain beats negative.

Rules, written by hand (the libraries checked — medspacy's ConText and radtext's NegBio patterns — pull
spaCy/Java stacks or fail to install offline; see docs/data-sources.md): sentences are split into clauses at
contrastive words (but, however, although, which, ...); a negation or uncertainty cue before a mention
applies within its clause (across lists: "No effusion, consolidation or pneumothorax"); cues after a
mention ("has resolved", "cannot be excluded") apply to the mention before them; "no change in X",
"no increase in X" are pseudo-negations (X stays positive); "resolution of X" and "removal of X" negate.
"""

from __future__ import annotations

import re

from sae_rad_ext.data.study import FINDINGS

PATHOLOGIES = ("cardiomegaly", "pleural_effusion", "pneumothorax", "lung_opacity")

MENTIONS: dict[str, list[str]] = {
    "cardiomegaly": [
        r"cardiomegaly", r"cardiac enlargement", r"enlarge(?:d|ment of)(?: the)? (?:heart|cardiac)",
        r"(?:heart|cardiac silhouette|cardiac contour|cardiac size|heart size)\b[^.;]{0,40}?\b(?:enlarged|enlargement|large|prominent|increased)",
        r"enlarged cardiac silhouette",
    ],
    "pleural_effusion": [r"(?<!pericardial )effusions?", r"hydropneumothora(?:x|ces)", r"hydrothorax",
                         r"pleural fluid", r"blunting of the (?:\w+ )?(?:\w+ )?costophrenic", r"costophrenic (?:angle|sulcus) blunting",
                         r"meniscus"],
    "pneumothorax": [r"pneumothora(?:x|ces)", r"\bptx\b"],
    "lung_opacity": [r"opacit(?:y|ies|ification)", r"consolidat(?:ion|ions|ive)", r"infiltrat(?:e|es|ion)",
                     r"airspace (?:disease|process)", r"pneumonia", r"atelecta(?:sis|tic)", r"lung lesion"],
    "pacemaker": [r"pacemaker", r"\bpacer\b", r"\ba?icd\b", r"defibrillator", r"pacing (?:leads?|wires?|device)",
                  r"(?:cardiac|cardiac rhythm|implantable) device", r"cardiac conduction device"],
    "support_lines_tubes": [
        r"endotracheal", r"\bet ?tube", r"\bett\b", r"tracheostomy", r"enteric tube", r"nasogastric", r"orogastric",
        r"\b[no]g ?tube", r"feeding tube", r"dobhoff", r"central (?:venous )?(?:line|catheter)", r"\bcvc\b",
        r"\bpicc\b", r"\b(?:ij|internal jugular|subclavian)\b[^.;]{0,30}?(?:line|catheter)", r"swan[- ]ganz",
        r"chest tube", r"pigtail catheter", r"lines and tubes", r"tubes and lines", r"support (?:lines|devices)",
        r"venous catheter", r"catheter",
    ],
}

# explicit negative statements (checked as mentions with a fixed label)
NEGATIVE_PHRASES: dict[str, list[str]] = {
    "cardiomegaly": [
        r"(?:heart|cardiac) (?:size|silhouette)(?: is| are| remains| appears)? (?:normal|within normal limits|top[- ]normal|at the upper limits? of normal|unremarkable)",
        r"normal(?:[- ]sized)? (?:heart|cardiac)(?: size| silhouette)?", r"heart is normal in size",
        r"cardiomediastinal (?:silhouette|contours?)(?: is| are| remains?| appears?)? (?:normal|within normal limits|unremarkable)",
    ],
    "pleural_effusion": [r"costophrenic (?:angles?|sulci|sulcus)(?: is| are| remain)? (?:sharp|clear|preserved)"],
    "lung_opacity": [r"lungs? (?:is |are |remains? |appears? )?(?:well[- ]expanded and |well aerated and )?clear",
                     r"clear lungs"],
}

PRE_NEG = [r"\bno\b(?! (?:significant |interval |substantial )?(?:change|increase|decrease|worsening|improvement|longer)\b)",
           r"\bwithout\b", r"\bnegative for\b", r"\bfree of\b", r"\babsence of\b", r"\bresolution of\b",
           r"\bresolved\b", r"\bremoval of\b", r"\bremoved\b", r"\bnot (?:seen|identified|visualized|present|appreciated)\b",
           r"\bno evidence\b", r"\bthere is no\b", r"\bnor\b", r"\bhas cleared\b", r"\bcleared\b", r"\bnot\b"]
PRE_UNC = [r"\bpossibl[ey]\b", r"\bprobabl[ey]\b", r"\bquestionabl[ey]\b", r"\bquestion of\b", r"\bmay\b", r"\bmight\b",
           r"\bcould\b", r"\bcannot (?:be )?(?:exclude|excluded|rule[sd]? out)\b", r"\bcan ?not (?:be )?exclude",
           r"\bcan't exclude\b", r"\bdifficult to exclude\b", r"\bnot (?:be )?excluded\b", r"\brule out\b", r"\br/o\b",
           r"\bversus\b", r"\bvs\.?\b", r"\bborderline\b", r"\bequivocal\b", r"\bsuspicious for\b", r"\bsuggestive of\b",
           r"\bconcern(?:ing)? for\b", r"\bindeterminate\b", r"\bpotential\b", r"\bmild(?:ly)? (?:suspicious|concerning)\b",
           r"\bno definite\b", r"\b(?:is|are) not (?:entirely )?excluded\b", r"\bnot entirely excluded\b", r"\bpresumed\b"]
POST_UNC = [r"^[^.;]{0,60}?\b(?:cannot|can ?not|could not|may not) be (?:excluded|ruled out)\b", r"^[^.;]{0,40}?\bnot excluded\b",
            r"^[^.;]{0,25}?\bis (?:possible|questioned|suspected|not entirely excluded)\b"]
POST_NEG = [r"^[^.;]{0,50}?\b(?:has|have) (?:resolved|cleared|been removed|been withdrawn)\b",
            r"^[^.;]{0,40}?\b(?:is|are) (?:no longer|not) (?:seen|visualized|identified|present|appreciated|evident)\b",
            r"^[^.;]{0,40}?\b(?:is|are) (?:absent|resolved|removed)\b", r"^[^.;]{0,15}?\bresolved\b",
            r"^[^.;]{0,15}?\bremoved\b", r"^[^.;]{0,40}?\bno longer (?:seen|visualized|present|identified)\b"]
# a "sign" mention (blunting) is hedged by a following "may reflect"
POST_UNC_SIGN = r"^[^.;]{0,40}?\b(?:may|might|could|possibly)\b"
SCOPE_BREAK = re.compile(r"\b(?:but|however|although|though|whereas|which|aside from|except|apart from|otherwise|"
                         r"there (?:is|are) (?!no\b)|with (?!no\b)|while|and (?:a |an )?(?:new|small|moderate|large|"
                         r"mild|persistent|unchanged|stable|increased|decreased|there)\b)|[;:]")
_PSEUDO = re.compile(r"\bno (?:significant |interval |substantial )?(?:change|increase|decrease|worsening|improvement)\b|"
                     r"\bnot (?:significantly )?changed\b|\bwithout (?:significant |interval )?change\b")

_MENTION_RE = {k: re.compile("|".join(f"(?:{p})" for p in v)) for k, v in MENTIONS.items()}
_NEGPHRASE_RE = {k: re.compile("|".join(f"(?:{p})" for p in v)) for k, v in NEGATIVE_PHRASES.items()}
_PRE_NEG = re.compile("|".join(PRE_NEG))
_PRE_UNC = re.compile("|".join(PRE_UNC))
_POST_UNC = [re.compile(p) for p in POST_UNC]
_POST_NEG = [re.compile(p) for p in POST_NEG]
_POST_UNC_SIGN = re.compile(POST_UNC_SIGN)


def split_sentences(text: str) -> list[str]:
    text = re.sub(r"\s+", " ", text.replace("\n", " . ")).strip()
    parts = re.split(r"(?<!\d)\.(?!\d)|\?|!|\n", text)
    return [p.strip() for p in parts if p.strip()]


def _clause_start(sent: str, pos: int) -> int:
    start = 0
    for m in SCOPE_BREAK.finditer(sent, 0, pos):
        start = m.end() if m.group(0) in (";", ":") else m.start()
    return start


def _mention_label(sent: str, start: int, end: int, sign: bool = False) -> int:
    after = sent[end:]
    cut = SCOPE_BREAK.search(after)
    after_scope = after[: cut.start()] if cut and cut.group(0) in (";", ":") else after
    if any(p.search(after_scope) for p in _POST_UNC):
        return -1
    if sign and _POST_UNC_SIGN.search(after_scope):
        return -1
    pre = sent[_clause_start(sent, start): start]
    pre = _PSEUDO.sub(" ", pre)
    neg = list(_PRE_NEG.finditer(pre))
    unc = list(_PRE_UNC.finditer(pre))
    if unc and (not neg or unc[-1].start() >= neg[-1].start() or "exclude" in unc[-1].group(0)):
        return -1
    if neg:
        return 0
    if any(p.search(after_scope) for p in _POST_NEG):
        return 0
    return 1


def label_sentences(text: str) -> list[tuple[str, str, int]]:
    """All mentions: (finding, sentence, label) — useful for debugging the rules."""
    out = []
    for sent in split_sentences(text):
        low = sent.lower()
        for f in FINDINGS:
            taken: list[tuple[int, int]] = []
            if f in _NEGPHRASE_RE:
                for m in _NEGPHRASE_RE[f].finditer(low):
                    pre = low[_clause_start(low, m.start()): m.start()]
                    lab = -1 if _PRE_UNC.search(pre) else 0
                    out.append((f, sent, lab))
                    taken.append(m.span())
            for m in _MENTION_RE[f].finditer(low):
                if any(a <= m.start() < b for a, b in taken):
                    continue
                if f == "support_lines_tubes" and re.search(r"pleural line|pacemaker|pacing", low[max(0, m.start() - 25): m.end()]):
                    continue
                sign = "blunting" in m.group(0) or m.group(0) == "meniscus"
                if re.search(r"\b(?:not|no)\b", m.group(0)):
                    out.append((f, sent, 0))
                    continue
                out.append((f, sent, _mention_label(low, m.start(), m.end(), sign)))
    return out


def label_report(text: str | None) -> dict[str, int | None]:
    """Per finding 1 / 0 / -1 / None, plus ``no_finding`` (1 / 0)."""
    labels: dict[str, int | None] = {f: None for f in FINDINGS}
    rank = {1: 3, -1: 2, 0: 1}
    for f, _, lab in label_sentences(text or ""):
        cur = labels[f]
        if cur is None or rank[lab] > rank[cur]:
            labels[f] = lab
    labels["no_finding"] = int(not any(labels[k] in (1, -1) for k in PATHOLOGIES))
    return labels


def label_study(study) -> dict[str, int | None]:
    """Label a ``Study``'s FINDINGS + IMPRESSION text."""
    return label_report(" ".join(t for t in (study.findings, study.impression) if t))


def binarize(labels: dict[str, int | None], uncertain_as: int = 1) -> dict[str, int]:
    """CheXpert U-ones (default) / U-zeros mapping: None → 0, -1 → ``uncertain_as``."""
    return {k: (uncertain_as if v == -1 else int(v or 0)) for k, v in labels.items()}

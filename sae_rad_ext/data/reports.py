"""Free-text radiology reports → sections (FINDINGS, IMPRESSION, INDICATION, ...).

Written for MIMIC-CXR-style reports: an optional ``WET READ`` block and a ``FINAL REPORT`` banner,
then ``HEADER:`` sections whose text may start on the header line or the next one and wrap over many
lines, header spelling variants (``FINDINGS`` / ``Findings`` / ``FINDING``, ``IMPRESSION`` /
``CONCLUSION``, ``CLINICAL HISTORY`` / ``REASON FOR EXAMINATION``, ``FINDINGS AND IMPRESSION``),
and ``___`` de-identification placeholders (kept as they are).
"""

from __future__ import annotations

import re

# canonical key -> header spellings (upper case, single spaces, no colon)
_HEADERS: dict[str, tuple[str, ...]] = {
    "examination": ("EXAMINATION", "EXAM", "EXAMINATIONS", "STUDY", "PROCEDURE", "TYPE OF EXAMINATION"),
    "indication": ("INDICATION", "INDICATIONS", "REASON FOR EXAM", "REASON FOR EXAMINATION", "REASON FOR STUDY"),
    "history": ("HISTORY", "CLINICAL HISTORY", "PATIENT HISTORY", "MEDICAL HISTORY"),
    "clinical_information": ("CLINICAL INFORMATION", "CLINICAL INDICATION", "CLINICAL INFO", "CLINICAL DATA"),
    "technique": ("TECHNIQUE", "TECHNIQUES", "VIEWS"),
    "comparison": ("COMPARISON", "COMPARISONS", "COMPARISON STUDY", "COMPARISON STUDIES", "PRIOR STUDIES",
                   "PRIOR STUDY", "PRIORS"),
    "findings": ("FINDINGS", "FINDING", "REPORT", "FINDINGS/IMPRESSION", "FINDINGS AND IMPRESSION",
                 "FINDINGS AND IMPRESSIONS", "IMPRESSION AND FINDINGS"),
    "impression": ("IMPRESSION", "IMPRESSIONS", "CONCLUSION", "CONCLUSIONS", "SUMMARY", "OPINION"),
    "recommendation": ("RECOMMENDATION", "RECOMMENDATIONS", "RECOMMENDATION(S)", "FOLLOW-UP"),
    "notification": ("NOTIFICATION", "NOTIFICATIONS", "COMMUNICATION"),
    "wet_read": ("WET READ",),
    "addendum": ("ADDENDUM",),
}
_COMBINED = {"FINDINGS/IMPRESSION", "FINDINGS AND IMPRESSION", "FINDINGS AND IMPRESSIONS", "IMPRESSION AND FINDINGS"}
_CANON: dict[str, str] = {spelling: key for key, spellings in _HEADERS.items() for spelling in spellings}

_alts = "|".join(re.escape(s).replace(r"\ ", r"\s+") for s in sorted(_CANON, key=len, reverse=True))
# A header is a known name followed by a colon: at a line start in any letter case, or mid-line in
# upper case after a sentence end / two spaces (some reports run "... effusion.  IMPRESSION: ...").
_LINE_HEADER = re.compile(rf"(?im)^[ \t]*(?P<name>{_alts})[ \t]*:")
_INLINE_HEADER = re.compile(rf"(?m)(?:(?<=[.;])|(?<=\s\s))[ \t]*(?P<name>{_alts})[ \t]*:")
_BANNER = re.compile(r"(?im)^[ \t]*(?:FINAL|PRELIMINARY|ADDENDUM)?[ \t]*REPORT[ \t]*$")
_RULE = re.compile(r"(?m)^[ \t]*_{10,}[ \t]*$")
_WS = re.compile(r"\s+")

PROMPT_KEYS = ("indication", "technique", "comparison")
"""Sections MAIRA-2's prompt uses; ``indication`` falls back on history / clinical information."""


def _canonical(raw: str) -> str:
    return _CANON[_WS.sub(" ", raw.strip().upper())]


def _clean(text: str, keep_newlines: bool) -> str:
    if keep_newlines:
        paras = [_WS.sub(" ", p).strip() for p in re.split(r"\n[ \t]*\n", text)]
        return "\n".join(p for p in paras if p)
    return _WS.sub(" ", text).strip()


def parse_report_sections(text: str, *, keep_newlines: bool = False) -> dict[str, str]:
    """Split a report into ``{section: text}`` with canonical lower-case keys.

    Keys: ``examination, indication, history, clinical_information, technique, comparison, findings,
    impression, recommendation, notification, wet_read, addendum`` (only those present and
    non-empty), plus ``preamble`` for text before the first header that is not a banner. Whitespace
    runs (line wraps) become single spaces (``keep_newlines=True`` keeps paragraph breaks as ``\\n``).
    A section that appears twice is joined with a space. A combined ``FINDINGS AND IMPRESSION``
    section goes to ``findings`` (and to ``impression`` when there is no separate impression).
    ``___`` placeholders are kept.
    """
    if not isinstance(text, str):
        raise TypeError(f"parse_report_sections expects str, got {type(text).__name__}")
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _RULE.sub("\n", _BANNER.sub("\n", text))
    hits = {m.start("name"): m for m in _LINE_HEADER.finditer(text)}
    for m in _INLINE_HEADER.finditer(text):
        name = m.group("name")
        if name == name.upper() and m.start("name") not in hits:
            hits[m.start("name")] = m
    ordered = [hits[k] for k in sorted(hits)]
    out: dict[str, str] = {}
    combined: str | None = None

    def add(key: str, body: str) -> None:
        body = _clean(body, keep_newlines)
        if body:
            out[key] = f"{out[key]} {body}" if key in out else body

    add("preamble", text[: ordered[0].start() if ordered else len(text)])
    for i, m in enumerate(ordered):
        end = ordered[i + 1].start() if i + 1 < len(ordered) else len(text)
        raw = _WS.sub(" ", m.group("name").strip().upper())
        key = _canonical(raw)
        add(key, text[m.end() : end])
        if raw in _COMBINED and key in out:
            combined = out[key]
    if combined and "impression" not in out:
        out["impression"] = combined
    return out


def study_text_fields(sections: dict[str, str]) -> dict[str, str | None]:
    """The :class:`Study` text fields from parsed sections."""
    indication = sections.get("indication") or sections.get("clinical_information") or sections.get("history")
    return {
        "indication": indication,
        "technique": sections.get("technique"),
        "comparison": sections.get("comparison"),
        "findings": sections.get("findings"),
        "impression": sections.get("impression"),
    }

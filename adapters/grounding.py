"""MAIRA-2's grounded output: ``<obj>text<box><xA><yB><xC><yD></box>…</obj>`` ↔ phrases with boxes.

Format (microsoft/maira-2 ``processing_maira2.py``, ``convert_output_to_plaintext_or_grounded_sequence``):
a grounded report is a sequence of ``<obj>…</obj>`` phrases; inside one, the phrase text comes first,
then zero or more boxes ``<box><x{x0}><y{y0}><x{x1}><y{y1}></box>``. Coordinates are bins of 100 over the
*centre-cropped square* image: value = ``(bin + 0.5) / 100`` in [0, 1] (use
:func:`adjust_box_for_original_image_size` for the uncropped image). Text outside ``<obj>`` is not
allowed between phrases except whitespace; plain text without any grounding token parses as one
phrase without boxes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

Box = tuple[float, float, float, float]
N_BINS = 100
_TOKEN_RE = re.compile(r"</?obj>|</?box>|<[xy]\d+>")
_BOX_RE = re.compile(r"<x(\d+)><y(\d+)><x(\d+)><y(\d+)>")


@dataclass
class GroundedPhrase:
    """One finding sentence and the boxes ``(x0, y0, x1, y1)`` in [0, 1] where it is seen (may be empty)."""

    text: str
    boxes: list[Box] = field(default_factory=list)


@dataclass
class GroundedParse:
    """Result of ``parse_grounded(..., strict=False)``: the phrases read and what was skipped."""

    phrases: list[GroundedPhrase]
    errors: list[str]
    """One message per malformed part that was skipped."""


def _bin_to_coord(b: str, n_bins: int) -> float:
    v = int(b)
    if not 0 <= v < n_bins:
        raise ValueError(f"box coordinate bin {v} outside [0, {n_bins - 1}]")
    return (v + 0.5) / n_bins


def _parse_phrase(body: str, n_bins: int) -> GroundedPhrase:
    first = body.find("<box>")
    if first == -1:
        if _TOKEN_RE.search(body):
            raise ValueError(f"unexpected grounding token in phrase {body!r}")
        return GroundedPhrase(body.strip())
    text, rest = body[:first], body[first:]
    if _TOKEN_RE.search(text):
        raise ValueError(f"unexpected grounding token in phrase text {text!r}")
    boxes: list[Box] = []
    while rest.strip():
        rest = rest.strip()
        if not rest.startswith("<box>"):
            raise ValueError(f"expected <box> after the phrase text, got {rest[:40]!r}")
        end = rest.find("</box>")
        if end == -1:
            raise ValueError(f"<box> without </box> in {rest[:60]!r}")
        inner = rest[5:end]
        m = _BOX_RE.fullmatch(inner.strip())
        if m is None:
            raise ValueError(f"a box must be <xA><yB><xC><yD>, got {inner!r}")
        x0, y0, x1, y1 = (_bin_to_coord(g, n_bins) for g in m.groups())
        if x1 < x0 or y1 < y0:
            raise ValueError(f"box {inner!r} has x1 < x0 or y1 < y0")
        boxes.append((x0, y0, x1, y1))
        rest = rest[end + 6 :]
    return GroundedPhrase(text.strip(), boxes)


def parse_grounded(text: str, *, strict: bool = True, n_bins: int = N_BINS) -> list[GroundedPhrase] | GroundedParse:
    """Parse grounded model output into phrases with boxes.

    ``strict=True`` (default) returns ``list[GroundedPhrase]`` and raises ``ValueError`` naming the first
    malformed part. ``strict=False`` returns a :class:`GroundedParse` with every well-formed phrase and
    one error message per skipped part (unclosed ``<obj>``, stray text or tokens, bad boxes).
    """
    phrases: list[GroundedPhrase] = []
    errors: list[str] = []

    def fail(msg: str) -> None:
        if strict:
            raise ValueError(f"malformed grounded text: {msg}")
        errors.append(msg)

    s = text.strip()
    if not _TOKEN_RE.search(s):  # plain text: one ungrounded phrase (or nothing)
        phrases = [GroundedPhrase(s)] if s else []
        return phrases if strict else GroundedParse(phrases, errors)
    pos = 0
    while pos < len(s):
        start = s.find("<obj>", pos)
        between = s[pos:] if start == -1 else s[pos:start]
        if between.strip():
            fail(f"text outside <obj>…</obj>: {between.strip()[:60]!r}")
        if start == -1:
            break
        end = s.find("</obj>", start + 5)
        nxt = s.find("<obj>", start + 5)
        if end == -1 or (nxt != -1 and nxt < end):
            stop = len(s) if nxt == -1 else nxt
            fail(f"<obj> without </obj>: {s[start:stop][:60]!r}")
            pos = stop
            continue
        try:
            phrases.append(_parse_phrase(s[start + 5 : end], n_bins))
        except ValueError as e:
            fail(str(e))
        pos = end + 6
    return phrases if strict else GroundedParse(phrases, errors)


def coord_to_bin(v: float, n_bins: int = N_BINS) -> int:
    """Inverse of ``(bin + 0.5) / n_bins`` (nearest bin, clamped to the valid range)."""
    if not 0.0 <= v <= 1.0:
        raise ValueError(f"box coordinate {v} outside [0, 1]")
    return min(n_bins - 1, max(0, int(v * n_bins)))


def format_grounded(phrases: list[GroundedPhrase] | list[tuple[str, list[Box] | None]], *,
                    n_bins: int = N_BINS, sep: str = "") -> str:
    """Phrases → MAIRA-2's grounded text (the inverse of :func:`parse_grounded`)."""
    out = []
    for p in phrases:
        text, boxes = (p.text, p.boxes) if isinstance(p, GroundedPhrase) else (p[0], p[1] or [])
        if _TOKEN_RE.search(text):
            raise ValueError(f"phrase text must not contain grounding tokens: {text!r}")
        parts = [f"<obj>{text}"]
        for box in boxes:
            if len(box) != 4:
                raise ValueError(f"a box is (x0, y0, x1, y1); got {box!r}")
            x0, y0, x1, y1 = (coord_to_bin(float(v), n_bins) for v in box)
            parts.append(f"<box><x{x0}><y{y0}><x{x1}><y{y1}></box>")
        out.append("".join(parts) + "</obj>")
    return sep.join(out)


def adjust_box_for_original_image_size(box: Box, width: int, height: int) -> Box:
    """Box on the centre-cropped square → box normalised to the original ``width × height`` image
    (MAIRA-2's ``adjust_box_for_original_image_size``: crop side = shortest edge, centred)."""
    side = min(width, height)
    dx, dy = (width - side) // 2, (height - side) // 2
    x0, y0, x1, y1 = box
    return (int(x0 * side + dx) / width, int(y0 * side + dy) / height,
            int(x1 * side + dx) / width, int(y1 * side + dy) / height)

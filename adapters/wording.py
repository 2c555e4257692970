"""MAIRA-2's prompt wording as ordered (text, role, image slot) segments.

Wording, section order, image order and "N/A" handling follow microsoft/maira-2's remote-code processor
(``processing_maira2.py``: ``_construct_image_chat_messages_for_reporting``,
``_construct_chat_messages_reporting``, ``_construct_chat_messages_phrase_grounding``,
``_get_section_text_or_missing_text``; read from the public copy in github.com/johannes2moll/maira_rrg).
The user turn for reporting is::

    Given the current frontal image only<image>                       (1 image), or
    Given the current frontal image<image>[ the current lateral image<image>] and the prior frontal
        image<image>                                                  (with a prior), or
    Given the current frontal image<image> and the current lateral image<image>   (lateral, no prior)
    [ PRIOR_REPORT: {prior report | N/A}]                             (only with a prior image)
     Provide a structured description of the findings in the radiology study in comparison to the
    prior frontal image.[ <grounding request>] INDICATION: {…} TECHNIQUE: {…} COMPARISON: {…}

and for phrase grounding ``Given the current frontal image<image> Repeat the following finding as a
grounded phrase with bounding boxes indicating all locations where it can be seen in the given chest X-ray
image. Finding: {phrase}``. A section is "N/A" when it is ``None`` or empty (as in MAIRA-2).
"""

from __future__ import annotations

from typing import Any, Literal

from sae_rad_ext.adapters.roles import ImageSlot, Role

Task = Literal["findings", "grounded_reporting", "phrase_grounding"]
TASKS = ("findings", "grounded_reporting", "phrase_grounding")

SYSTEM_PROMPT = "You are an expert radiology assistant tasked with interpreting a chest X-ray study."
MISSING_SECTION = "N/A"
REQUEST = (
    " Provide a structured description of the findings in the radiology study in comparison to the prior"
    " frontal image."
)
GROUNDING_REQUEST = (
    " Each finding should be described as a self-contained plain-text sentence. If the finding is"
    " groundable, locate the finding in the current frontal chest X-ray image, with bounding boxes"
    " indicating all locations where it can be seen in the current frontal image. Otherwise, generate just"
    " the ungrounded finding without bounding boxes."
)
PHRASE_REQUEST = (
    " Repeat the following finding as a grounded phrase with bounding boxes indicating all locations where"
    " it can be seen in the given chest X-ray image. Finding:"
)

# a segment: (text, role, image slot); image segments have text None
Segment = tuple[str | None, Role, ImageSlot]


def section_text(value: str | None) -> str:
    """MAIRA-2's rule: the section text, or "N/A" when it is None or empty."""
    return value if isinstance(value, str) and len(value) > 0 else MISSING_SECTION


def prompt_segments(study: Any, task: Task = "findings", phrase: str | None = None) -> list[Segment]:
    """The user turn of one study as ordered segments (without the chat wrapper)."""
    T, N = Role.INSTRUCTION, ImageSlot.NONE
    if task == "phrase_grounding":
        if not phrase:
            raise ValueError("task='phrase_grounding' needs phrase= (the finding to ground)")
        return [("Given the current frontal image", T, N), (None, Role.IMAGE, ImageSlot.FRONTAL),
                (PHRASE_REQUEST, T, N), (" " + phrase, Role.PHRASE, N)]
    has_lat, has_prior = study.lateral is not None, study.prior_frontal is not None
    seg: list[Segment] = []
    if not (has_lat or has_prior):
        seg += [("Given the current frontal image only", T, N), (None, Role.IMAGE, ImageSlot.FRONTAL)]
    else:
        seg += [("Given the current frontal image", T, N), (None, Role.IMAGE, ImageSlot.FRONTAL)]
        if has_prior:
            if has_lat:
                seg += [(" the current lateral image", T, N), (None, Role.IMAGE, ImageSlot.LATERAL)]
            seg += [(" and the prior frontal image", T, N), (None, Role.IMAGE, ImageSlot.PRIOR)]
        else:
            seg += [(" and the current lateral image", T, N), (None, Role.IMAGE, ImageSlot.LATERAL)]
    if has_prior:
        seg += [(" PRIOR_REPORT:", T, N), (" " + section_text(study.prior_report), Role.PRIOR_REPORT, N)]
    seg.append((REQUEST + (GROUNDING_REQUEST if task == "grounded_reporting" else "") + " INDICATION:", T, N))
    seg += [(" " + section_text(study.indication), Role.INDICATION, N), (" TECHNIQUE:", T, N),
            (" " + section_text(study.technique), Role.TECHNIQUE, N), (" COMPARISON:", T, N),
            (" " + section_text(study.comparison), Role.COMPARISON, N)]
    return seg

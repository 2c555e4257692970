"""Grounded output parser / formatter (MAIRA-2's <obj>…<box>…</box></obj> format)."""

from __future__ import annotations

import pytest
from sae_rad_ext.adapters.grounding import (
    GroundedParse,
    GroundedPhrase,
    adjust_box_for_original_image_size,
    coord_to_bin,
    format_grounded,
    parse_grounded,
)


def test_parse_example_from_maira2():
    text = "<obj>grounded phrase <box><x55><y45><x70><y56></box></obj><obj>ungrounded phrase</obj>"
    out = parse_grounded(text)
    assert out == [
        GroundedPhrase("grounded phrase", [(0.555, 0.455, 0.705, 0.565)]),
        GroundedPhrase("ungrounded phrase", []),
    ]


def test_several_boxes_and_whitespace_between_phrases():
    text = (" <obj>Bilateral effusions.<box><x5><y60><x30><y90></box><box><x70><y60><x95><y90></box></obj>\n"
            "<obj>Pacemaker.<box><x60><y20><x75><y35></box></obj> ")
    out = parse_grounded(text)
    assert [p.text for p in out] == ["Bilateral effusions.", "Pacemaker."]
    assert out[0].boxes == [(0.055, 0.605, 0.305, 0.905), (0.705, 0.605, 0.955, 0.905)]
    assert all(0 <= v <= 1 for p in out for b in p.boxes for v in b)


def test_plain_text_is_one_ungrounded_phrase():
    assert parse_grounded("  The lungs are clear. ") == [GroundedPhrase("The lungs are clear.", [])]
    assert parse_grounded("") == []


@pytest.mark.parametrize("phrases", [
    [GroundedPhrase("A.", [(0.105, 0.205, 0.305, 0.405)]), GroundedPhrase("B.", [])],
    [GroundedPhrase("Two boxes.", [(0.005, 0.005, 0.995, 0.995), (0.5, 0.5, 0.6, 0.7)])],
    [GroundedPhrase("No findings.", [])],
])
def test_round_trip(phrases):
    text = format_grounded(phrases)
    back = parse_grounded(text)
    assert [p.text for p in back] == [p.text for p in phrases]
    for a, b in zip(back, phrases, strict=True):
        assert len(a.boxes) == len(b.boxes)
        for ba, bb in zip(a.boxes, b.boxes, strict=True):
            assert all(abs(x - y) <= 0.005 + 1e-9 for x, y in zip(ba, bb, strict=True))  # bin resolution
    assert format_grounded(back) == text  # exact once on bin centres


def test_format_accepts_tuples_and_bins():
    assert format_grounded([("Effusion.", [(0.105, 0.505, 0.405, 0.905)]), ("Clear.", None)]) == (
        "<obj>Effusion.<box><x10><y50><x40><y90></box></obj><obj>Clear.</obj>"
    )
    assert coord_to_bin(1.0) == 99 and coord_to_bin(0.0) == 0 and coord_to_bin(0.555) == 55
    with pytest.raises(ValueError, match="outside"):
        format_grounded([("x", [(0.1, 0.2, 1.3, 0.4)])])
    with pytest.raises(ValueError, match="grounding tokens"):
        format_grounded([("<box>", [])])


@pytest.mark.parametrize("bad, msg", [
    ("<obj>unclosed phrase", "without </obj>"),
    ("stray <obj>a</obj>", "outside"),
    ("<obj>a<box><x1><y2><x3></box></obj>", "a box must be"),
    ("<obj>a<box><x1><y2><x3><y4></obj>", "without </box>"),
    ("<obj>a<box><x1><y2><x3><y4></box> trailing</obj>", "expected <box>"),
    ("<obj>a<box><x1><y2><x300><y4></box></obj>", "outside"),
    ("<obj>a<box><x50><y50><x10><y60></box></obj>", "x1 < x0"),
    ("<obj>a</box></obj>", "unexpected grounding token"),
    ("a</obj>", "outside"),
])
def test_malformed_raises(bad, msg):
    with pytest.raises(ValueError, match=msg):
        parse_grounded(bad)


def test_non_strict_skips_and_reports():
    text = ("<obj>good one<box><x1><y2><x3><y4></box></obj> junk <obj>bad<box><x1></box></obj>"
            "<obj>also good</obj><obj>never closed")
    res = parse_grounded(text, strict=False)
    assert isinstance(res, GroundedParse)
    assert [p.text for p in res.phrases] == ["good one", "also good"]
    assert len(res.errors) == 3
    assert any("outside" in e for e in res.errors) and any("without </obj>" in e for e in res.errors)


def test_adjust_box_for_original_image_size():
    # 200 wide × 100 high: crop is the central 100×100 (x offset 50)
    assert adjust_box_for_original_image_size((0.0, 0.0, 1.0, 1.0), 200, 100) == (0.25, 0.0, 0.75, 1.0)
    assert adjust_box_for_original_image_size((0.5, 0.5, 0.5, 0.5), 100, 100) == (0.5, 0.5, 0.5, 0.5)

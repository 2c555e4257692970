"""The one patient-level split: deterministic, by patient, close to the requested fractions."""

from __future__ import annotations

import zlib
from types import SimpleNamespace

import numpy as np
import pytest

from sae_rad_ext.data.phantom.generator import split_of
from sae_rad_ext.evaluation.splits import assign_split, holdout_mask, split_position, split_unit
from sae_rad_ext.interpret.scan import SPLIT_SALT


def _study(study_id: str, **metadata) -> SimpleNamespace:
    return SimpleNamespace(study_id=study_id, metadata=metadata)


def test_unit_is_the_patient_else_the_study():
    assert split_unit(_study("s1", patient_id="p7", subject_id="x")) == "p7"
    assert split_unit(_study("s1", subject_id="p10000032")) == "p10000032"  # MIMIC-CXR
    assert split_unit(_study("s1")) == "s1"  # no patient id: split by study
    assert split_unit(SimpleNamespace(study_id=5, metadata=None)) == "5"


def test_studies_of_one_patient_land_together_and_the_split_is_deterministic():
    studies = [_study(f"s{p}-{v}", patient_id=f"p{p}") for p in range(300) for v in range(3)]
    mask = holdout_mask(studies, 0.3, salt="7")
    per_patient = mask.reshape(300, 3)
    assert (per_patient == per_patient[:, :1]).all()  # every visit of a patient on the same side
    assert 0 < per_patient[:, 0].sum() < 300
    again = holdout_mask(list(reversed(studies)), 0.3, salt="7")[::-1]  # order does not matter
    assert np.array_equal(mask, again)
    other = holdout_mask(studies, 0.3, salt="8")
    assert not np.array_equal(mask, other)  # the salt picks a different half


@pytest.mark.parametrize("fraction", [0.1, 0.3, 0.5])
def test_fraction_is_close_on_1000_ids(fraction):
    studies = [_study(f"study-{i}") for i in range(1000)]
    got = holdout_mask(studies, fraction, salt="sae-rad").mean()
    assert abs(got - fraction) < 0.05, got
    parts = [assign_split(f"id-{i}", {"a": 0.6, "b": 0.3, "c": 0.1}) for i in range(1000)]
    assert [abs(parts.count(k) / 1000 - f) < 0.05 for k, f in (("a", 0.6), ("b", 0.3), ("c", 0.1))] == [True] * 3


def test_hash_and_phantom_split_are_the_documented_crc():
    for i in range(2000):
        pid = f"phantom-0-{i}"
        h = (zlib.crc32(pid.encode()) % 10_000) / 10_000  # the formula the phantom datasets were written with
        assert split_position(pid) == h
        assert split_of(pid) == ("train" if h < 0.8 else "validate" if h < 0.9 else "test")
        assert split_position(pid, "s") == (zlib.crc32(f"s:{pid}".encode()) % 10_000) / 10_000


def test_salted_split_cuts_across_the_phantom_parts():
    """The interpret split of the phantoms' test part keeps its requested fraction (a salt that nested
    inside the data split would put the whole test part on one side)."""
    test_ids = [f"phantom-0-{i}" for i in range(3000) if split_of(f"phantom-0-{i}") == "test"]
    sides = [assign_split(i, {"holdout": 0.5, "fit": 0.5}, salt=SPLIT_SALT) for i in test_ids]
    assert len(test_ids) > 200 and 0.4 < sides.count("holdout") / len(sides) < 0.6


def test_bad_fractions_are_rejected():
    with pytest.raises(ValueError, match="sum to 1"):
        assign_split("p", {"a": 0.5, "b": 0.4})
    with pytest.raises(ValueError, match="non-negative"):
        assign_split("p", {"a": 1.5, "b": -0.5})
    with pytest.raises(ValueError, match=r"in \(0, 1\)"):
        holdout_mask([_study("s")], 1.0)
    assert {assign_split(f"p{i}", {"a": 1.0, "b": 0.0}) for i in range(50)} == {"a"}  # empty part: never

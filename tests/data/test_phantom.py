"""Phantom radiographs: radiographic properties, masks, determinism, written dataset round trip."""

import csv

import numpy as np
import pytest

from sae_rad_ext.data.labels import binarize, label_study
from sae_rad_ext.data.phantom.generator import FINDINGS, generate_studies, make_study
from sae_rad_ext.data.phantom.io import load_phantom_dataset, write_phantom_dataset
from sae_rad_ext.evaluation.metrics import f1_by_key

NONE = dict.fromkeys(FINDINGS, 0.0)
SIZE = 128


def one(i, **probs):
    return make_study(11, i, image_size=SIZE, lateral_prob=1.0, prior_prob=0.0, finding_probs={**NONE, **probs})


def test_lungs_darker_than_mediastinum_and_spine():
    for i in range(3):
        s = one(i)
        img, m = s.frontal.astype(float), s.metadata["masks"]["frontal"]
        lungs = img[m["lungs"].astype(bool)].mean()
        mid = img[SIZE // 3: 2 * SIZE // 3, SIZE // 2 - 3: SIZE // 2 + 3].mean()  # mediastinum + spine
        assert lungs + 40 < mid, (lungs, mid)
        assert img[:, :3].mean() < 20  # air outside the body is black
        assert s.labels["no_finding"] == 1 and (s.lateral is not None or s.metadata["view_position"] == "AP")


def _centroid(mask):
    r, c = np.nonzero(mask)
    return r.mean(), c.mean()


def test_masks_inside_body_and_aligned():
    s = one(0, pleural_effusion=1.0, pneumothorax=1.0, lung_opacity=1.0, pacemaker=1.0, support_lines_tubes=1.0,
            cardiomegaly=1.0)
    for view, masks in s.metadata["masks"].items():
        img = s.frontal if view == "frontal" else s.lateral
        for k in FINDINGS:
            m = masks[k].astype(bool)
            assert m.any(), (view, k)
            assert (img[m] > 8).mean() > 0.95, (view, k)  # inside the body


def test_cardiomegaly_widens_heart_and_ctr():
    for i in range(3):
        a, b = one(i), one(i, cardiomegaly=1.0)
        wa = np.ptp(np.nonzero(a.metadata["masks"]["frontal"]["heart"].any(0))[0])
        wb = np.ptp(np.nonzero(b.metadata["masks"]["frontal"]["cardiomegaly"].any(0))[0])
        assert wb > wa * 1.15
        assert a.metadata["ctr"] < 0.52 < b.metadata["ctr"]
        assert b.labels["cardiomegaly"] == 1 and a.labels["cardiomegaly"] == 0


def test_effusion_at_base_on_its_side_and_pneumothorax_peripheral():
    seen_eff = seen_ptx = 0
    for i in range(12):
        s = one(i, pleural_effusion=1.0, pneumothorax=1.0)
        m = s.metadata["masks"]["frontal"]
        lungs_r, lungs_c = _centroid(m["lungs"])
        eff = s.metadata["effusion"]
        if list(eff) == ["right"]:
            r, c = _centroid(m["pleural_effusion"])
            assert c < SIZE / 2 and r > lungs_r  # patient's right = image left; at the base
            seen_eff += 1
        (side,) = s.metadata["pneumothorax"]
        r, c = _centroid(m["pneumothorax"])
        lung_side = m["lungs"].astype(bool) & ((np.arange(SIZE) < SIZE / 2) == (side == "right"))[None, :]
        _, lc = _centroid(lung_side)
        assert abs(c - SIZE / 2) > abs(lc - SIZE / 2)  # lateral to the lung's centre (periphery)
        seen_ptx += 1
    assert seen_eff and seen_ptx


def test_findings_change_pixels_and_priors():
    a, b = one(2), one(2, pleural_effusion=1.0)
    eff = b.metadata["masks"]["frontal"]["pleural_effusion"].astype(bool)
    assert b.frontal[eff].astype(float).mean() > a.frontal[eff].astype(float).mean() + 25  # fluid is denser
    s = make_study(5, 1, image_size=SIZE, prior_prob=1.0)
    assert s.prior_frontal is not None and s.prior_report and s.comparison
    assert set(s.metadata["change"]) == set(FINDINGS)
    assert set(s.metadata["change"].values()) <= {"new", "increased", "decreased", "resolved", "unchanged", "absent"}


def test_deterministic_and_independent_per_index():
    a = list(generate_studies(3, 4, image_size=SIZE))
    b = list(generate_studies(3, 4, image_size=SIZE))
    (c,) = generate_studies(1, 4, start=2, image_size=SIZE)
    for x, y in zip(a, b, strict=True):
        assert np.array_equal(x.frontal, y.frontal) and x.findings == y.findings
    assert np.array_equal(a[2].frontal, c.frontal) and a[2].metadata["masks"]["frontal"]["lungs"].sum() == \
        c.metadata["masks"]["frontal"]["lungs"].sum()
    assert not np.array_equal(a[0].frontal, a[1].frontal)


def test_labeler_on_generated_studies():
    studies = list(generate_studies(40, 9, image_size=64))
    pred = [binarize(label_study(s)) for s in studies]
    f1 = f1_by_key(pred, [s.labels for s in studies], keys=[*FINDINGS, "no_finding"])
    assert min(f1.values()) >= 0.98, f1


def test_written_dataset_roundtrip_and_mimic_layout(tmp_path):
    out = write_phantom_dataset(tmp_path / "ph", 5, seed=2, image_size=64, prior_prob=0.5, lateral_prob=1.0)
    got = list(load_phantom_dataset(out))
    ref = list(generate_studies(5, 2, image_size=64, prior_prob=0.5, lateral_prob=1.0))
    for g, r in zip(got, ref, strict=True):
        assert np.array_equal(g.frontal, r.frontal) and g.labels == r.labels and g.findings == r.findings
        for k, v in r.metadata["masks"]["frontal"].items():
            assert np.array_equal(g.metadata["masks"]["frontal"][k], v)
    mimic = out / "mimic"
    rows = list(csv.DictReader(open(mimic / "mimic-cxr-2.0.0-metadata.csv")))
    assert {"dicom_id", "subject_id", "study_id", "ViewPosition", "StudyDate", "StudyTime"} <= set(rows[0])
    assert {r["ViewPosition"] for r in rows} >= {"LATERAL"}
    for r in rows:
        subj, study = r["subject_id"], r["study_id"]
        folder = mimic / "files" / f"p{subj[:2]}" / f"p{subj}"
        assert (folder / f"s{study}" / f"{r['dicom_id']}.jpg").exists()
        text = (folder / f"s{study}.txt").read_text()
        assert "FINAL REPORT" in text and "FINDINGS:" in text
    split = list(csv.DictReader(open(mimic / "mimic-cxr-2.0.0-split.csv")))
    assert len(split) == len(rows) and {r["split"] for r in split} <= {"train", "validate", "test"}
    with pytest.raises(FileExistsError):
        write_phantom_dataset(out, 1, seed=2)

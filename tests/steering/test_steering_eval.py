"""Directional-control metrics, report parsing, and feature-based reports on synthetic cases."""

from __future__ import annotations

import json

import pytest
import torch

from sae_rad_ext.data.labels import label_report
from sae_rad_ext.steering.evaluate import evaluate_control, report_parses
from sae_rad_ext.steering.feature_reports import (
    FINDING_SENTENCES,
    calibrate_feature_reporter,
    concept_descriptions,
)
from sae_rad_ext.steering.steer import SweepResult

NEG = "No pleural effusion. No pneumothorax. The heart is normal in size."
EFF = "There is a small left pleural effusion. No pneumothorax. The heart is normal in size."
EFF_PTX = (
    "There is a small left pleural effusion. There is a right pneumothorax. The heart is normal in size."
)


def _sweep() -> SweepResult:
    base = [NEG, NEG, NEG, NEG, EFF]
    sw = SweepResult(7, [0.0, 1.0, 2.0], [0.0, 3.0, 6.0], "max_act", 3.0, "add", "all", list("abcde"), base)
    sw.reports = {
        0.0: list(base),
        1.0: [EFF, NEG, NEG, NEG, EFF],
        2.0: [EFF, EFF, EFF_PTX, "effusion effusion", NEG],
    }
    sw.random_reports = {0.0: list(base), 1.0: list(base), 2.0: [NEG, NEG, NEG, NEG, EFF_PTX]}
    return sw


def test_control_metrics_by_hand(tmp_path):
    ev = evaluate_control(_sweep(), "pleural_effusion")
    rows = {(r.condition, r.coefficient): r for r in ev.rows}
    r1, r2 = rows[("feature", 1.0)], rows[("feature", 2.0)]
    assert (r1.n_off_before, r1.n_on_before) == (4, 1)
    assert r1.on_rate == 0.25 and r1.off_rate == 0.0 and r1.off_target_rate == 0.0
    # coef 2: studies a, b, c gain the effusion ("effusion effusion" is positive too); e loses it
    assert r2.on_rate == 1.0 and r2.off_rate == 1.0
    # one study (c) gains a pneumothorax out of 5 studies × 5 other findings
    assert r2.off_target_rate == pytest.approx(1 / 25) and r2.off_target_any == pytest.approx(1 / 5)
    assert r2.parse_rate == pytest.approx(4 / 5) and r2.changed_rate == 1.0
    rr2 = rows[("random", 2.0)]
    assert rr2.on_rate == 0.0 and rr2.off_target_any == pytest.approx(1 / 5)
    best = ev.best()
    assert best["coefficient"] == 2.0 and best["target_rate"] == 1.0 and best["random_target_rate"] == 0.0
    assert best["goal_met"] is True
    assert r2.fluency_loss is None and ev.baseline_fluency_loss is None
    js, cs = ev.write(tmp_path)
    assert json.loads(js.read_text())["best"]["coefficient"] == 2.0
    assert len(cs.read_text().strip().splitlines()) == 1 + len(ev.rows)
    png = ev.plot(tmp_path / "plot.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    off = evaluate_control(_sweep(), "pleural_effusion", goal="off")
    assert off.best()["target_rate"] == 1.0
    with pytest.raises(ValueError, match="unknown finding"):
        evaluate_control(_sweep(), "fracture")


def test_report_parses():
    assert report_parses(EFF)
    assert not report_parses("")
    assert not report_parses("There is a small left pleural")  # cut off
    assert not report_parses("No pneumothorax. No pneumothorax.")  # degenerate loop
    assert not report_parses("Mediastinal contours are normal.")  # nothing the labeler reads
    assert not report_parses("effusion effusion.")


def test_feature_reporter_calibration_and_compile():
    torch.manual_seed(0)
    n = 60
    truth = [{"pleural_effusion": int(i % 3 == 0), "pacemaker": int(i % 4 == 0)} for i in range(n)]
    eff = torch.tensor([float(t["pleural_effusion"]) * 2 + 0.1 * torch.rand(1).item() for t in truth])
    pm = torch.tensor([float(t["pacemaker"]) * 1.5 for t in truth])
    noise = torch.rand(n)
    acts = torch.stack([eff, pm, noise], 1)
    desc = {
        10: "Left pleural effusion with meniscus",
        11: FINDING_SENTENCES["pacemaker"],
        12: "Normal mediastinum.",
    }
    rep = calibrate_feature_reporter(desc, acts, truth, [10, 11, 12])
    assert set(rep.thresholds) == {10, 11} and 12 in rep.skipped
    assert rep.finding_of == {10: "pleural_effusion", 11: "pacemaker"} and min(rep.val_f1.values()) == 1.0
    texts = rep.compile(acts)
    for t, y in zip(texts, truth, strict=True):
        lab = label_report(t)
        assert (lab["pleural_effusion"] == 1) == bool(y["pleural_effusion"])
        assert (lab["pacemaker"] == 1) == bool(y["pacemaker"])
        if t:
            assert report_parses(t)
    with pytest.raises(ValueError, match="columns"):
        rep.compile(acts[:, :2])


def test_concept_descriptions():
    class Row:
        feature = 42

    assert concept_descriptions({"pneumothorax": Row()}) == {42: FINDING_SENTENCES["pneumothorax"]}
    assert concept_descriptions({3: "cardiomegaly"}) == {3: FINDING_SENTENCES["cardiomegaly"]}
    for f, s in FINDING_SENTENCES.items():
        assert label_report(s)[f] == 1
    with pytest.raises(ValueError, match="no sentence"):
        concept_descriptions({1: "fracture"})


def test_steer_cli_smoke(tmp_path):
    from typer.testing import CliRunner

    import sae_rad_ext.saes.matryoshka as mat
    from sae_rad_ext.cli.app import app

    torch.manual_seed(0)
    sae = mat.RadMatryoshkaSAE(mat.RadMatryoshkaSAEConfig(d_in=128, d_sae=32, group_sizes=[8, 24]))
    with torch.no_grad():
        for p in sae.parameters():
            p.normal_(std=0.15)
        sae.threshold.fill_(0.1)
    sae.cfg.metadata.hook_name = "blocks.1.hook_resid_post"
    sae.save_model(str(tmp_path / "sae"))
    out = tmp_path / "out"
    args = [
        "steer",
        "--sae",
        str(tmp_path / "sae"),
        "--feature",
        "3",
        "--coef",
        "0,50",
        "--unit",
        "absolute",
        "--studies",
        "phantom:n=2,seed=0,image_size=112,lateral_prob=0,prior_prob=0",
        "--out",
        str(out),
        "--max-new-tokens",
        "3",
        "--finding",
        "pleural_effusion",
    ]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    for name in (
        "reports.jsonl",
        "metrics.json",
        "metrics.csv",
        "metrics_all_findings.csv",
        "steering.png",
        "sweep.json",
    ):
        assert (out / name).is_file(), name
    lines = (out / "reports.jsonl").read_text().splitlines()
    assert len(lines) == 2 * (1 + 2 + 2)  # baseline + feature × 2 coefs + random × 2 coefs
    m = json.loads((out / "metrics.json").read_text())
    assert m["finding"] == "pleural_effusion" and len(m["rows"]) == 4
    assert m["baseline_fluency_loss"] > 0  # the unsteered model's loss was computed
    bad = CliRunner().invoke(app, [*args[:4], "999", *args[5:]])
    assert bad.exit_code != 0 and "outside" in bad.output

"""Steering interventions on the tiny MAIRA-2: exactness, no-ops, position/step restriction, controls."""

from __future__ import annotations

import pytest
import torch
from sae_lens.saes.standard_sae import StandardSAE, StandardSAEConfig
from sae_lens.saes.topk_sae import TopKSAE, TopKSAEConfig
from sae_rad_ext.adapters import HookedMaira2, Maira2Processor
from sae_rad_ext.adapters.roles import Role

import sae_rad_ext.saes.matryoshka as mat
from sae_rad_ext.data.phantom.generator import generate_studies
from sae_rad_ext.steering.interventions import SaeView, intervention_hooks
from sae_rad_ext.steering.steer import (
    Intervention,
    random_direction,
    steered_generate,
    strength_sweep,
    study_feature_activations,
)

HOOK = "blocks.1.hook_resid_post"
N_NEW = 8


@pytest.fixture(scope="module")
def setup():
    model = HookedMaira2.tiny(seed=0)
    proc = Maira2Processor.from_model_config(model.model.config, model.tokenizer)
    studies = list(generate_studies(3, 0, image_size=112, lateral_prob=0.0, prior_prob=0.0))
    torch.manual_seed(0)
    sae = mat.RadMatryoshkaSAE(mat.RadMatryoshkaSAEConfig(d_in=128, d_sae=96, group_sizes=[32, 64]))
    with torch.no_grad():
        for p in sae.parameters():
            p.normal_(std=0.15)
        sae.threshold.fill_(0.2)
    sae.cfg.metadata.hook_name = HOOK
    return model, proc, studies, sae


def _active_features(model, proc, studies, sae, n=4):
    acts = study_feature_activations(model, proc, studies, sae, range(sae.cfg.d_sae), positions="all")
    return acts.amax(0).argsort(descending=True)[:n].tolist()


def test_clamp_to_own_encoded_value_is_token_identical(setup):
    model, proc, studies, sae = setup
    feats = _active_features(model, proc, studies, sae)
    batch = proc.build(studies, with_report=False)
    plain = model.generate(
        batch.input_ids,
        pixel_values=batch.pixel_values,
        attention_mask=batch.attention_mask,
        max_new_tokens=N_NEW,
    )
    # record every position's activation of the chosen features (prompt + generated), then clamp to it
    mask = torch.cat([batch.attention_mask, torch.ones(len(studies), N_NEW, dtype=torch.long)], 1)
    _, cache = model.run_with_cache(
        plain, pixel_values=batch.pixel_values, attention_mask=mask, names_filter=[HOOK]
    )
    view = SaeView(sae, "cpu", torch.float32)
    targets = view.encode_selected(cache[HOOK], torch.tensor(feats))  # [B, T + N_NEW, F]
    assert (targets > 0).sum() > 20  # the features really fire, so the clamp is not vacuous
    T = batch.input_ids.shape[1]
    base = steered_generate(model, proc, studies, sae, [], max_new_tokens=N_NEW)
    eos = proc.eos_token_id
    assert base.token_ids == [r[: r.index(eos)] if eos in r else r for r in plain[:, T:].tolist()]
    clamped = steered_generate(
        model, proc, studies, sae, [Intervention(feats, "clamp", targets)], max_new_tokens=N_NEW
    )
    assert clamped.token_ids == base.token_ids
    assert clamped.reports == base.reports
    # scale 1 (clamp to f itself inside the hook) adds exactly zero
    same = steered_generate(
        model, proc, studies, sae, [Intervention(feats, "scale", 1.0)], max_new_tokens=N_NEW
    )
    assert same.token_ids == base.token_ids
    # ... while clamping to a different per-position value does change the generation
    moved = steered_generate(
        model, proc, studies, sae, [Intervention(feats, "clamp", targets + 30.0)], max_new_tokens=N_NEW
    )
    assert moved.token_ids != base.token_ids


def test_add_zero_is_identity_and_large_steer_changes_output(setup):
    model, proc, studies, sae = setup
    base = steered_generate(model, proc, studies, sae, [], max_new_tokens=N_NEW)
    zero = steered_generate(
        model, proc, studies, sae, [Intervention([1, 2], "add", 0.0)], max_new_tokens=N_NEW
    )
    assert zero.token_ids == base.token_ids
    big = steered_generate(model, proc, studies, sae, [Intervention(5, "add", 300.0)], max_new_tokens=N_NEW)
    assert big.token_ids != base.token_ids
    ablate = steered_generate(
        model,
        proc,
        studies,
        sae,
        [Intervention(_active_features(model, proc, studies, sae), "ablate")],
        max_new_tokens=N_NEW,
    )
    assert len(ablate.reports) == len(studies)


def test_report_only_intervention_leaves_image_positions(setup):
    model, proc, studies, sae = setup
    batch = proc.build(studies, with_report=True)
    T = batch.input_ids.shape[1]
    hooks = intervention_hooks(model, sae, [Intervention(3, "add", 50.0, positions="report")], batch.roles, T)
    later = "blocks.3.hook_resid_post"
    kw = {"pixel_values": batch.pixel_values, "attention_mask": batch.attention_mask, "names_filter": [later]}
    _, ref = model.run_with_cache(batch.input_ids, **kw)
    with model.hooks(fwd_hooks=hooks):
        _, cache = model.run_with_cache(batch.input_ids, **kw)
    role = batch.roles.role
    img, rep = role == Role.IMAGE, role == Role.REPORT
    assert torch.equal(cache[later][img], ref[later][img])  # causal + before the report: untouched
    first_report = int(rep[0].nonzero()[0])
    assert torch.equal(cache[later][0, :first_report], ref[later][0, :first_report])
    assert (cache[later][rep] - ref[later][rep]).abs().max() > 1.0


def test_steps_restriction(setup):
    model, proc, studies, sae = setup
    base = steered_generate(model, proc, studies, sae, [], max_new_tokens=N_NEW)
    late = steered_generate(
        model, proc, studies, sae, [Intervention(5, "add", 300.0, steps=[3, 4, 5])], max_new_tokens=N_NEW
    )
    assert [r[:3] for r in late.token_ids] == [
        r[:3] for r in base.token_ids
    ]  # tokens 0..2 come before step 3
    assert late.token_ids != base.token_ids


def test_random_control_equal_norm_and_sweep(setup):
    model, proc, studies, sae = setup
    for f in (0, 7, 50):
        r = random_direction(sae, f, seed=f)
        assert torch.allclose(r.norm(), sae.W_dec[f].norm(), rtol=1e-6)
        assert abs(float(torch.nn.functional.cosine_similarity(r, sae.W_dec[f].detach(), 0))) < 0.5
    sw = strength_sweep(model, proc, studies[:2], sae, 5, [0.0, 100.0], max_new_tokens=4)
    assert sw.reports[0.0] == sw.baseline and sw.random_reports[0.0] == sw.baseline
    assert abs(sw.random_norm - sw.feature_norm) < 1e-5
    assert set(sw.random_reports) == {0.0, 100.0}
    feat = _active_features(model, proc, studies, sae, 1)[0]
    sw2 = strength_sweep(
        model, proc, studies[:2], sae, feat, [1.0], unit="max_act", max_new_tokens=2, random_control=False
    )
    assert sw2.scale > 0 and sw2.absolute == [sw2.scale] and not sw2.random_reports


@pytest.mark.parametrize("kind", ["standard", "topk"])
def test_stock_saes(setup, kind):
    model, proc, studies, _ = setup
    torch.manual_seed(1)
    sae = (
        StandardSAE(StandardSAEConfig(d_in=128, d_sae=64))
        if kind == "standard"
        else TopKSAE(TopKSAEConfig(d_in=128, d_sae=64, k=8))
    )
    with torch.no_grad():
        for p in sae.parameters():
            p.normal_(std=0.2)
    sae.cfg.metadata.hook_name = HOOK
    assert SaeView(sae, "cpu", torch.float32).exact == (kind == "standard")
    base = steered_generate(model, proc, studies[:2], sae, [], max_new_tokens=4)
    same = steered_generate(
        model, proc, studies[:2], sae, [Intervention([0, 1, 2], "scale", 1.0)], max_new_tokens=4
    )
    assert same.token_ids == base.token_ids
    x = torch.randn(5, 128)
    view = SaeView(sae, "cpu", torch.float32)
    assert torch.allclose(view.encode_selected(x, torch.tensor([3, 9])), sae.encode(x)[:, [3, 9]], atol=1e-5)


def test_bad_input_errors(setup):
    model, proc, studies, sae = setup
    with pytest.raises(ValueError, match="kind"):
        Intervention(1, "boost")
    with pytest.raises(ValueError, match="out of range"):
        steered_generate(model, proc, studies[:1], sae, [Intervention(10_000, "add", 1.0)], max_new_tokens=1)
    with pytest.raises(ValueError, match="unknown position selection"):
        steered_generate(
            model, proc, studies[:1], sae, [Intervention(1, positions="nowhere")], max_new_tokens=1
        )
    with pytest.raises(ValueError, match="one batch"):
        steered_generate(
            model,
            proc,
            studies,
            sae,
            [Intervention(1, "clamp", torch.zeros(3, 500, 1))],
            batch_size=1,
            max_new_tokens=1,
        )


def test_benchmark_mechanics(setup, tmp_path):
    from sae_rad_ext.steering.benchmark import run_steering_benchmark, select_features
    from sae_rad_ext.steering.feature_reports import concept_descriptions

    model, proc, studies, sae = setup
    names = ["pleural_effusion", "pacemaker", "lung_opacity"]
    picked = select_features(model, proc, studies, sae, names)
    assert set(picked) == {f for f in names if any(s.labels.get(f) == 1 for s in studies)} != set()
    assert all(0 <= feat < sae.cfg.d_sae and 0.0 < f1 <= 1.0 for feat, f1 in picked.values())
    assert all(p.feature == p[0] and p.f1 == p[1] for p in picked.values())  # SelectedFeature fields
    bench = run_steering_benchmark(
        model,
        proc,
        sae,
        studies[:2],
        studies[1:],
        features={"pneumothorax": 5},
        descriptions=concept_descriptions({5: "pneumothorax"}),
        coefficients=[100.0],
        unit="absolute",
        findings=["pneumothorax"],
        max_new_tokens=3,
        out=tmp_path,
    )
    r = bench.findings["pneumothorax"]
    assert r.feature == 5 and r.coefficient == 100.0 and len(r.validation) == 4  # feature+random × (0, 100)
    assert r.fluency_loss is not None and r.baseline_fluency_loss is not None
    assert (tmp_path / "steering_pneumothorax.png").is_file() and (
        tmp_path / "steering_benchmark.json"
    ).is_file()
    assert bench.feature_reports is not None and set(bench.summary()) >= {"per_finding", "feature_reports"}

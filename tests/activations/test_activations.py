"""Activations at selected positions == the hooked model's cache there (exact); per-role norms."""

from __future__ import annotations

import pytest
import torch
from _studies import random_studies
from sae_rad_ext.adapters.hooked import HookedMaira2
from sae_rad_ext.adapters.roles import Role

from sae_rad_ext.activations.extract import (
    RoleNormStats,
    activations_from_batch,
    default_processor,
    iter_activations,
)
from sae_rad_ext.training.runner import StudyActivationsStore

HOOK = "blocks.2.hook_resid_post"


@pytest.fixture(scope="module")
def model():
    return HookedMaira2.tiny(seed=0)


def _full_cache(model, batch):
    _, cache = model.run_with_cache(
        batch.input_ids,
        pixel_values=batch.pixel_values,
        attention_mask=batch.attention_mask,
        names_filter=[HOOK],
    )
    return cache[HOOK]


def _frontal_corner(roles):
    return (roles.role == Role.IMAGE) & (roles.patch_row == 0) & (roles.image_slot == 0)


SELECTIONS = [
    "all",
    "text",
    "report",
    "image",
    "image:frontal",
    "image:lateral",
    "maira2_sae_paper",
    "maira2_sae_paper_with_images",
    _frontal_corner,
]


def _check(out, batch, full, positions, studies):
    mask = batch.roles.mask(positions)
    assert torch.equal(out.acts, full[mask])  # exact, bit for bit
    assert len(out) == int(mask.sum()) > 0
    b, t = torch.nonzero(mask, as_tuple=True)
    assert torch.equal(out.token_id, batch.input_ids[b, t])
    assert torch.equal(out.role, batch.roles.role[b, t].to(torch.int8))
    assert torch.equal(out.image_slot, batch.roles.image_slot[b, t].to(torch.int8))
    assert torch.equal(out.patch_row, batch.roles.patch_row[b, t].to(torch.int16))
    assert torch.equal(out.patch_col, batch.roles.patch_col[b, t].to(torch.int16))
    assert not bool(((out.role == Role.PAD) | (out.role == Role.SPECIAL)).any())
    n_pad = (batch.roles.role == Role.PAD).sum(1)  # position counts within the study's own sequence
    assert torch.equal(out.position, t - n_pad[b])
    assert out.row_study_ids == [studies[i].study_id for i in b.tolist()]


def test_iter_activations_equal_hooked_cache_exactly(model):
    studies = random_studies(5)
    proc = default_processor(model)
    batches = [proc.build(studies[i : i + 3], task="findings", with_report=True) for i in (0, 3)]
    fulls = [_full_cache(model, b) for b in batches]  # no stop_at_layer: the whole model ran
    for positions in ("all", "image:frontal", _frontal_corner):
        got = list(iter_activations(model, studies, HOOK, batch_size=3, positions=positions))
        assert len(got) == 2
        for i, out in enumerate(got):
            _check(out, batches[i], fulls[i], positions, studies[3 * i : 3 * i + 3])
    for positions in SELECTIONS:  # every selection on the 3-study batch (1, 2 and 3 images, left padding)
        out = activations_from_batch(model, batches[0], HOOK, positions)
        _check(out, batches[0], fulls[0], positions, studies[:3])


def test_positions_never_select_padding_or_bos(model):
    out = next(iter_activations(model, random_studies(4), HOOK, batch_size=4, positions="all"))
    assert (out.position > 0).all()  # position 0 is BOS
    assert not bool((out.role == Role.PAD).any() | (out.role == Role.SPECIAL).any())


def test_store_batches_equal_hooked_cache_exactly(model):
    studies = random_studies(6, seed=1)
    store = StudyActivationsStore(
        model,
        studies,
        hook_name=HOOK,
        d_in=model.cfg.d_model,
        context_size=64,
        n_batches_in_buffer=2,
        total_training_tokens=1000,
        store_batch_size_prompts=3,
        train_batch_size_tokens=32,
        positions="maira2_sae_paper_with_images",
    )
    proc = default_processor(model)
    for i in range(3):  # the third call wraps to the next epoch
        acts, tokens = store.get_raw_llm_batch()
        batch = proc.build(studies[3 * (i % 2) : 3 * (i % 2) + 3], task="findings", with_report=True)
        mask = batch.roles.mask("maira2_sae_paper_with_images")
        assert torch.equal(acts, _full_cache(model, batch)[mask])
        assert torch.equal(tokens, batch.input_ids[mask])
    assert store.n_dataset_processed == 9 and store.n_epochs == 1
    with pytest.raises(StopIteration):  # the stock epoch signal
        store.get_raw_llm_batch(raise_on_epoch_end=True)
        store.get_raw_llm_batch(raise_on_epoch_end=True)


def test_role_norm_stats_match_manual(model):
    stats = RoleNormStats()
    outs = list(
        iter_activations(model, random_studies(4), HOOK, batch_size=2, positions="all", norm_stats=stats)
    )
    acts = torch.cat([o.acts for o in outs])
    role = torch.cat([o.role for o in outs])
    slot = torch.cat([o.image_slot for o in outs])
    d = stats.to_dict()
    rep = role == Role.REPORT
    assert d["report"]["count"] == int(rep.sum())
    assert d["report"]["mean_norm"] == pytest.approx(acts[rep].norm(dim=-1).mean().item(), rel=1e-5)
    fr = (role == Role.IMAGE) & (slot == 0)
    assert d["image:frontal"]["mean_norm"] == pytest.approx(acts[fr].norm(dim=-1).mean().item(), rel=1e-5)
    assert d["all"]["count"] == len(acts)
    assert sum(v["fraction"] for k, v in d.items() if k != "all") == pytest.approx(1.0)
    merged = RoleNormStats.from_state(stats.state()).merge(stats)
    assert merged.counts["report"] == 2 * stats.counts["report"]
    assert "image:frontal" in stats.format_table()


def test_unsupported_hook_shape_raises(model):
    with pytest.raises(ValueError, match="blocks.L.hook_resid"):
        next(iter_activations(model, random_studies(2), "vision_projector.hook_out", positions="all"))

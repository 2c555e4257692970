"""Interpretation building blocks against dense / scikit-learn references (no model)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sae_rad_ext.adapters.roles import ImageSlot, Role

from sae_rad_ext.activations.extract import role_group_names
from sae_rad_ext.interpret.confidence import feature_confidence
from sae_rad_ext.interpret.explain import EnrichmentExplainer, FeatureContext, highlight, ngrams
from sae_rad_ext.interpret.scan import MapOverlap, grid_mask, mask_to_grid
from sae_rad_ext.interpret.score import KeywordJudge, detection_score, fuzzing_score, parse_claims, shuffled
from sae_rad_ext.interpret.score_store import ScoreStore, ScoreWriter, StudyInfo
from sae_rad_ext.interpret.stats import FeatureStats, FeatureStatsAccumulator
from sae_rad_ext.records import FeatureExample


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: one intra-op thread (a busy 2-core box makes OpenMP barriers cost ~20 ms per op)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _study_rows(g: torch.Generator, d: int, rows: int):
    z = torch.relu(torch.randn(rows, d, generator=g) - 1.0)  # sparse-ish, ties at 0
    role = torch.randint(2, 9, (rows,), generator=g).to(torch.int8)
    slot = torch.where(role == int(Role.IMAGE), torch.randint(0, 2, (rows,), generator=g), -1).to(torch.int8)
    return z, role, slot


def test_stats_match_dense_reference(tmp_path):
    d, n_studies = 12, 9
    g = torch.Generator().manual_seed(0)
    acc = FeatureStatsAccumulator(d, top_n=4, reservoir=5)
    Z, G, S, P = [], [], [], []
    for s in range(0, n_studies, 3):  # batches of 3 studies
        codes, groups, positions, index = [], [], [], []
        for b in range(3):
            z, role, slot = _study_rows(g, d, 7 + s + b)
            _, grp = role_group_names(role, slot)
            pos = torch.arange(z.shape[0]) + 3
            i = acc.add_study(f"s{s + b}")
            codes.append(z), groups.append(grp), positions.append(pos), index.append(i)
            Z.append(z), G.append(grp), S.append(torch.full((z.shape[0],), i)), P.append(pos)
        acc.update(codes, groups, positions, index)
    st = acc.result()
    Z, G, S, P = torch.cat(Z), torch.cat(G), torch.cat(S), torch.cat(P)
    fires = Z > 0
    assert torch.allclose(st.frac_nonzero, fires.double().mean(0))
    for gi in range(len(st.group_names)):
        assert torch.equal(st.group_fire[gi], fires[G == gi].sum(0))
        assert int(st.n_positions[gi]) == int((G == gi).sum())
    assert torch.allclose(st.act_max, Z.max(0).values)
    ref_mean = torch.where(fires, Z, 0).sum(0).double() / fires.sum(0).clamp(min=1)
    assert torch.allclose(st.mean_activation, ref_mean)
    for f in range(d):
        nz = Z[:, f][fires[:, f]].double().numpy()
        ref_counts, _ = np.histogram(nz, bins=st.hist_edges.numpy())
        assert int(st.hist[f].sum()) == len(nz)
        assert np.array_equal(st.hist[f, 1:-1].numpy(), ref_counts)
        # top studies: the per-study maxima, best first, with the position of the maximum
        per = torch.stack([Z[S == i, f].max() for i in range(n_studies)])
        order = per.argsort(descending=True)[:4]
        got = st.top_values[f]
        k = int((per > 0).sum().clamp(max=4))
        assert torch.allclose(got[:k], per[order][:k])
        for v, si, p in zip(got[:k], st.top_study[f][:k], st.top_position[f][:k], strict=True):
            rows = (S == si) & (Z[:, f] == v)
            assert bool(rows.any()) and int(p) in P[rows].tolist()
        # reservoir: only firing studies, each at most once, values = their maxima
        samp = [i for i in st.sample_study[f].tolist() if i >= 0]
        assert len(samp) == len(set(samp)) == min(5, int((per > 0).sum()))
        assert all(float(per[i]) > 0 for i in samp)
    st.save(tmp_path)
    again = FeatureStats.load(tmp_path)
    assert torch.equal(again.hist, st.hist) and again.study_ids == st.study_ids
    assert st.dead_features() == torch.nonzero(~fires.any(0)).flatten().tolist()


def test_memory_stays_bounded_while_streaming(tmp_path):
    """Stream 2,400 studies × 150 positions × 64 features: the accumulator's tensors and the score writer's
    buffer stay the same size whatever the number of studies (a dense copy grows linearly)."""
    d = 64

    def held(acc, writer) -> int:
        t = [v for v in vars(acc).values() if isinstance(v, torch.Tensor)]
        buf = sum(x.numel() * x.element_size() for rows in writer._rows.values() for x in rows)
        return sum(x.numel() * x.element_size() for x in t) + buf

    sizes = {}
    for n in (64, 2400):
        acc = FeatureStatsAccumulator(d, top_n=8, reservoir=8)
        writer = ScoreWriter(tmp_path / str(n), ["stats"], d, flush_every=32)
        g = torch.Generator().manual_seed(n)
        peak = 0
        for s in range(0, n, 8):
            codes, groups, pos, idx = [], [], [], []
            for b in range(8):
                z, role, slot = _study_rows(g, d, 150)
                codes.append(z), groups.append(role_group_names(role, slot)[1]), pos.append(torch.arange(150))
                idx.append(acc.add_study(f"s{s + b}"))
                writer.add(StudyInfo(f"s{s + b}", "fit"), {"stats": z.max(0).values})
            acc.update(codes, groups, pos, idx)
            peak = max(peak, held(acc, writer))
        writer.close()
        sizes[n] = peak
        assert len(ScoreStore(tmp_path / str(n))) == n
    assert sizes[2400] == sizes[64], sizes
    assert sizes[2400] < 2400 * 150 * d * 4 / 100  # a dense copy of the stream: 92 MB


def test_iou_and_pointing_game_on_synthetic_maps():
    grid = 4
    # a non-square source mask: the centred 8×8 square of an 8×12 image is what the model sees
    src = np.zeros((8, 12), np.uint8)
    src[4:8, 2:6] = 1  # columns 2..5: inside the crop (2..9) → crop columns 0..3 → patches (2..3, 0..1)
    cov = mask_to_grid(src, grid)
    assert torch.equal(
        grid_mask(cov), torch.tensor([[0, 0, 0, 0], [0, 0, 0, 0], [1, 1, 0, 0], [1, 1, 0, 0]]).bool()
    )
    mask = grid_mask(cov).flatten()
    zmap = torch.zeros(grid * grid, 3)
    zmap[[8, 9, 12, 13], 0] = 1.0  # feature 0: exactly the mask → IoU 1, hit
    zmap[[8, 9, 10, 11], 1] = torch.tensor(
        [2.0, 2.0, 2.0, 0.5]
    )  # feature 1: on = 8, 9, 10 → IoU 2/5, argmax 8 hit
    zmap[[0, 1], 2] = torch.tensor([1.0, 0.2])  # feature 2: on = {0} → IoU 0, miss
    ov = MapOverlap.empty(["pleural_effusion", "pneumothorax"], 3)
    ov.update(zmap, {"pleural_effusion": mask}, "holdout", 0.5)
    iou, hit = ov.mean_iou("holdout"), ov.pointing("holdout")
    assert iou[0].tolist() == pytest.approx([1.0, 2 / 5, 0.0])
    assert hit[0].tolist() == [1.0, 1.0, 0.0]
    assert int(ov.n[1, 1]) == 0 and int(ov.n[0].sum()) == 0  # no pneumothorax mask, nothing on fit
    # thin structure: no patch ≥ 25 % covered → every touched patch counts
    line = np.zeros((40, 40), np.uint8)
    line[:, 3] = 1
    assert grid_mask(mask_to_grid(line, 4)).sum() == 4


def _info(i: int, effusion: bool, text: str | None = None) -> StudyInfo:
    return StudyInfo(
        study_id=f"s{i}",
        split="fit",
        labels={"pleural_effusion": int(effusion), "cardiomegaly": int(i % 3 == 0)},
        findings=text or ("Small right pleural effusion." if effusion else "The lungs are clear."),
        views=["frontal"] + (["lateral"] if i % 2 else []),
    )


def test_offline_explainer_and_detection_beat_shuffled_baseline():
    studies = [_info(i, i % 2 == 0) for i in range(40)]
    top = [s for s in studies if s.labels["pleural_effusion"] == 1][:10]
    ex = FeatureExample(
        "s0",
        ["<frontal r05 c01>", " effusion"],
        [2.0, 0.1],
        0,
        role="image",
        view="frontal",
        patch_map=[[0.0] * 4, [0.0] * 4, [1.0, 0, 0, 0], [2.0, 1.0, 0, 0]],
    )
    e = EnrichmentExplainer()(FeatureContext(0, top, [1.0] * 10, studies, [ex]))
    assert "pleural effusion" in e.text and "lower image-left" in e.text, e.text
    claims = parse_claims(e.text)
    assert claims.findings.get("pleural_effusion") == 1 and claims.region == "lower image-left"
    # a second feature: cardiomegaly
    top2 = [s for s in studies if s.labels["cardiomegaly"] == 1][:10]
    e2 = EnrichmentExplainer()(FeatureContext(1, top2, [1.0] * 10, studies))
    assert "cardiomegaly" in e2.text
    hold_pos = [_info(100 + i, True) for i in range(10)]
    hold_neg = [_info(200 + i, False) for i in range(1, 20, 2)]
    s = detection_score(e.text, hold_pos, hold_neg)
    base = shuffled({0: e.text, 1: e2.text})
    assert base[0] == e2.text and base[1] == e.text
    s_sh = detection_score(base[0], hold_pos, hold_neg)
    assert s["f1"] == 1.0 and s["auroc"] == 1.0
    assert s_sh["auroc"] < 0.8 and s_sh["f1"] < s["f1"]
    assert KeywordJudge()("", hold_pos).tolist() == [0.0] * 10  # names nothing → predicts nothing
    # fuzzing: the truly active token is the effusion word
    fx = FeatureExample("s1", [" small", " right", " pleural", " effusion", "."], [0, 0, 0.2, 3.0, 0], 3)
    f = fuzzing_score("pleural effusion", [fx] * 6, seed=0)
    assert f["n"] == 12 and f["auroc"] > 0.5
    assert "<<" in highlight(fx) and "pleural effusion" in ngrams("A small pleural effusion.")


def test_recsae_confidence():
    fit = [_info(i, i % 2 == 0) for i in range(40)]
    hold = [_info(100 + i, i % 2 == 0) for i in range(40)]
    fs = torch.tensor([1.0 if s.labels["pleural_effusion"] else 0.0 for s in fit]) * torch.linspace(1, 2, 40)
    hs = torch.tensor([1.0 if s.labels["pleural_effusion"] else 0.0 for s in hold])
    c = feature_confidence(0, fs, fit, hs, hold, n=10)
    assert c.dictionary == ["finding:pleural_effusion"]
    assert c.recall == 1.0 and c.specificity == 1.0 and c.interpretable
    mixed = torch.cat([torch.linspace(2, 1, 10), torch.zeros(30)])  # top 10: half effusion, half lateral
    noise = feature_confidence(1, mixed, fit, torch.rand(40) * (torch.rand(40) > 0.5), hold, n=10)
    assert not noise.dictionary and noise.recall == 0.0 and not noise.interpretable


def test_score_store_blocks(tmp_path):
    w = ScoreWriter(tmp_path, ["image", "last_prompt"], 5, flush_every=2)
    rows = torch.arange(35, dtype=torch.float32).view(7, 5)
    for i in range(7):
        w.add(
            StudyInfo(f"s{i}", "fit" if i % 2 else "holdout", labels={"x": [1, 0, -1, None][i % 4]}),
            {"image": rows[i]},
        )
    w.close()
    st = ScoreStore(tmp_path)
    assert torch.equal(st.scores("image"), rows) and torch.equal(st.block("image", 1, 3), rows[:, 1:3])
    assert torch.equal(st.scores("last_prompt"), torch.zeros(7, 5))
    lab = st.labels(["x"])[:, 0]
    assert lab[0] == 1 and lab[1] == 0 and math.isnan(lab[2]) and lab[3] == 0
    with pytest.raises(KeyError, match="no scores of kind"):
        st.scores("generated")


def test_slot_group_names_cover_views():
    names, codes = role_group_names(
        torch.tensor([int(Role.IMAGE)] * 2, dtype=torch.int8),
        torch.tensor([int(ImageSlot.FRONTAL), int(ImageSlot.LATERAL)], dtype=torch.int8),
    )
    assert [names[c] for c in codes.tolist()] == ["image:frontal", "image:lateral"]

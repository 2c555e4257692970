"""The whole interpretation pipeline on the tiny model with a KNOWN planted feature.

The tiny MAIRA-2 is untrained, so a wrapper plants the concept: at the hook, every frontal image patch
that shows a bright square (drawn on "pleural effusion" studies, also given as their 2-D mask) gets
``alpha × d`` added. SAE latent 0 reads exactly ``d`` (with a bias that keeps it silent otherwise), so
alignment must find latent 0 for pleural effusion with holdout F1 = AUROC = 1, its map must match the
mask (IoU, pointing game), and its explanation must beat the shuffled baseline.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sae_lens import StandardSAE, StandardSAEConfig
from sae_rad_ext.adapters import HookedMaira2, Maira2Processor

from sae_rad_ext.data.study import Study
from sae_rad_ext.interpret.run import InterpretConfig, interpret
from sae_rad_ext.interpret.score import detection_score
from sae_rad_ext.interpret.score_store import ScoreStore
from sae_rad_ext.records import InterpretationRun

HOOK = "blocks.0.hook_resid_post"
ALPHA = 40.0


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class PlantedModel:
    """Wraps HookedMaira2: adds ``ALPHA * d`` at the hook on bright frontal patches of the lower half."""

    def __init__(self, inner: HookedMaira2, direction: torch.Tensor) -> None:
        self.inner, self.d = inner, direction
        self.cfg, self.tokenizer = inner.cfg, inner.tokenizer

    def parameters(self):
        return self.inner.parameters()

    def run_with_cache(self, ids, pixel_values=None, attention_mask=None, **kw):
        logits, cache = self.inner.run_with_cache(
            ids, pixel_values=pixel_values, attention_mask=attention_mask, **kw
        )
        acts = cache[HOOK]
        P, tok_id = self.cfg.tokens_per_image, self.cfg.image_token_index
        grid = int(round(P**0.5))
        patch = pixel_values.shape[-1] // grid
        img = 0
        for b in range(ids.shape[0]):
            pos = torch.nonzero(ids[b] == tok_id).flatten()
            for k in range(len(pos) // P):
                px = pixel_values[img, 0]
                bright = (
                    px.unfold(0, patch, patch).unfold(1, patch, patch).mean((-1, -2)) > 1.0
                )  # [grid, grid]
                bright[: grid // 2] = False  # only the lower half carries the concept
                if k == 0:  # frontal only
                    acts[b, pos[k * P : (k + 1) * P][bright.flatten()]] += ALPHA * self.d
                img += 1
        return logits, cache


def _studies(n: int, size: int = 112) -> list[Study]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        pos = i % 2 == 0
        img = rng.integers(0, 90, (size, size), dtype=np.uint8)
        mask = np.zeros((size, size), np.uint8)
        if pos:
            mask[70:112, 14:56] = 1  # patches rows 5-7, cols 1-3 of the 8×8 grid
            img[mask.astype(bool)] = 255
        else:
            img[0:42, 70:112] = 255  # the same bright square elsewhere: brightness alone is no cue
        out.append(
            Study(
                study_id=f"p{i}",
                frontal=img,
                lateral=img if i % 3 == 0 else None,
                findings="Small right pleural effusion." if pos else "The lungs are clear. No effusion.",
                labels={"pleural_effusion": int(pos), "cardiomegaly": int(i % 3 == 1)},
                metadata={"masks": {"frontal": {"pleural_effusion": mask}}},
            )
        )
    return out


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    torch.manual_seed(0)
    inner = HookedMaira2.tiny(seed=0, text_layers=1, vision_layers=1)
    d_in = inner.cfg.d_model
    d = torch.randn(d_in)
    d = d / d.norm()
    sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=24))
    with torch.no_grad():
        sae.b_dec.zero_()
        w = torch.randn(d_in, 24) * 0.05
        w -= d[:, None] * (d @ w)[None]  # the other latents cannot see the planted direction
        sae.W_enc.copy_(w)
        sae.W_enc[:, 0] = d
        sae.b_enc.zero_()
        sae.b_enc[0] = -ALPHA / 2
        sae.W_dec.copy_(sae.W_enc.T)
    model = PlantedModel(inner, d)
    proc = Maira2Processor.from_model_config(inner.model.config, inner.tokenizer)
    out = tmp_path_factory.mktemp("interp")
    cfg = InterpretConfig(
        hook_name=HOOK,
        concepts=("pleural_effusion", "cardiomegaly"),
        generate=False,
        batch_size=8,
        max_features=6,
        n_examples=4,
        n_detect=8,
    )
    studies = _studies(32)
    res = interpret(model, sae, studies, out, cfg, processor=proc)
    return res, model, sae, studies, out, cfg, proc


def test_alignment_finds_the_planted_feature(planted):
    res = planted[0]
    best = res.best["pleural_effusion"]
    assert best.feature == 0 and best.kind.startswith("image")
    assert best.f1 == 1.0 and best.auroc == 1.0 and best.n_pos > 0 and best.n_neg > 0
    assert best.iou is not None and best.iou > 0.8 and best.pointing == 1.0
    assert best.leaks is None
    img = res.best_by_kind["image:frontal"]["pleural_effusion"]
    assert img.feature == 0 and img.f1 == 1.0
    # the leaking kind is labelled as such
    assert all(r.leaks for r in res.alignment.rows if r.kind == "report_tf")
    st = res.stats
    assert st.role_frequency(0)["image:frontal"] > 0 and st.role_frequency(0).get("report", 0.0) == 0.0
    assert res.confidence[0].dictionary == ["finding:pleural_effusion"] and res.confidence[0].interpretable


def test_explanation_and_scores_beat_shuffled(planted):
    res = planted[0]
    e = res.explanations[0]
    assert "pleural effusion" in e.text and "frontal image patches" in e.text, e.text
    det = res.scores[0]["detection"]
    assert det["f1"] == 1.0 and det["auroc"] == 1.0
    assert len(res.explanations) > 1  # a shuffled baseline needs another feature's explanation
    out = planted[4]
    sc = json.loads((out / "scores" / "detection" / f"{HOOK}_latent0.txt").read_text())
    if "pleural effusion" not in sc["shuffled_explanation"]:
        assert sc["shuffled_metrics"]["auroc"] < 1.0
    # a wrong explanation on the same held-out studies scores at chance
    store = ScoreStore(out / "scan")
    held = [
        (s, v)
        for s, v in zip(store.studies, store.scores("stats")[:, 0].tolist(), strict=True)
        if s.split == "holdout"
    ]
    pos = [s for s, v in held if v > 0]
    neg = [s for s, v in held if v <= 0]
    assert detection_score(e.text, pos, neg)["auroc"] == 1.0
    assert detection_score("cardiomegaly", pos, neg)["auroc"] < 0.75
    fz = res.scores[0]["fuzzing"]
    assert (
        fz["n"] > 0 and fz["auroc"] > res.scores[0]["fuzzing_shuffled"]["auroc"] - 1e-9 and fz["auroc"] > 0.5
    )


def test_outputs_layout_and_interpretation_run(planted):
    out = planted[4]
    for p in (
        "alignment.csv",
        "alignment.jsonl",
        "confidence.jsonl",
        "features.csv",
        "summary.json",
        "examples.jsonl",
        f"explanations/{HOOK}_latent0.txt",
        f"scores/detection/{HOOK}_latent0.txt",
        f"scores/fuzzing/{HOOK}_latent0.txt",
        "scan/stats.safetensors",
        "scan/overlap.safetensors",
    ):
        assert (out / p).is_file(), p
    sc = json.loads((out / "scores" / "detection" / f"{HOOK}_latent0.txt").read_text())
    assert {"explanation", "metrics", "shuffled_explanation", "shuffled_metrics"} <= set(sc)
    run = InterpretationRun.load(out)
    r = run.by_index()[0]
    assert len(run) == 24 and r.frac_nonzero > 0 and r.hist_counts and r.top_examples
    ex = r.top_examples[0]
    assert ex.role == "image" and ex.view == "frontal" and ex.patch_map is not None
    assert np.asarray(ex.patch_map)[5:, 1:4].min() > 0 and np.asarray(ex.patch_map)[:5].max() == 0
    assert ex.heatmap_png and run.resolve(ex.heatmap_png).is_file() and run.resolve(ex.image_path).is_file()
    assert r.best_concept.concept == "pleural_effusion" and r.best_concept.f1 == 1.0
    assert r.explanations[0].scores["detection_f1"] == 1.0
    assert "dead_features" in run.meta
    summary = json.loads((out / "summary.json").read_text())
    assert summary["best_feature_per_concept"]["pleural_effusion"]["feature"] == 0


def test_resume_skips_model_passes(planted, monkeypatch):
    res, model, sae, studies, out, cfg, proc = planted
    import sae_rad_ext.interpret.feature_examples as ex_mod
    import sae_rad_ext.interpret.run as run_mod

    def boom(*a, **k):
        raise AssertionError("a finished model pass ran again")

    monkeypatch.setattr(run_mod, "scan", boom)
    monkeypatch.setattr(ex_mod, "collect_examples", boom)
    again = interpret(model, sae, studies, out, cfg, processor=proc)
    assert again.best["pleural_effusion"].feature == 0
    monkeypatch.undo()
    # a changed input invalidates the scan
    called = []
    monkeypatch.setattr(run_mod, "scan", lambda *a, **k: called.append(1) or boom())
    with pytest.raises(AssertionError):
        interpret(model, sae, studies[:-2], out, cfg, processor=proc)
    assert called


def test_publishers_accept_the_run(planted, tmp_path):
    from sae_rad_ext.publish.html import build_site

    out = planted[4]
    site = build_site(InterpretationRun.load(out), tmp_path / "html")
    assert (tmp_path / "html" / "features" / "0.html").is_file() and site


@pytest.mark.slow
def test_cli_interpret_on_phantoms(tmp_path):
    """`sae-rad interpret` end to end: tiny model, a saved SAELens SAE, phantoms generated on the fly."""
    from typer.testing import CliRunner

    from sae_rad_ext.cli.app import app

    inner = HookedMaira2.tiny(seed=0)
    sae = StandardSAE(StandardSAEConfig(d_in=inner.cfg.d_model, d_sae=32))
    sae.cfg.metadata.hook_name = "blocks.1.hook_resid_post"
    sae.save_model(str(tmp_path / "sae"))
    args = [
        "interpret",
        "--sae",
        str(tmp_path / "sae"),
        "--studies",
        "phantom:n=12,seed=3,image_size=112",
        "--out",
        str(tmp_path / "out"),
        "--max-new-tokens",
        "3",
        "--max-features",
        "4",
        "--batch-size",
        "6",
    ]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "pleural_effusion" in r.output or "cardiomegaly" in r.output
    run = InterpretationRun.load(tmp_path / "out")
    assert len(run) == 32 and run.meta["hook_name"] == "blocks.1.hook_resid_post"
    kinds = json.loads((tmp_path / "out" / "scan" / "scores" / "kinds.json").read_text())["kinds"]
    assert "generated" in kinds and "report_tf" in kinds
    studies = [json.loads(x) for x in (tmp_path / "out" / "scan" / "studies.jsonl").read_text().splitlines()]
    assert all(s["generated"] is not None for s in studies)
    r2 = CliRunner().invoke(
        app, [*args[:-4], "--max-features", "4", "--batch-size", "6", "--scorers", "bogus"]
    )
    assert r2.exit_code != 0 and "unknown scorer" in r2.output

from __future__ import annotations

import io

import pytest
from rich.console import Console

from sae_rad_ext.util.progress import ProgressEvent, RichProgress, Ticker, sae_lens_tqdm


def test_ticker_reports_cumulative_events_in_order():
    seen: list[ProgressEvent] = []
    tick = Ticker(seen.append, "scan", total=5)
    tick(2)
    tick(3, loss=0.5)
    assert [(e.stage, e.done, e.total) for e in seen] == [("scan", 2, 5), ("scan", 5, 5)]
    assert dict(seen[1].metrics) == {"loss": 0.5}
    Ticker(None, "nothing")(4)  # no callback: a no-op


def test_rich_progress_tracks_each_stage():
    bar = RichProgress(console=Console(file=io.StringIO()), enabled=False)
    bar.add("train", "SAE tokens", 100, unit="tok", completed=40)
    with bar:
        bar(ProgressEvent("train", 10))
        bar(ProgressEvent("llm", 7, total=20, metrics={"loss": 1.0}))
    tasks = {t.description: t for t in bar.progress.tasks}
    assert (tasks["SAE tokens"].completed, tasks["SAE tokens"].total) == (50, 100)
    assert (tasks["llm"].completed, tasks["llm"].total) == (7, 20)


def _run_sae_lens_bars() -> None:
    import sae_lens.training.sae_trainer as trainer_mod

    bar = trainer_mod.tqdm(total=4, desc="Training SAE")
    bar.update(1)
    bar.set_description("1| loss 0.3")
    bar.update(3)
    bar.close()


def test_sae_lens_tqdm_silenced_under_quiet(capfd):
    pytest.importorskip("sae_lens")
    _run_sae_lens_bars()
    assert "Training SAE" in capfd.readouterr().err  # SAELens draws its bar normally
    with sae_lens_tqdm(None):
        _run_sae_lens_bars()
    assert capfd.readouterr().err == ""
    _run_sae_lens_bars()  # restored after the block
    assert "Training SAE" in capfd.readouterr().err


def test_sae_lens_tqdm_routes_to_callback(capfd):
    seen: list[ProgressEvent] = []
    with sae_lens_tqdm(seen.append):
        _run_sae_lens_bars()
    assert [(e.stage, e.done, e.total) for e in seen] == [("SAELens: Training SAE", 1, 4), ("SAELens: Training SAE", 4, 4)]
    assert capfd.readouterr().err == ""


# ---- library functions emit ordered events through one callback type -------------------------------
def _check_stages(events: list[ProgressEvent], stages: list[str]) -> None:
    """Events arrive stage after stage in ``stages`` order; within a stage ``done`` rises strictly, the
    total never changes and the last event has ``done == total``."""
    order = [e.stage for i, e in enumerate(events) if i == 0 or events[i - 1].stage != e.stage]
    assert order == stages, order
    for stage in stages:
        mine = [e for e in events if e.stage == stage]
        done = [e.done for e in mine]
        assert all(b > a for a, b in zip(done, done[1:], strict=False)), (stage, done)
        assert {e.total for e in mine} == {mine[-1].total} and mine[-1].total is not None, stage
        assert done[-1] == mine[-1].total, (stage, done[-1], mine[-1].total)


def test_phantom_dataset_reports_each_written_study(tmp_path):
    from sae_rad_ext.data.phantom.io import write_phantom_dataset

    seen: list[ProgressEvent] = []
    write_phantom_dataset(tmp_path / "d", 5, seed=0, image_size=64, lateral_prob=0.0, prior_prob=0.0,
                          progress=seen.append)
    _check_stages(seen, ["phantom studies"])
    assert [e.done for e in seen] == [1, 2, 3, 4, 5]


def test_tiny_training_reports_steps_with_the_loss(tmp_path):
    from sae_rad_ext.data.phantom.generator import generate_studies
    from sae_rad_ext.demo.tiny_training import TinyModelConfig, train_tiny_maira2

    studies = list(generate_studies(8, 0, image_size=64, lateral_prob=0.0, prior_prob=0.0))
    cfg = TinyModelConfig(image_size=64, vision_hidden=32, vision_layers=1, vision_heads=2, text_hidden=32,
                          text_layers=1, text_heads=2, vocab_size=512, vision_epochs=1.0, vision_batch=4,
                          lm_epochs=1.0, lm_batch=4)
    seen: list[ProgressEvent] = []
    res = train_tiny_maira2(studies, cfg, tmp_path / "m", progress=seen.append)
    _check_stages(seen, ["vision", "reports"])
    assert seen[-1].total == res.info["reports"]["steps"]
    assert all(set(e.metrics) == {"loss"} for e in seen)
    first_report = next(e for e in seen if e.stage == "reports")
    assert seen[0].metrics["loss"] == pytest.approx(res.info["vision"]["loss_first"])
    assert first_report.metrics["loss"] == pytest.approx(res.info["reports"]["loss_first"])


@pytest.fixture(scope="module")
def tiny_steering():
    import torch
    from sae_rad_ext.adapters import HookedMaira2, Maira2Processor

    import sae_rad_ext.saes.matryoshka as mat
    from sae_rad_ext.data.phantom.generator import generate_studies

    model = HookedMaira2.tiny(seed=0)
    proc = Maira2Processor.from_model_config(model.model.config, model.tokenizer)
    studies = list(generate_studies(3, 0, image_size=112, lateral_prob=0.0, prior_prob=0.0))
    torch.manual_seed(0)
    sae = mat.RadMatryoshkaSAE(mat.RadMatryoshkaSAEConfig(d_in=128, d_sae=16, group_sizes=[8, 8]))
    sae.cfg.metadata.hook_name = "blocks.1.hook_resid_post"
    return model, proc, studies, sae


@pytest.mark.parametrize(
    ("kind", "random_control", "generations"),
    [("add", True, 5), ("add", False, 3), ("clamp", True, 4)],  # coefficients 0, 2, 5 (see below)
)
def test_strength_sweep_counts_every_generation(tiny_steering, kind, random_control, generations):
    from sae_rad_ext.steering.steer import strength_sweep

    model, proc, studies, sae = tiny_steering
    seen: list[ProgressEvent] = []
    strength_sweep(model, proc, studies, sae, 3, [0.0, 2.0, 5.0], kind=kind, random_control=random_control,
                   max_new_tokens=1, batch_size=2, progress=seen.append)
    # baseline + each coefficient (adding 0 reuses the baseline) + each nonzero random control ("add" only)
    _check_stages(seen, ["strength sweep"])
    assert seen[-1].total == generations * len(studies)


def test_knowledge_maps_report_activations_then_probes(tmp_path, tiny_steering):
    from sae_rad_ext.maps.knowledge_maps import MapConfig, build_knowledge_maps

    model, proc, studies, _ = tiny_steering
    seen: list[ProgressEvent] = []
    build_knowledge_maps(model, studies, tmp_path / "maps", MapConfig(layers=[0, 1], techniques=("probe",)),
                         processor=proc, progress=seen.append)
    _check_stages(seen, ["activations", "probes"])
    assert seen[0].total == len(studies)

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

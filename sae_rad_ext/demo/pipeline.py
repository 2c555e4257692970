"""``sae-rad demo``: the whole pipeline on planted-truth phantoms, offline, on CPU, in one call.

    from sae_rad_ext.demo.pipeline import DemoConfig, run_demo
    summary = run_demo(DemoConfig(out="runs/demo"))           # or DemoConfig.quick(...) for a smoke run

Stages (each timed; every printed number is also in ``<out>/summary.json``):

1. ``data``     phantom studies → ``<out>/data`` (``datasets`` folder + MIMIC-CXR-JPG layout, splits)
2. ``model``    tiny MAIRA-2 trained on the train split, or reused from the cache → ``<out>/model``
3. ``reports``  greedy reports on the test split, labeled, F1 per finding vs planted truth
4. ``layers``   per layer: linear probe + quick-SAE best latent at image tokens (study level, held out)
5. ``sae``      Matryoshka BatchTopK SAE at the middle layer through SAELens's runner → ``<out>/sae``
6. ``sae_eval`` explained variance / L0 per Matryoshka level on test activations; best latent per finding
7. later stages (interpretation, steering, publishing) — see :mod:`sae_rad_ext.demo.stages`
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from sae_rad_ext.data.study import FINDINGS, Study
from sae_rad_ext.demo.sae import evaluate_demo_sae, train_demo_sae
from sae_rad_ext.demo.tiny_training import TinyModelConfig
from sae_rad_ext.util.files import write_json, write_jsonl
from sae_rad_ext.util.progress import RichProgress, Ticker, prefixed

if TYPE_CHECKING:
    from sae_rad_ext.adapters.hooked import HookedMaira2
    from sae_rad_ext.adapters.maira2 import Maira2ForConditionalGeneration
    from sae_rad_ext.adapters.prompts import Maira2Processor

__all__ = ["DemoConfig", "run_demo"]

DEMO_POSITIONS = "maira2_sae_paper_with_images"
"""The demo's SAE positions: image patches + study-specific prompt values + report (boilerplate dropped).
Image positions are kept (unlike ``maira2_sae_paper``) because the phantom benchmark scores features
against the planted findings' 2-D masks at the image tokens."""


@dataclass
class DemoConfig:
    """Everything ``sae-rad demo`` does; :meth:`quick` is the smoke version the tests run."""

    out: Path = Path("runs/demo")
    seed: int = 0
    device: str = "cpu"
    n_studies: int = 1200
    """Phantom studies generated (≈ 80 % train, 10 % validate, 10 % test by patient hash)."""
    workers: int = 2
    """Processes rendering phantoms."""
    model: TinyModelConfig = field(default_factory=TinyModelConfig)
    n_report_eval: int = 200
    """Test studies whose reports are generated and scored."""
    max_new_tokens: int = 80
    n_probe_train: int = 600
    """Training studies used by the per-layer probes / quick SAEs (the held-out side is the test split)."""
    probe_sae_steps: int = 300
    sae_layer: int | None = None
    """Layer of the SAE (``blocks.L.hook_resid_post``); default the middle layer ``n_layers // 2``."""
    positions: str = DEMO_POSITIONS
    d_sae: int = 1024
    k: int = 16
    group_fractions: tuple[float, ...] = (0.0625, 0.125, 0.25, 0.5625)
    sae_training_tokens: int = 200_000
    sae_batch_tokens: int = 1024
    sae_lr: float = 2e-3
    norm_estimate_batches: int = 8
    """Batches SAELens uses to estimate the activation scaling factor (``expected_average_only_in``)."""
    cache_dir: Path | None = None
    """Root of the trained-model cache (default ``$SAE_RAD_EXT_CACHE`` or ``~/.cache/sae-rad-ext``)."""
    retrain: bool = False
    quick_mode: bool = False

    @classmethod
    def quick(cls, **kw: Any) -> DemoConfig:
        """A smoke run (< 1 minute): few studies, a smaller model, few steps — numbers are not meaningful."""
        model = TinyModelConfig(
            vision_hidden=32,
            vision_layers=1,
            vision_heads=2,
            text_hidden=64,
            text_layers=2,
            text_heads=2,
            vocab_size=512,
            vision_epochs=1.0,
            lm_epochs=1.0,
            lm_batch=16,
            vision_batch=32,
        )
        base = dict(
            n_studies=100,
            model=model,
            n_report_eval=8,
            max_new_tokens=24,
            n_probe_train=40,
            probe_sae_steps=30,
            d_sae=128,
            k=8,
            sae_training_tokens=8_000,
            sae_batch_tokens=256,
            norm_estimate_batches=2,
            quick_mode=True,
        )
        return cls(**{**base, **kw})

    @property
    def phantom_options(self) -> dict[str, Any]:
        return {"image_size": self.model.image_size, "lateral_prob": 0.0, "prior_prob": 0.0}

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return json.loads(json.dumps(d, default=str))


class _Ui:
    """The demo's display: one :class:`RichProgress` (``bars``, the progress callback every stage's library
    calls get), stage timings and skip records."""

    def __init__(self, console: Any = None) -> None:
        self.bars = RichProgress(console=console)
        self.console = self.bars.console
        self.timings: dict[str, float] = {}
        self.skipped: dict[str, str] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = round(time.perf_counter() - t0, 2)

    def skip(self, name: str, reason: str) -> None:
        self.skipped[name] = reason
        self.console.print(f"[yellow]skipped stage {name!r}: {reason}")


# ---- stages -------------------------------------------------------------------------------------
def _data(cfg: DemoConfig, ui: _Ui) -> dict[str, list[Study]]:
    from sae_rad_ext.data.phantom.io import load_phantom_dataset, write_phantom_dataset

    root = cfg.out / "data"
    want = {"seed": cfg.seed, "n": cfg.n_studies, "options": cfg.phantom_options}
    meta = root / "phantom.json"
    have = json.loads(meta.read_text()) if meta.exists() else None
    if not have or {k: have.get(k) for k in want} != json.loads(json.dumps(want)):
        write_phantom_dataset(
            root,
            cfg.n_studies,
            cfg.seed,
            workers=cfg.workers,
            overwrite=True,
            progress=ui.bars,
            **cfg.phantom_options,
        )
    splits: dict[str, list[Study]] = {"train": [], "validate": [], "test": []}
    tick = Ticker(ui.bars, "load studies", cfg.n_studies)
    for s in load_phantom_dataset(root):
        splits[s.metadata["split"]].append(s)
        tick(1)
    if not splits["train"] or not splits["test"]:
        raise RuntimeError(
            f"phantom splits too small ({ {k: len(v) for k, v in splits.items()} }); raise n_studies"
        )
    return splits


def _model(cfg: DemoConfig, ui: _Ui, splits: dict[str, list[Study]]) -> dict[str, Any]:
    from sae_rad_ext.demo.tiny_training import cached_tiny_maira2

    mcfg = dataclasses.replace(
        cfg.model,
        seed=cfg.seed,
        data={"phantom": {"seed": cfg.seed, "n": cfg.n_studies, **cfg.phantom_options}, "split": "train"},
    )
    res = cached_tiny_maira2(
        mcfg,
        splits["train"],
        val=splits["validate"],
        cache_dir=cfg.cache_dir,
        progress=prefixed(ui.bars, "train model"),
        retrain=cfg.retrain,
    )
    dst = cfg.out / "model"
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(res.path, dst)
    if not res.trained:
        ui.console.print(f"[green]reused cached model {res.path}")
    return {"path": str(dst), "cache_path": str(res.path), "trained_now": res.trained, "training": res.info}


def _load_model(cfg: DemoConfig) -> tuple[Maira2ForConditionalGeneration, HookedMaira2, Maira2Processor]:
    from sae_rad_ext.adapters.hooked import HookedMaira2
    from sae_rad_ext.adapters.loading import load_maira2
    from sae_rad_ext.adapters.prompts import Maira2Processor

    model, tok = load_maira2(cfg.out / "model", device=cfg.device)
    hooked = HookedMaira2(model, tok, model_name="tiny-maira2-phantom")
    proc = Maira2Processor.from_model_config(model.config, tok)
    return model, hooked, proc


def _reports(
    cfg: DemoConfig, ui: _Ui, model: Maira2ForConditionalGeneration, proc: Maira2Processor, test: list[Study]
) -> dict[str, Any]:
    from sae_rad_ext.evaluation.phantom_benchmark import evaluate_reports, generate_reports

    studies = test[: cfg.n_report_eval]
    texts = generate_reports(model, proc, studies, max_new_tokens=cfg.max_new_tokens, progress=ui.bars)
    ev = evaluate_reports(texts, studies)
    path = cfg.out / "reports" / "generated_test_reports.jsonl"
    write_jsonl(
        path,
        (
            {
                "study_id": s.study_id,
                "generated": t,
                "reference": s.report,
                "planted": {k: s.labels.get(k) for k in FINDINGS},
            }
            for s, t in zip(studies, texts, strict=True)
        ),
    )
    return {**ev.to_dict(), "file": str(path)}


def _layers(
    cfg: DemoConfig, ui: _Ui, hooked: HookedMaira2, proc: Maira2Processor, splits: dict[str, list[Study]]
) -> dict[str, Any]:
    from sae_rad_ext.evaluation.phantom_benchmark import image_token_activations, probe_layers, study_truth

    tr, te = splits["train"][: cfg.n_probe_train], splits["test"]
    studies = tr + te
    layers = list(range(hooked.cfg.n_layers))
    acts = image_token_activations(hooked, proc, studies, layers, progress=ui.bars)
    y = study_truth(studies)
    tr_idx, te_idx = np.arange(len(tr)), np.arange(len(tr), len(studies))
    return probe_layers(
        acts,
        y,
        tr_idx,
        te_idx,
        steps=cfg.probe_sae_steps,
        seed=cfg.seed,
        d_sae=min(512, cfg.d_sae),
        k=cfg.k,
        progress=ui.bars,
    )


def run_demo(cfg: DemoConfig, console: Any = None) -> dict[str, Any]:
    """Run every stage, write ``<out>/summary.json`` (atomically) and return the summary."""
    from sae_rad_ext.demo import stages as demo_stages

    cfg.out = Path(cfg.out)
    cfg.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    ui = _Ui(console)
    t0 = time.perf_counter()
    summary: dict[str, Any] = {
        "config": cfg.to_dict(),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
    }
    with ui.bars:
        with ui.stage("data"):
            splits = _data(cfg, ui)
        summary["data"] = {
            "path": str(cfg.out / "data"),
            **{f"n_{k}": len(v) for k, v in splits.items()},
            "prevalence_test": {k: float(np.mean([s.labels[k] for s in splits["test"]])) for k in FINDINGS},
        }
        with ui.stage("model"):
            summary["model"] = _model(cfg, ui, splits)
        model, hooked, proc = _load_model(cfg)
        layer = cfg.sae_layer if cfg.sae_layer is not None else hooked.cfg.n_layers // 2
        with ui.stage("reports"):
            summary["reports"] = _reports(cfg, ui, model, proc, splits["test"])
        with ui.stage("layers"):
            summary["layers"] = _layers(cfg, ui, hooked, proc, splits)
        with ui.stage("sae"):
            sae_dir = train_demo_sae(cfg, hooked, proc, splits, layer, progress=ui.bars)
        with ui.stage("sae_eval"):
            summary["sae"], sae, x_test = evaluate_demo_sae(
                cfg, hooked, proc, splits, sae_dir, layer, progress=ui.bars
            )
        ctx = demo_stages.StageContext(
            cfg=cfg,
            ui=ui,
            model=model,
            hooked=hooked,
            processor=proc,
            splits=splits,
            sae=sae,
            sae_dir=sae_dir,
            layer=layer,
            x_test=x_test,
            summary=summary,
        )
        demo_stages.run_later_stages(ctx)
    summary["timings_s"] = {**ui.timings, "total": round(time.perf_counter() - t0, 2)}
    summary["skipped_stages"] = ui.skipped
    write_json(cfg.out / "summary.json", summary, indent=1, default=str)
    demo_stages.print_summary(summary, ui.console)
    return summary

"""Measure a model against the phantoms' planted truth: report F1, per-layer probes, best single latents.

    texts = generate_reports(hf_model, processor, test_studies)
    ev = evaluate_reports(texts, test_studies)              # labeler on generated text vs planted labels
    acts = image_token_activations(hooked, processor, studies, layers=range(6))
    layers = probe_layers(acts, train_idx, test_idx, labels)  # linear probe + quick-SAE best latent per layer

Study-level scores of a latent are its maximum over the study's image tokens; the latent and its threshold
are chosen on the training studies and scored on held-out ones (F1). "Chance" is the F1 of always
answering positive, ``2p / (1 + p)`` at prevalence ``p`` (a random guesser at the prevalence scores ``p``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence, Sized
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from sae_rad_ext.adapters.generation import generate_reports as _generate_batch
from sae_rad_ext.adapters.hooked import HookedMaira2
from sae_rad_ext.adapters.prompts import Maira2Processor
from sae_rad_ext.data.labels import binarize, label_report
from sae_rad_ext.data.study import FINDINGS, Study
from sae_rad_ext.evaluation.metrics import best_f1_threshold, precision_recall_f1
from sae_rad_ext.evaluation.metrics import f1 as binary_f1
from sae_rad_ext.protocols import ReportModel
from sae_rad_ext.saes.matryoshka import RadMatryoshkaSAE
from sae_rad_ext.util.batching import batched
from sae_rad_ext.util.progress import ProgressCallback, Ticker

__all__ = [
    "ReportEval",
    "best_latent_f1",
    "evaluate_reports",
    "generate_reports",
    "image_token_activations",
    "probe_f1",
    "probe_layers",
    "study_truth",
    "train_quick_topk_sae",
]

def study_truth(studies: Sequence[Study]) -> np.ndarray:
    """``int [n_studies, n_findings]`` planted labels (``Study.labels``) in :data:`FINDINGS` order."""
    return np.array([[int(s.labels.get(k) or 0) for k in FINDINGS] for s in studies], dtype=np.int64)


# ---- generated reports ---------------------------------------------------------------------------
@torch.no_grad()
def generate_reports(
    model: ReportModel,
    processor: Maira2Processor,
    studies: Sequence[Study],
    *,
    batch_size: int = 32,
    max_new_tokens: int = 96,
    progress: ProgressCallback | None = None,
) -> list[str]:
    """Greedy FINDINGS reports of ``studies`` (``batch_size`` at a time, left padding, KV cache) from a HF
    MAIRA-2 model or its HookedMaira2, decoded by the end-of-report rule of
    :func:`sae_rad_ext.adapters.generation.generate_reports`. ``progress``: stage ``"generate reports"``
    counts studies."""
    out: list[str] = []
    tick = Ticker(progress, "generate reports", len(studies))
    for chunk in batched(studies, batch_size):
        b = processor.build(chunk, with_report=False)
        out += _generate_batch(model, processor, b, max_new_tokens=max_new_tokens).texts
        tick(len(chunk))
    return out


@dataclass
class ReportEval:
    """Per-finding agreement of report labels (the project's labeler) with the planted truth."""

    f1: dict[str, float]
    """F1 of the labeler on the generated reports vs planted labels (uncertain counts as positive)."""
    precision: dict[str, float]
    recall: dict[str, float]
    prevalence: dict[str, float]
    """Fraction of studies with the finding planted."""
    chance_f1: dict[str, float]
    """F1 of always answering positive, ``2p/(1+p)``."""
    reference_f1: dict[str, float]
    """F1 of the labeler on the phantoms' own reports (the ceiling the labeler allows)."""
    n_studies: int
    macro_f1: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def evaluate_reports(texts: Sequence[str], studies: Sequence[Study]) -> ReportEval:
    """Label ``texts`` and compare with each study's planted labels."""
    if len(texts) != len(studies):
        raise ValueError(f"{len(texts)} reports for {len(studies)} studies; pass one report per study")
    y = study_truth(studies).astype(bool)
    pred = np.array([[binarize(label_report(t))[k] for k in FINDINGS] for t in texts], bool)
    ref = np.array([[binarize(label_report(s.report))[k] for k in FINDINGS] for s in studies], bool)
    f1, prec, rec, prev, chance, reff = {}, {}, {}, {}, {}, {}
    for j, k in enumerate(FINDINGS):
        prec[k], rec[k], f1[k] = precision_recall_f1(pred[:, j], y[:, j])
        p = float(y[:, j].mean()) if len(y) else 0.0
        prev[k], chance[k] = p, 2 * p / (1 + p)
        reff[k] = binary_f1(ref[:, j], y[:, j])
    return ReportEval(f1, prec, rec, prev, chance, reff, len(texts), float(np.mean(list(f1.values()))))


# ---- activations at image tokens -----------------------------------------------------------------
@torch.no_grad()
def image_token_activations(
    hooked: HookedMaira2,
    processor: Maira2Processor,
    studies: Iterable[Study],
    layers: Sequence[int],
    *,
    batch_size: int = 32,
    with_report: bool = True,
    slot: str = "image:frontal",
    progress: ProgressCallback | None = None,
) -> dict[int, torch.Tensor]:
    """``{layer: float [n_studies, tokens_per_image, d]}`` residual stream (``blocks.L.hook_resid_post``)
    at each study's frontal image tokens, in patch order, from one forward pass per batch.
    ``progress``: stage ``"image-token activations"`` counts studies (total known when ``studies`` has a
    length)."""
    tick = Ticker(progress, "image-token activations", len(studies) if isinstance(studies, Sized) else None)
    names = [f"blocks.{L}.hook_resid_post" for L in layers]
    out: dict[int, list[torch.Tensor]] = {L: [] for L in layers}
    chunk: list[Study] = []

    def flush() -> None:
        b = processor.build(chunk, with_report=with_report)
        ids, kw = b.model_args()
        _, cache = hooked.run_with_cache(
            ids,
            **kw,
            names_filter=names,
            stop_at_layer=max(layers) + 1,
        )
        mask = b.roles.mask(slot)  # [b, seq]
        n_tok = int(mask[0].sum())
        if not bool((mask.sum(1) == n_tok).all()):
            raise ValueError(f"studies have different numbers of {slot!r} tokens; expected one frontal each")
        for L, name in zip(layers, names, strict=True):
            out[L].append(cache[name][mask].reshape(len(chunk), n_tok, -1).float())
        tick(len(chunk))
        chunk.clear()

    for s in studies:
        chunk.append(s)
        if len(chunk) == batch_size:
            flush()
    if chunk:
        flush()
    return {L: torch.cat(v) for L, v in out.items()}


# ---- probes and latents --------------------------------------------------------------------------
def probe_f1(
    x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray
) -> dict[str, float]:
    """Held-out F1 of a logistic-regression probe per finding (standardised features)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    sc = StandardScaler().fit(x_train)
    a, b = sc.transform(x_train), sc.transform(x_test)
    out = {}
    for j, k in enumerate(FINDINGS):
        if y_train[:, j].min() == y_train[:, j].max():
            out[k] = float("nan")
            continue
        clf = LogisticRegression(C=0.1, max_iter=500).fit(a, y_train[:, j])
        out[k] = binary_f1(clf.predict(b), y_test[:, j])
    return out


def train_quick_topk_sae(
    x: torch.Tensor,
    d_sae: int = 512,
    k: int = 16,
    steps: int = 400,
    batch: int = 1024,
    lr: float = 1e-2,
    seed: int = 0,
) -> RadMatryoshkaSAE:
    """A small SAE on the rows of ``x [n, d]`` for per-layer diagnostics: the project's Matryoshka
    BatchTopK SAE with one group (so plain BatchTopK, ``k`` active latents per row on average), trained
    by its own kernel step (dictionary_learning loss mode: unit-norm decoder, geometric-median ``b_dec``,
    aux-k on latents silent for ``max(50, steps // 4)`` steps, EMA threshold from ``steps // 2``) with
    Adam for ``steps`` batches of ``batch`` rows drawn with replacement. Rows are scaled to mean norm
    ``√d`` during training and the scale is folded into the weights, so the returned inference SAE
    takes raw rows. Deterministic for a given ``seed`` (the global torch RNG is left untouched). The
    default ``lr`` is higher than a long run would use: BatchTopK spreads its budget unevenly across
    latents early on and needs it to learn the planted directions within a few hundred steps."""
    from sae_lens.saes.sae import SAE, TrainStepInput

    from sae_rad_ext.saes.matryoshka_training import (
        RadMatryoshkaBatchTopKTrainingSAE,
        RadMatryoshkaBatchTopKTrainingSAEConfig,
    )

    if x.dim() != 2 or len(x) == 0:
        raise ValueError(f"x must be a non-empty [n, d] matrix of rows; got shape {tuple(x.shape)}")
    x = x.detach().float()
    d = x.shape[1]
    factor = d**0.5 / float(x.norm(dim=1).mean().clamp_min(1e-12))  # rows × factor have mean norm √d
    cfg = RadMatryoshkaBatchTopKTrainingSAEConfig(
        d_in=d, d_sae=d_sae, k=k, group_sizes=[d_sae], threshold_start_step=steps // 2, device=str(x.device)
    )
    g = torch.Generator(device=x.device).manual_seed(seed)
    window = max(50, steps // 4)
    with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []), torch.enable_grad():
        torch.manual_seed(seed)  # SAELens initialises the weights from the global generator
        tsae = RadMatryoshkaBatchTopKTrainingSAE(cfg)
        opt = torch.optim.Adam(tsae.parameters(), lr=lr)
        silent = torch.zeros(d_sae, dtype=torch.long, device=x.device)  # steps since each latent fired
        for step in range(steps):
            xb = x[torch.randint(len(x), (min(batch, len(x)),), generator=g, device=x.device)] * factor
            out = tsae.training_forward_pass(TrainStepInput(xb, {}, silent > window, step, False))
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            opt.step()
            silent += 1
            silent[out.feature_acts.coalesce().indices()[1]] = 0
    tsae.fold_activation_norm_scaling_factor(factor)
    state = tsae.state_dict()
    tsae.process_state_dict_for_saving_inference(state)
    sae = SAE.from_dict(tsae.cfg.get_inference_sae_cfg_dict())
    sae.load_state_dict(state)
    return sae.eval()


def best_latent_f1(
    z_train: torch.Tensor, y_train: np.ndarray, z_test: torch.Tensor, y_test: np.ndarray
) -> dict[str, dict[str, float]]:
    """Best single latent per finding at study level (``z`` = ``[n_studies, d_sae]`` max over image tokens):
    latent + threshold chosen on train (:func:`~sae_rad_ext.evaluation.metrics.best_f1_threshold` with
    ``floor=0``: a latent predicts by firing; on equal F1 the lowest latent id), F1 on test.
    ``{finding: {"f1", "train_f1", "latent"}}``; NaN and latent -1 when no training study has the finding."""
    out = {}
    for j, k in enumerate(FINDINGS):
        yt = torch.as_tensor(y_train[:, j]).bool()
        if not yt.any():
            out[k] = {"f1": float("nan"), "train_f1": float("nan"), "latent": -1}
            continue
        thr, best = best_f1_threshold(z_train, yt, floor=0.0)
        i = int(best.argmax())
        pred = z_test[:, i].double() >= thr[i]
        out[k] = {"f1": binary_f1(pred, y_test[:, j]), "train_f1": float(best[i]), "latent": i}
    return out


def probe_layers(
    acts: dict[int, torch.Tensor],
    y: np.ndarray,
    train_idx: np.ndarray,
    test_idx: np.ndarray,
    *,
    d_sae: int = 512,
    k: int = 16,
    steps: int = 400,
    seed: int = 0,
    progress: ProgressCallback | None = None,
) -> dict[str, dict[str, Any]]:
    """Per layer: linear probe F1 on mean-pooled image tokens, and the best latent of a quick TopK SAE
    trained on the training studies' image tokens. Keys ``"blocks.L.hook_resid_post"``.
    ``progress``: stage ``"probe layers"`` counts layers."""
    out = {}
    tick = Ticker(progress, "probe layers", len(acts))
    for L, a in acts.items():
        pooled = a.mean(1).numpy()
        probe = probe_f1(pooled[train_idx], y[train_idx], pooled[test_idx], y[test_idx])
        sae = train_quick_topk_sae(
            a[train_idx].reshape(-1, a.shape[-1]), d_sae=d_sae, k=k, steps=steps, seed=seed
        )
        with torch.no_grad():
            z = sae.encode(a.reshape(-1, a.shape[-1])).reshape(a.shape[0], a.shape[1], -1).amax(1)
        lat = best_latent_f1(z[train_idx], y[train_idx], z[test_idx], y[test_idx])
        out[f"blocks.{L}.hook_resid_post"] = {
            "probe_f1": probe,
            "best_latent_f1": {f: v["f1"] for f, v in lat.items()},
            "best_latent": {f: v["latent"] for f, v in lat.items()},
            "probe_f1_mean": float(np.nanmean(list(probe.values()))),
            "best_latent_f1_mean": float(np.nanmean([v["f1"] for v in lat.values()])),
        }
        tick(1)
    return out

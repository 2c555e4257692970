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

from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from sae_rad_ext.data.labels import binarize, label_report
from sae_rad_ext.data.study import FINDINGS, Study

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

Tick = Callable[[int], None]
"""``tick(n)``: advance a progress bar by ``n`` studies."""


def study_truth(studies: Sequence[Study]) -> np.ndarray:
    """``int [n_studies, n_findings]`` planted labels (``Study.labels``) in :data:`FINDINGS` order."""
    return np.array([[int(s.labels.get(k) or 0) for k in FINDINGS] for s in studies], dtype=np.int64)


def _f1(pred: np.ndarray, y: np.ndarray) -> float:
    tp = int((pred & y).sum())
    fp, fn = int((pred & ~y).sum()), int((~pred & y).sum())
    return 1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)


# ---- generated reports ---------------------------------------------------------------------------
@torch.no_grad()
def generate_reports(
    model: Any,
    processor: Any,
    studies: Sequence[Study],
    *,
    batch_size: int = 32,
    max_new_tokens: int = 96,
    tick: Tick | None = None,
) -> list[str]:
    """Greedy FINDINGS reports from a HF MAIRA-2 model (``generate``, left padding, KV cache)."""
    tok = processor.tokenizer
    out: list[str] = []
    for i in range(0, len(studies), batch_size):
        chunk = list(studies[i : i + batch_size])
        b = processor.build(chunk, with_report=False)
        gen = model.generate(
            **b.model_inputs(),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
        new = gen[:, b.input_ids.shape[1] :]
        out += [t.strip() for t in tok.batch_decode(new, skip_special_tokens=True)]
        if tick:
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
        tp = int((pred[:, j] & y[:, j]).sum())
        f1[k] = _f1(pred[:, j], y[:, j])
        prec[k] = tp / max(1, int(pred[:, j].sum()))
        rec[k] = tp / max(1, int(y[:, j].sum()))
        p = float(y[:, j].mean()) if len(y) else 0.0
        prev[k], chance[k] = p, 2 * p / (1 + p)
        reff[k] = _f1(ref[:, j], y[:, j])
    return ReportEval(f1, prec, rec, prev, chance, reff, len(texts), float(np.mean(list(f1.values()))))


# ---- activations at image tokens -----------------------------------------------------------------
@torch.no_grad()
def image_token_activations(
    hooked: Any,
    processor: Any,
    studies: Iterable[Study],
    layers: Sequence[int],
    *,
    batch_size: int = 32,
    with_report: bool = True,
    slot: str = "image:frontal",
    tick: Tick | None = None,
) -> dict[int, torch.Tensor]:
    """``{layer: float [n_studies, tokens_per_image, d]}`` residual stream (``blocks.L.hook_resid_post``)
    at each study's frontal image tokens, in patch order, from one forward pass per batch."""
    names = [f"blocks.{L}.hook_resid_post" for L in layers]
    out: dict[int, list[torch.Tensor]] = {L: [] for L in layers}
    chunk: list[Study] = []

    def flush() -> None:
        b = processor.build(chunk, with_report=with_report)
        _, cache = hooked.run_with_cache(
            b.input_ids,
            pixel_values=b.pixel_values,
            attention_mask=b.attention_mask,
            names_filter=names,
            stop_at_layer=max(layers) + 1,
        )
        mask = b.roles.mask(slot)  # [b, seq]
        n_tok = int(mask[0].sum())
        if not bool((mask.sum(1) == n_tok).all()):
            raise ValueError(f"studies have different numbers of {slot!r} tokens; expected one frontal each")
        for L, name in zip(layers, names, strict=True):
            out[L].append(cache[name][mask].reshape(len(chunk), n_tok, -1).float())
        if tick:
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
        out[k] = _f1(clf.predict(b).astype(bool), y_test[:, j].astype(bool))
    return out


def train_quick_topk_sae(
    x: torch.Tensor,
    d_sae: int = 512,
    k: int = 16,
    steps: int = 400,
    batch: int = 1024,
    lr: float = 2e-3,
    seed: int = 0,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """A plain TopK SAE on rows of ``x`` ``[n, d]`` (per-layer diagnostic; the demo's real SAE is the
    Matryoshka SAE trained through SAELens). Returns ``encode(x) -> [n, d_sae]``."""
    g = torch.Generator().manual_seed(seed)
    d = x.shape[1]
    scale = float(x.norm(dim=1).mean()) / d**0.5
    mu = x.mean(0)
    W_dec = torch.randn(d_sae, d, generator=g)
    W_dec = (W_dec / W_dec.norm(dim=1, keepdim=True)).requires_grad_()
    W_enc = W_dec.detach().T.clone().requires_grad_()
    b_enc = torch.zeros(d_sae, requires_grad=True)
    opt = torch.optim.Adam([W_dec, W_enc, b_enc], lr=lr)

    def encode(v: torch.Tensor) -> torch.Tensor:
        pre = F.relu(((v - mu) / scale) @ W_enc + b_enc)
        top = pre.topk(k, dim=-1)
        return torch.zeros_like(pre).scatter(-1, top.indices, top.values)

    with torch.enable_grad():
        for _ in range(steps):
            xb = x[torch.randint(len(x), (min(batch, len(x)),), generator=g)]
            z = encode(xb)
            loss = (((z @ W_dec) - (xb - mu) / scale) ** 2).sum(-1).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                W_dec /= W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8)
    W_enc, b_enc = W_enc.detach(), b_enc.detach()
    return lambda v: encode(v).detach()


def _best_cut(scores: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per column of ``scores [n, m]``: best F1 over thresholds and that threshold (predict score > thr)."""
    s, order = scores.sort(dim=0, descending=True)
    yy = y[order].float()  # [n, m]
    tp = yy.cumsum(0)
    n_pred = torch.arange(1, len(s) + 1, dtype=torch.float32)[:, None]
    f1 = 2 * tp / (n_pred + y.float().sum())
    f1 = torch.where(s > 0, f1, torch.zeros_like(f1))  # a latent that does not fire predicts nothing
    best, at = f1.max(0)
    nxt = torch.cat([s[1:], torch.full_like(s[:1], -1.0)])
    thr = (s.gather(0, at[None])[0] + nxt.gather(0, at[None])[0]) / 2
    return best, thr


def best_latent_f1(
    z_train: torch.Tensor, y_train: np.ndarray, z_test: torch.Tensor, y_test: np.ndarray
) -> dict[str, dict[str, float]]:
    """Best single latent per finding at study level (``z`` = ``[n_studies, d_sae]`` max over image tokens):
    latent + threshold chosen on train, F1 on test. ``{finding: {"f1", "train_f1", "latent"}}``."""
    out = {}
    for j, k in enumerate(FINDINGS):
        yt = torch.as_tensor(y_train[:, j]).bool()
        if not yt.any():
            out[k] = {"f1": float("nan"), "train_f1": float("nan"), "latent": -1}
            continue
        best, thr = _best_cut(z_train, yt)
        i = int(best.argmax())
        pred = (z_test[:, i] > thr[i]).numpy()
        out[k] = {"f1": _f1(pred, y_test[:, j].astype(bool)), "train_f1": float(best[i]), "latent": i}
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
    tick: Callable[[], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Per layer: linear probe F1 on mean-pooled image tokens, and the best latent of a quick TopK SAE
    trained on the training studies' image tokens. Keys ``"blocks.L.hook_resid_post"``."""
    out = {}
    for L, a in acts.items():
        pooled = a.mean(1).numpy()
        probe = probe_f1(pooled[train_idx], y[train_idx], pooled[test_idx], y[test_idx])
        enc = train_quick_topk_sae(
            a[train_idx].reshape(-1, a.shape[-1]), d_sae=d_sae, k=k, steps=steps, seed=seed
        )
        z = enc(a.reshape(-1, a.shape[-1])).reshape(a.shape[0], a.shape[1], -1).amax(1)
        lat = best_latent_f1(z[train_idx], y[train_idx], z[test_idx], y[test_idx])
        out[f"blocks.{L}.hook_resid_post"] = {
            "probe_f1": probe,
            "best_latent_f1": {f: v["f1"] for f, v in lat.items()},
            "best_latent": {f: v["latent"] for f, v in lat.items()},
            "probe_f1_mean": float(np.nanmean(list(probe.values()))),
            "best_latent_f1_mean": float(np.nanmean([v["f1"] for v in lat.values()])),
        }
        if tick:
            tick()
    return out

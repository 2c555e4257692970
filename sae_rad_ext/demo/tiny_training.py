"""Train the tiny MAIRA-2-architecture model on phantom studies, on CPU, in a few minutes; cache it.

    from sae_rad_ext.demo.tiny_training import TinyModelConfig, cached_tiny_maira2
    result = cached_tiny_maira2(TinyModelConfig(), train_studies)   # trains once, then reuses the cache
    model, tok = load_maira2(result.path)                            # original MAIRA-2 checkpoint layout

Two stages, the way LLaVA-family models are trained:

1. **Vision pretraining** (tower + projector): a linear head on the projector's output predicts, per image
   patch, which planted findings cover that patch (targets from the phantom's 2-D masks) and, pooled, the
   study's labels. This makes every finding *salient per patch* in the vectors the language model
   receives — an earlier trial that trained reports only (F1 0.97-0.99) left effusion, pneumothorax and
   tube features invisible to an SAE at the image tokens.
2. **Report training** (language model, embeddings, LM head; vision frozen): teacher forcing on the
   FINDINGS report after MAIRA-2's prompt, loss on report tokens only (``Maira2Batch.labels``). Image
   features are computed once per study because the vision path is frozen.

The tokenizer is a byte-level BPE trained on the training prompts + reports (MAIRA-2's special tokens
added), so sequences stay short. The cache folder is keyed by a hash of the config and
:data:`TRAINING_CODE_VERSION`; ``SAE_RAD_EXT_CACHE`` overrides its root (default ``~/.cache/sae-rad-ext``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sae_rad_ext.adapters.loading import save_maira2_original
from sae_rad_ext.adapters.maira2 import Maira2ForConditionalGeneration
from sae_rad_ext.adapters.prompts import Maira2Processor
from sae_rad_ext.data.study import FINDINGS, Study
from sae_rad_ext.util.files import atomic_dir
from sae_rad_ext.util.progress import ProgressCallback, Ticker

__all__ = [
    "TRAINING_CODE_VERSION",
    "TinyModelConfig",
    "TinyTrainResult",
    "build_demo_tokenizer",
    "cache_root",
    "cached_tiny_maira2",
    "patch_targets",
    "train_tiny_maira2",
]

TRAINING_CODE_VERSION = "2"
"""Bump when the training code changes what a config produces (invalidates cached models)."""

@dataclass(frozen=True)
class TinyModelConfig:
    """Sizes and training schedule of the demo's tiny MAIRA-2 (every field enters the cache key)."""

    image_size: int = 128
    """Phantom and model image size in pixels (phantoms are rendered at exactly this size)."""
    patch_size: int = 16
    """ViT patch size: 128 / 16 = an 8 × 8 grid, 64 image tokens per image."""
    vision_hidden: int = 64
    vision_layers: int = 2
    vision_heads: int = 4
    text_hidden: int = 128
    text_layers: int = 4
    """Four decoder layers: the middle one (2) sits between reading the image and writing the report."""
    text_heads: int = 4
    vocab_size: int = 1024
    """BPE vocabulary of the demo tokenizer (MAIRA-2's 204 added tokens come on top)."""
    vision_epochs: float = 60.0
    """Vision pretraining epochs (the vision stage is cheap next to report training; fewer epochs
    leave the subtler findings, pneumothorax first, poorly separated)."""
    vision_batch: int = 16
    vision_lr: float = 3e-3
    lm_epochs: float = 10.0
    """Report-training epochs; the demo's time budget caps them."""
    lm_batch: int = 16
    """Report-training batch size (studies per step)."""
    lm_lr: float = 3e-3
    patch_threshold: float = 0.02
    """A patch is positive for a finding when that finding's mask covers more than this fraction of it."""
    seed: int = 0
    data: dict[str, Any] = field(default_factory=dict)
    """Description of the training data (phantom options, counts) — part of the cache key."""

    def key(self) -> str:
        """Cache key: a hash of every field and :data:`TRAINING_CODE_VERSION`."""
        blob = json.dumps(
            {"cfg": dataclasses.asdict(self), "code": TRAINING_CODE_VERSION}, sort_keys=True, default=str
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


@dataclass
class TinyTrainResult:
    """What :func:`train_tiny_maira2` / :func:`cached_tiny_maira2` return."""

    path: Path
    """Checkpoint folder (original MAIRA-2 layout + ``tokenizer.json`` + ``training.json``)."""
    trained: bool
    """False when the checkpoint came from the cache."""
    seconds: float
    """Wall time of this call (training, or just the cache check)."""
    info: dict[str, Any]
    """``training.json``: config, losses per stage, vision pretraining held-out metrics, timings."""


def cache_root() -> Path:
    """``$SAE_RAD_EXT_CACHE`` or ``~/.cache/sae-rad-ext``."""
    return Path(os.environ.get("SAE_RAD_EXT_CACHE") or Path.home() / ".cache" / "sae-rad-ext")


# ---- tokenizer ---------------------------------------------------------------------------------
def build_demo_tokenizer(texts: Sequence[str], vocab_size: int = 1024) -> Any:
    """A byte-level BPE tokenizer trained on ``texts`` with MAIRA-2's special tokens (as the tiny one)."""
    from sae_rad_ext.adapters.tokenizer import corpus_lines, train_tokenizer

    return train_tokenizer([*corpus_lines(), *texts], vocab_size)


# ---- targets -----------------------------------------------------------------------------------
def patch_targets(study: Study, grid: int, threshold: float) -> np.ndarray:
    """``float32 [grid*grid, n_findings]``: 1 where a finding's frontal mask covers > ``threshold`` of a patch."""
    masks = (study.metadata.get("masks") or {}).get("frontal")
    if masks is None:
        raise ValueError(
            f"study {study.study_id}: no frontal masks in metadata['masks'] (phantom studies "
            "carry them); vision pretraining needs planted-truth masks"
        )
    out = np.zeros((grid * grid, len(FINDINGS)), np.float32)
    for j, k in enumerate(FINDINGS):
        m = np.asarray(masks[k], np.float32)
        h = m.shape[0] // grid
        cover = m[: h * grid, : h * grid].reshape(grid, h, grid, h).mean((1, 3))
        out[:, j] = (cover.reshape(-1) > threshold).astype(np.float32)
    return out


def _study_labels(studies: Sequence[Study]) -> torch.Tensor:
    return torch.tensor([[float(s.labels.get(k) or 0) for k in FINDINGS] for s in studies])


def _batches(n: int, batch: int, epochs: float, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    steps = max(1, int(round(epochs * n / batch)))
    out, order = [], []
    while len(out) < steps:
        if len(order) < batch:
            perm = list(range(n))
            rng.shuffle(perm)
            order += perm
        out.append(order[:batch])
        order = order[batch:]
    return out


def _cosine_lr(opt: torch.optim.Optimizer, base: float, step: int, total: int, warmup: int = 10) -> None:
    lr = base * min(1.0, (step + 1) / warmup) * 0.5 * (1 + np.cos(np.pi * min(step, total) / total))
    for g in opt.param_groups:
        g["lr"] = max(lr, base * 0.05)


# ---- stage 1: vision pretraining ----------------------------------------------------------------
def _pixels(proc: Maira2Processor, studies: Sequence[Study]) -> torch.Tensor:
    return torch.stack([proc.preprocess_image(s.frontal) for s in studies])


def _image_features(model: Maira2ForConditionalGeneration, pixels: torch.Tensor) -> torch.Tensor:
    return torch.stack(model.model.get_image_features(pixel_values=pixels).pooler_output)  # [n, tok, d]


def pretrain_vision(
    model: Maira2ForConditionalGeneration,
    proc: Maira2Processor,
    train: Sequence[Study],
    val: Sequence[Study],
    cfg: TinyModelConfig,
    progress: ProgressCallback | None = None,
) -> dict[str, Any]:
    """Stage 1: train vision tower + projector on per-patch and per-study finding targets.
    ``progress``: stage ``"vision"`` counts optimisation steps, with ``metrics={"loss": …}``."""
    grid = cfg.image_size // cfg.patch_size
    d = model.config.text_config.hidden_size
    torch.manual_seed(cfg.seed)
    # transformers' N(0, 0.02) init through the projector's 4 Linear layers shrinks image features ~1000x
    # (feature std ~2e-4) and the tower then learns only position priors; PyTorch's fan-in init keeps scale.
    for mod in model.model.multi_modal_projector.modules():
        if isinstance(mod, nn.Linear):
            mod.reset_parameters()
    head_patch, head_study = nn.Linear(d, len(FINDINGS)), nn.Linear(d, len(FINDINGS))
    px = _pixels(proc, train)
    tgt = torch.from_numpy(np.stack([patch_targets(s, grid, cfg.patch_threshold) for s in train]))
    lab = _study_labels(train)
    pos = tgt.mean((0, 1)).clamp(1e-3, 0.5)
    pos_w = ((1 - pos) / pos).sqrt()  # up-weight rare positive patches (thin tubes)
    params = [
        *model.model.vision_tower.parameters(),
        *model.model.multi_modal_projector.parameters(),
        *head_patch.parameters(),
        *head_study.parameters(),
    ]
    opt = torch.optim.AdamW(params, lr=cfg.vision_lr, weight_decay=0.01)
    batches = _batches(len(train), cfg.vision_batch, cfg.vision_epochs, cfg.seed)
    model.train()
    losses = []
    tick = Ticker(progress, "vision", len(batches))
    for step, idx in enumerate(batches):
        _cosine_lr(opt, cfg.vision_lr, step, len(batches))
        feats = _image_features(model, px[idx])
        lp = F.binary_cross_entropy_with_logits(head_patch(feats), tgt[idx], pos_weight=pos_w)
        ls = F.binary_cross_entropy_with_logits(head_study(feats.mean(1)), lab[idx])
        loss = lp + ls
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(loss.item())
        tick(1, loss=losses[-1])
    model.eval()
    return {
        "steps": len(batches),
        "loss_first": losses[0],
        "loss_last": float(np.mean(losses[-5:])),
        **_vision_eval(model, proc, val, head_patch, head_study, grid, cfg.patch_threshold),
    }


@torch.no_grad()
def _vision_eval(model, proc, val, head_patch, head_study, grid, thr) -> dict[str, Any]:
    from sklearn.metrics import roc_auc_score

    if not val:
        return {}
    feats = torch.cat(
        [_image_features(model, _pixels(proc, val[i : i + 64])) for i in range(0, len(val), 64)]
    )
    tgt = np.stack([patch_targets(s, grid, thr) for s in val]).reshape(-1, len(FINDINGS))
    pp = head_patch(feats).reshape(-1, len(FINDINGS)).numpy()
    ps = head_study(feats.mean(1)).numpy()
    lab = _study_labels(val).numpy()
    auc = lambda y, p: float(roc_auc_score(y, p)) if 0 < y.sum() < len(y) else float("nan")  # noqa: E731
    return {
        "val_patch_auroc": {k: auc(tgt[:, j], pp[:, j]) for j, k in enumerate(FINDINGS)},
        "val_study_auroc": {k: auc(lab[:, j], ps[:, j]) for j, k in enumerate(FINDINGS)},
    }


# ---- stage 2: report training -------------------------------------------------------------------
def train_reports(
    model: Maira2ForConditionalGeneration,
    proc: Maira2Processor,
    train: Sequence[Study],
    cfg: TinyModelConfig,
    progress: ProgressCallback | None = None,
) -> dict[str, Any]:
    """Stage 2: teacher-forced report training of the language model with the vision path frozen.
    ``progress``: stage ``"reports"`` counts optimisation steps, with ``metrics={"loss": …}``."""
    with torch.no_grad():
        feats = torch.cat(
            [_image_features(model, _pixels(proc, train[i : i + 128])) for i in range(0, len(train), 128)]
        )  # [n, tok, d]
    lm, head = model.model.language_model, model.lm_head
    params = [*lm.parameters(), *head.parameters()]
    opt = torch.optim.AdamW(params, lr=cfg.lm_lr, weight_decay=0.01)
    batches = _batches(len(train), cfg.lm_batch, cfg.lm_epochs, cfg.seed + 1)
    img_id = model.config.image_token_index
    lm.train()
    losses = []
    tick = Ticker(progress, "reports", len(batches))
    for step, idx in enumerate(batches):
        _cosine_lr(opt, cfg.lm_lr, step, len(batches))
        b = proc.build([train[i] for i in idx], with_report=True)
        emb = lm.embed_tokens(b.input_ids)
        emb = emb.masked_scatter((b.input_ids == img_id)[..., None], feats[idx].reshape(-1, emb.shape[-1]))
        h = lm(inputs_embeds=emb, attention_mask=b.attention_mask).last_hidden_state
        tgt = b.labels[:, 1:]
        keep = tgt != -100
        loss = F.cross_entropy(head(h[:, :-1][keep]), tgt[keep])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(loss.item())
        tick(1, loss=losses[-1])
    lm.eval()
    return {"steps": len(batches), "loss_first": losses[0], "loss_last": float(np.mean(losses[-5:]))}


# ---- whole recipe + cache -----------------------------------------------------------------------
def train_tiny_maira2(
    train: Sequence[Study],
    cfg: TinyModelConfig,
    out: str | Path,
    val: Sequence[Study] = (),
    progress: ProgressCallback | None = None,
) -> TinyTrainResult:
    """Train the tiny MAIRA-2 on ``train`` (phantom studies with masks) and save it to ``out`` atomically.
    ``progress`` gets stage ``"vision"`` then ``"reports"`` (steps, with the loss)."""
    from sae_rad_ext.adapters.tiny import tiny_maira2_config

    if not train:
        raise ValueError("train_tiny_maira2 needs training studies; got none")
    bad = [
        s.study_id for s in train[:50] if s.frontal is None or s.frontal.shape[:2] != (cfg.image_size,) * 2
    ]
    if bad:
        raise ValueError(
            f"studies {bad[:3]} do not have a {cfg.image_size}x{cfg.image_size} frontal image; "
            "render phantoms at the model's image_size"
        )
    t0 = time.perf_counter()
    n_threads = torch.get_num_threads()
    try:
        texts = [s.report for s in train] + [str(s.indication or "") for s in train[:500]]
        tok = build_demo_tokenizer(texts, cfg.vocab_size)
        mcfg = tiny_maira2_config(
            tok,
            image_size=cfg.image_size,
            patch_size=cfg.patch_size,
            vision_hidden=cfg.vision_hidden,
            vision_layers=cfg.vision_layers,
            vision_heads=cfg.vision_heads,
            text_hidden=cfg.text_hidden,
            text_layers=cfg.text_layers,
            text_heads=cfg.text_heads,
        )
        mcfg._attn_implementation = "sdpa"
        torch.manual_seed(cfg.seed)
        model = Maira2ForConditionalGeneration(mcfg).eval()
        proc = Maira2Processor.from_model_config(model.config, tok)
        t1 = time.perf_counter()
        vision = pretrain_vision(model, proc, train, val, cfg, progress)
        t2 = time.perf_counter()
        reports = train_reports(model, proc, train, cfg, progress)
        t3 = time.perf_counter()
    finally:
        torch.set_num_threads(n_threads)
    info = {
        "config": dataclasses.asdict(cfg),
        "key": cfg.key(),
        "code_version": TRAINING_CODE_VERSION,
        "n_train": len(train),
        "n_val": len(val),
        "vision": vision,
        "reports": reports,
        "seconds": {"vision": t2 - t1, "reports": t3 - t2, "total": t3 - t0},
        "n_parameters": sum(p.numel() for p in model.parameters()),
    }
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_dir(out) as tmp:
        save_maira2_original(model, tmp, tokenizer=tok)
        (tmp / "training.json").write_text(json.dumps(info, indent=1, default=str))
    return TinyTrainResult(out, True, time.perf_counter() - t0, info)


def cached_tiny_maira2(
    cfg: TinyModelConfig,
    train: Callable[[], Sequence[Study]] | Sequence[Study],
    *,
    val: Callable[[], Sequence[Study]] | Sequence[Study] = (),
    cache_dir: str | Path | None = None,
    progress: ProgressCallback | None = None,
    retrain: bool = False,
) -> TinyTrainResult:
    """The trained checkpoint for ``cfg`` from the cache, training (and caching) it if absent.

    ``train`` / ``val`` may be callables so studies are only materialised when training is needed.
    The folder is ``<cache_dir or cache_root()>/tiny-maira2-<cfg.key()>``.
    """
    t0 = time.perf_counter()
    path = Path(cache_dir or cache_root()) / f"tiny-maira2-{cfg.key()}"
    done = path / "training.json"
    if done.exists() and (path / "config.json").exists() and not retrain:
        return TinyTrainResult(path, False, time.perf_counter() - t0, json.loads(done.read_text()))
    tr = list(train() if callable(train) else train)
    va = list(val() if callable(val) else val)
    res = train_tiny_maira2(tr, cfg, path, val=va, progress=progress)
    res.seconds = time.perf_counter() - t0
    return res

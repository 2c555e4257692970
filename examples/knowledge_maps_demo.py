"""Knowledge maps on the demo's trained tiny MAIRA-2, then SAEs at the first, recommended and last layer.

    python examples/knowledge_maps_demo.py --model runs/demo/model --out runs/maps

1. ``build_knowledge_maps`` on held-out phantom studies (stream ``--seed``, never used for training):
   probes, UMAP (if umap-learn is installed), lesioning, phantom-pair patching, saliency → the
   recommended layer.
2. A Matryoshka BatchTopK SAE (the demo's settings) trained through SAELens's runner (``make_runner``)
   at layer 0, the recommended layer and the last layer, on the demo's training stream (seed 0, train
   split); for each SAE, the best single latent per finding at study level (max over the study's image
   tokens, or over its report tokens), chosen on the maps' training studies and scored (F1) on the
   held-out ones (``phantom_benchmark.best_latent_f1``).

Writes ``<out>/knowledge_maps.json``, PNGs, ``<out>/sae_layers.json``; prints both summaries.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from sae_rad_ext.adapters.hooked import HookedMaira2
from sae_rad_ext.adapters.prompts import Maira2Processor
from sae_rad_ext.adapters.roles import Role

from sae_rad_ext.data.phantom.generator import generate_studies, split_of
from sae_rad_ext.data.study import FINDINGS
from sae_rad_ext.evaluation.splits import holdout_mask
from sae_rad_ext.maps.common import study_targets
from sae_rad_ext.maps.knowledge_maps import MapConfig, build_knowledge_maps, write_json
from sae_rad_ext.util.progress import ProgressEvent


def train_sae(hooked, proc, train, layer: int, out: Path, tokens: int, seed: int) -> Path:
    from sae_rad_ext.demo.pipeline import DemoConfig
    from sae_rad_ext.demo.sae import demo_runner_config
    from sae_rad_ext.training.runner import make_runner

    d = DemoConfig()
    rc = demo_runner_config(d, hooked.cfg.d_model, layer, out, training_tokens=tokens, seed=seed)
    runner = make_runner(rc, hooked, train, positions=d.positions, processor=proc, eval_studies=train[:32])
    torch.manual_seed(seed)
    runner.run()
    return out


@torch.no_grad()
def best_latents(hooked, proc, sae_dir: Path, layer: int, studies, holdout) -> dict:
    from sae_lens import SAE

    from sae_rad_ext.activations.extract import iter_activations
    from sae_rad_ext.demo.pipeline import DEMO_POSITIONS
    from sae_rad_ext.evaluation.phantom_benchmark import best_latent_f1, study_truth

    sae = SAE.load_from_disk(str(sae_dir), device="cpu")
    maxes = {"image": [], "report": []}
    for b in iter_activations(
        hooked,
        studies,
        f"blocks.{layer}.hook_resid_post",
        processor=proc,
        positions=DEMO_POSITIONS,
        batch_size=32,
    ):
        z = sae.encode(b.acts)
        for kind, role in (("image", Role.IMAGE), ("report", Role.REPORT)):
            sel = b.role == int(role)
            m = torch.zeros(len(b.study_ids), z.shape[1])
            m.scatter_reduce_(0, b.study_index[sel][:, None].expand(-1, z.shape[1]), z[sel], reduce="amax")
            maxes[kind].append(m)
    y = study_truth(studies)
    out = {}
    for kind, parts in maxes.items():
        z = torch.cat(parts)
        best = best_latent_f1(z[~holdout], y[~holdout], z[holdout], y[holdout])
        out[kind] = {k: v["f1"] for k, v in best.items()}
        out[kind]["mean"] = float(np.nanmean([v["f1"] for v in best.values()]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="runs/demo/model")
    ap.add_argument("--out", default="runs/maps")
    ap.add_argument("--seed", type=int, default=1, help="phantom stream of the mapped (held-out) studies")
    ap.add_argument("--n-studies", type=int, default=300)
    ap.add_argument("--pairs", type=int, default=6)
    ap.add_argument("--lesion-studies", type=int, default=32)
    ap.add_argument("--techniques", default="probe,umap,lesion,patch,saliency")
    ap.add_argument("--sae-tokens", type=int, default=100_000)
    ap.add_argument("--sae-train-studies", type=int, default=600)
    ap.add_argument("--skip-sae", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(2)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    hooked = HookedMaira2.from_pretrained(a.model)
    proc = Maira2Processor.from_model_config(hooked.model.config, hooked.tokenizer)
    size = int(hooked.cfg.image_size[0])
    studies = list(generate_studies(a.n_studies, a.seed, image_size=size, lateral_prob=0.0, prior_prob=0.0))
    tech = [t for t in a.techniques.split(",") if t]
    if "umap" in tech:
        try:
            import umap  # noqa: F401
        except ImportError:
            print("umap-learn not installed: skipping UMAP (pip install 'sae-rad-ext[maps]')")
            tech.remove("umap")
    cfg = MapConfig(
        techniques=tech,
        n_pairs=a.pairs,
        lesion_studies=a.lesion_studies,
        pair_lateral_prob=0.0,
        pair_prior_prob=0.0,
        seed=0,
    )
    t0 = time.perf_counter()
    started: set[str] = set()

    def progress(e: ProgressEvent) -> None:  # one line as each stage starts
        if e.stage not in started:
            started.add(e.stage)
            print(f"[{time.perf_counter() - t0:7.1f}s] {e.stage}: {e.total} units", flush=True)

    maps = build_knowledge_maps(hooked, studies, out, cfg, processor=proc, progress=progress)
    print(maps.recommendation.summary())
    print("seconds:", {k: round(v, 1) for k, v in maps.seconds.items()})
    if a.skip_sae:
        return
    n = hooked.cfg.n_layers
    chosen = maps.recommendation.layer
    if chosen is None:
        chosen = n // 2
        print(f"no recommended layer: comparing the middle layer {chosen} with the first and last instead")
    layers = sorted({0, chosen, n - 1})
    train = [
        s
        for s in generate_studies(
            int(a.sae_train_studies / 0.8), 0, image_size=size, lateral_prob=0.0, prior_prob=0.0
        )
        if split_of(s.metadata["patient_id"]) == "train"
    ]
    holdout = holdout_mask(studies, cfg.test_fraction, salt=str(cfg.seed))
    res = {
        "layers": layers,
        "recommended": maps.recommendation.layer,
        "compared": chosen,
        "sae_tokens": a.sae_tokens,
        "n_train_studies": len(train),
        "n_eval_studies": len(studies),
        "n_holdout": int(holdout.sum()),
        "prevalence_holdout": dict(
            zip(FINDINGS, study_targets(studies)[holdout].mean(0).tolist(), strict=True)
        ),
        "best_latent_f1": {},
        "seconds": {},
    }
    for L in layers:
        t1 = time.perf_counter()
        sae_dir = train_sae(hooked, proc, train, L, out / f"sae_L{L}", a.sae_tokens, seed=0)
        res["best_latent_f1"][str(L)] = best_latents(hooked, proc, sae_dir, L, studies, holdout)
        res["seconds"][str(L)] = time.perf_counter() - t1
        print(f"layer {L}: {json.dumps(res['best_latent_f1'][str(L)])}", flush=True)
    write_json(res, out / "sae_layers.json")
    print(f"{'layer':>6} {'kind':>7} " + " ".join(f"{k[:10]:>10}" for k in FINDINGS) + "       mean")
    for L in layers:
        for kind in ("image", "report"):
            r = res["best_latent_f1"][str(L)][kind]
            print(
                f"{L:>6} {kind:>7} " + " ".join(f"{r[k]:>10.3f}" for k in FINDINGS) + f" {r['mean']:>10.3f}"
            )


if __name__ == "__main__":
    main()

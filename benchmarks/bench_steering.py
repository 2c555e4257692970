"""Steered vs unsteered generation time on the same batch (``HookedMaira2.generate``, greedy, KV cache).

    python benchmarks/bench_steering.py --repeats 7     # the committed results_steering.json
    python benchmarks/bench_steering.py [--model tiny|PATH] [--sae PATH] [--studies 16] [--new 48] [--repeats 3]
    python benchmarks/bench_steering.py --quick --out /tmp/results_steering.json   # smoke: 2 studies, 4 tokens

Without ``--sae`` a random Matryoshka SAE of ``--d-sae`` latents at the middle layer is used (timing does
not depend on what the weights mean). Conditions: no hooks, an empty pass-through hook (the cost of
having a hook at all), ``add`` of one feature at every position, ``clamp`` of 4 features, ``ablate`` of
16 features restricted to report positions. Every condition generates exactly ``--new`` tokens
(EOS suppressed), so the token counts are equal. Prints a table and writes ``--out`` JSON with the
environment (CPU, versions, load average at start and end) and every repeat's time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from _common import command_line, environment, finish_environment
from sae_rad_ext.adapters import HookedMaira2, Maira2Processor

import sae_rad_ext.saes.matryoshka as mat
from sae_rad_ext.data.phantom.generator import generate_studies
from sae_rad_ext.steering.interventions import intervention_hooks, sae_hook_name
from sae_rad_ext.steering.steer import Intervention


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--sae", default=None)
    ap.add_argument("--d-sae", type=int, default=2048)
    ap.add_argument("--studies", type=int, default=16)
    ap.add_argument("--new", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true", help="2 studies, 4 new tokens, 1 repeat (smoke test)")
    ap.add_argument("--out", default=str(Path(__file__).with_name("results_steering.json")))
    a = ap.parse_args()
    if a.quick:
        a.studies, a.new, a.repeats, a.d_sae = 2, 4, 1, 256
    torch.set_num_threads(a.threads)
    env = environment(a.device)
    model = (HookedMaira2.tiny() if a.model == "tiny" else HookedMaira2.from_pretrained(a.model)).to(a.device)
    proc = Maira2Processor.from_model_config(model.model.config, model.tokenizer)
    size = model.cfg.image_size[0]
    studies = list(generate_studies(a.studies, 0, image_size=size, lateral_prob=0.0, prior_prob=0.0))
    if a.sae:
        from sae_lens import SAE

        sae = SAE.load_from_disk(a.sae).to(a.device)
    else:
        torch.manual_seed(0)
        sae = mat.RadMatryoshkaSAE(mat.RadMatryoshkaSAEConfig(d_in=model.cfg.d_model, d_sae=a.d_sae))
        with torch.no_grad():
            for p in sae.parameters():
                p.normal_(std=0.05)
        sae.cfg.metadata.hook_name = f"blocks.{model.cfg.n_layers // 2}.hook_resid_post"
        sae = sae.to(a.device)
    hook = sae_hook_name(sae)
    batch = proc.build(studies, with_report=False).to(a.device)
    T = batch.input_ids.shape[1]
    conditions = {
        "unsteered": None,
        "identity hook": [(hook, lambda x, hook: x)],
        "add 1 feature (all positions)": [Intervention(0, "add", 4.0)],
        "clamp 4 features (all positions)": [Intervention([0, 1, 2, 3], "clamp", 2.0)],
        "ablate 16 features (report positions)": [
            Intervention(list(range(16)), "ablate", positions="report")
        ],
    }
    kw = {
        "pixel_values": batch.pixel_values,
        "attention_mask": batch.attention_mask,
        "max_new_tokens": a.new,
        "min_new_tokens": a.new,
    }
    times: dict[str, list[float]] = {k: [] for k in conditions}
    for _ in range(a.repeats):  # interleaved so load changes hit every condition alike
        for name, ivs in conditions.items():
            if ivs is None:
                hooks = []
            elif isinstance(ivs[0], tuple):
                hooks = ivs
            else:
                hooks = intervention_hooks(model, sae, ivs, batch.roles, T, a.new)
            t0 = time.perf_counter()
            out = model.generate(batch.input_ids, fwd_hooks=hooks, **kw)
            times[name].append(time.perf_counter() - t0)
            assert out.shape[1] == T + a.new
    base = statistics.median(times["unsteered"])
    rows = {
        k: {"median_s": statistics.median(v), "ratio": statistics.median(v) / base, "all_s": v}
        for k, v in times.items()
    }
    print(
        f"{a.studies} studies × {a.new} new tokens, prompt {T} positions, {model.cfg.model_name}, "
        f"d_model {model.cfg.d_model}, SAE d_sae {sae.cfg.d_sae} at {hook}, device {a.device}, threads {a.threads}"
    )
    for k, r in rows.items():
        print(f"  {k:40s} {r['median_s']:.3f} s   × {r['ratio']:.3f}")
    finish_environment(env)
    res = {
        "benchmark": "steering_generation",
        "command": command_line("bench_steering.py"),
        "quick": a.quick,
        "environment": env,
        "studies": a.studies,
        "new_tokens": a.new,
        "prompt_positions": T,
        "model": model.cfg.model_name,
        "d_model": model.cfg.d_model,
        "d_sae": sae.cfg.d_sae,
        "hook": hook,
        "device": a.device,
        "threads": a.threads,
        "repeats": a.repeats,
        "conditions": rows,
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()

"""Steer generated reports with SAE features, offline, in seconds.

    python examples/steering_quickstart.py [--model runs/demo/model --sae runs/demo/sae]

Without arguments it uses the random tiny MAIRA-2 and a random Matryoshka SAE (the mechanics only: the
text is gibberish); with the demo's trained model and SAE (``sae-rad demo``) the reports are real
phantom findings. Shows: the model's own reports, an ``add`` at report positions, a ``clamp`` at image
positions, an exact no-op (``scale 1``), and a two-coefficient sweep scored by the finding labeler.
"""

from __future__ import annotations

import argparse

import torch
from sae_rad_ext.adapters import HookedMaira2, Maira2Processor

import sae_rad_ext.saes.matryoshka as mat
from sae_rad_ext.data.phantom.generator import generate_studies
from sae_rad_ext.steering.evaluate import evaluate_control
from sae_rad_ext.steering.steer import Intervention, steered_generate, strength_sweep


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None, help="checkpoint folder (default: random tiny MAIRA-2)")
    ap.add_argument("--sae", default=None, help="SAE folder (default: random Matryoshka SAE)")
    ap.add_argument("--feature", type=int, default=0)
    a = ap.parse_args()
    torch.manual_seed(0)
    model = HookedMaira2.from_pretrained(a.model) if a.model else HookedMaira2.tiny(seed=0)
    proc = Maira2Processor.from_model_config(model.model.config, model.tokenizer)
    if a.sae:
        from sae_lens import SAE

        sae = SAE.load_from_disk(a.sae)
    else:
        sae = mat.RadMatryoshkaSAE(mat.RadMatryoshkaSAEConfig(d_in=model.cfg.d_model, d_sae=256))
        with torch.no_grad():
            for p in sae.parameters():
                p.normal_(std=0.1)
        sae.cfg.metadata.hook_name = f"blocks.{model.cfg.n_layers // 2}.hook_resid_post"
    size = model.cfg.image_size[0]
    studies = list(generate_studies(4, 7, image_size=size, lateral_prob=0.0, prior_prob=0.0))
    f = a.feature

    own = steered_generate(model, proc, studies, sae, [], max_new_tokens=40)
    add = steered_generate(
        model, proc, studies, sae, [Intervention(f, "add", 8.0, positions="report")], max_new_tokens=40
    )
    clamp = steered_generate(
        model, proc, studies, sae, [Intervention(f, "clamp", 5.0, positions="image")], max_new_tokens=40
    )
    same = steered_generate(
        model, proc, studies, sae, [Intervention([f, f + 1], "scale", 1.0)], max_new_tokens=40
    )
    print("scale 1 is an exact no-op:", same.token_ids == own.token_ids)
    for i, s in enumerate(studies):
        print(f"\n{s.study_id}  planted: {[k for k, v in s.labels.items() if v == 1]}")
        print(f"  own       : {own.reports[i]!r}")
        print(f"  add ×8    : {add.reports[i]!r}")
        print(f"  clamp img : {clamp.reports[i]!r}")

    sweep = strength_sweep(model, proc, studies, sae, f, [0, 4], unit="max_act", max_new_tokens=40)
    ev = evaluate_control(sweep, "pleural_effusion")
    for r in ev.rows:
        print(
            f"{r.condition:7s} coef {r.coefficient:4.1f}: effusion on-rate {r.on_rate:.2f}, "
            f"off-target {r.off_target_rate:.2f}, parse {r.parse_rate:.2f}"
        )


if __name__ == "__main__":
    main()

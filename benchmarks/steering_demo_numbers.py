"""Steering quality on the demo's tiny model + SAE, every finding (held-out phantoms).

    python benchmarks/steering_demo_numbers.py runs/demo runs/steer_all --select image \
        --results benchmarks/results_steering_demo_image_select.json
    python benchmarks/steering_demo_numbers.py runs/demo runs/steer_rep --select report \
        --results benchmarks/results_steering_demo_report_select.json
    python benchmarks/steering_demo_numbers.py runs/demo_quick /tmp/steer --quick --results /tmp/r.json  # smoke

``ROOT`` holds ``model/``, ``sae/`` and ``data/`` as ``sae-rad demo`` writes them. Features are picked on
the validation split (``--select image``: per-study max at image positions; ``report``: at the
teacher-forced reference report), coefficients on 40 validation studies, numbers on 40 test studies
(:func:`sae_rad_ext.steering.benchmark.run_steering_benchmark`). ``OUT`` gets the plots and
``steering_benchmark.json``; ``--results`` (optional) gets the same numbers plus the selection F1s, the
environment and the command, the layout ``benchmarks/report.py`` renders. ``--quick``: 4 studies, two
coefficients, 16 new tokens.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from _common import command_line, environment, finish_environment
from sae_lens import SAE
from sae_rad_ext.adapters import HookedMaira2, Maira2Processor

import sae_rad_ext  # noqa: F401  (registers the Matryoshka SAE)
from sae_rad_ext.data.phantom.io import load_phantom_dataset
from sae_rad_ext.steering.benchmark import run_steering_benchmark, select_features
from sae_rad_ext.steering.feature_reports import concept_descriptions


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("root")
    ap.add_argument("out")
    ap.add_argument("--select", choices=["image", "report"], default="image")
    ap.add_argument("--positions", default="all", help="where the steering edit applies")
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--coef", default="0.5,1,2,4,8")
    ap.add_argument("--new-tokens", type=int, default=80)
    ap.add_argument("--quick", action="store_true", help="4 studies, coefficients 1,4, 16 new tokens (smoke test)")
    ap.add_argument("--results", default=None, help="also write the results file benchmarks/report.py renders")
    a = ap.parse_args()
    if a.quick:
        a.n, a.coef, a.new_tokens = 4, "1,4", 16
    torch.set_num_threads(1)
    env = environment()
    model = HookedMaira2.from_pretrained(f"{a.root}/model")
    proc = Maira2Processor.from_model_config(model.model.config, model.tokenizer)
    sae = SAE.load_from_disk(f"{a.root}/sae")
    splits: dict[str, list] = {"train": [], "validate": [], "test": []}
    for s in load_phantom_dataset(f"{a.root}/data"):
        splits[s.metadata["split"]].append(s)
    rep = a.select == "report"
    feats = select_features(
        model, proc, splits["validate"], sae, positions="report" if rep else "image", with_report=rep
    )
    bench = run_steering_benchmark(
        model,
        proc,
        sae,
        splits["validate"],
        splits["test"],
        features={f: v.feature for f, v in feats.items()},
        descriptions=concept_descriptions({f: v.feature for f, v in feats.items()}),
        coefficients=[float(c) for c in a.coef.split(",")],
        positions=a.positions,
        n_studies=a.n,
        max_new_tokens=a.new_tokens,
        out=a.out,
    )
    print(json.dumps({"selection_f1": feats, **bench.summary()}, indent=1))
    if a.results:
        finish_environment(env)
        res = {
            **json.loads(json.dumps(bench.to_dict(), default=str)),
            "selection_f1": feats,
            "benchmark": "steering_demo",
            "command": command_line("steering_demo_numbers.py"),
            "quick": a.quick,
            "demo_dir": str(a.root),
            "environment": env,
        }
        Path(a.results).write_text(json.dumps(res, indent=1))
        print(f"wrote {a.results}")


if __name__ == "__main__":
    main()

"""Render ``docs/benchmarks.md`` from ``benchmarks/results_*.json`` — every number in the page comes from them.

    python benchmarks/report.py            # rewrite docs/benchmarks.md
    python benchmarks/report.py --check    # exit 1 when docs/benchmarks.md differs from what it would write

A results file with ``tables`` (``bench_training.py``, ``bench_kernels.py``) is rendered as ratio tables:
one row per op of ours, one column per comparison, the like-for-like column first, each cell
``baseline median / ours median`` at that N; then every variant's median, spread, CPU time and memory.
``results_steering.json`` (``bench_steering.py``) and ``results_steering_demo_*.json``
(``steering_demo_numbers.py``) have their own small tables.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from pathlib import Path

HERE = Path(__file__).resolve().parent
DOC = HERE.parent / "docs" / "benchmarks.md"

# How each committed results file is (re)made: the page's header lists these, in this order.
COMMANDS = {
    "results_training.json": "python benchmarks/bench_training.py",
    "results_kernels.json": "python benchmarks/bench_kernels.py",
    "results_steering.json": "python benchmarks/bench_steering.py --repeats 7",
    "results_steering_demo_image_select.json": "python benchmarks/steering_demo_numbers.py DEMO_DIR OUT "
    "--select image --results benchmarks/results_steering_demo_image_select.json",
    "results_steering_demo_report_select.json": "python benchmarks/steering_demo_numbers.py DEMO_DIR OUT "
    "--select report --results benchmarks/results_steering_demo_report_select.json",
}
GPU_FILES = ("results_kernels_cuda.json",)


def load_results(folder: Path = HERE) -> dict[str, dict]:
    """Every ``results_*.json`` in ``folder``, by file name, in name order."""
    return {p.name: json.loads(p.read_text()) for p in sorted(folder.glob("results_*.json"))}


def ratio(baseline: float | None, ours: float | None) -> str:
    """``baseline / ours`` as ``"2.13×"``; ``"n/a"`` when either is missing or zero."""
    if not baseline or not ours:
        return "n/a"
    return f"{baseline / ours:.2f}×"


def _num(x: float | None, digits: int = 3) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def _load(env: Mapping, key: str) -> str:
    v = env.get(key)
    return "not recorded" if not v else " / ".join(f"{x:.2f}" for x in v)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return out + ["| " + " | ".join(r) + " |" for r in rows]


def environment_lines(res: Mapping) -> list[str]:
    """The run's environment as a bullet list (``not recorded`` for a field the file lacks)."""
    if "environment" not in res:
        return ["- environment: not recorded (this file predates the environment block; re-run its command, "
                "listed at the top of the page, to record one)"]
    env = res["environment"]
    fields = [
        ("CPU", env.get("cpu_model")),
        ("cores", env.get("cpu_count")),
        ("torch threads", env.get("torch_threads")),
        ("torch", env.get("torch")),
        ("sae_lens", env.get("sae_lens")),
        ("python", env.get("python")),
        ("device", env.get("device", "cpu") + (f" ({env['gpu']})" if env.get("gpu") else "")),
        ("commit", env.get("git")),
        ("run", f"{env.get('started_utc', '?')} → {env.get('finished_utc', '?')} ({env.get('wall_s', '?')} s)"),
    ]
    out = [f"- {k}: {'not recorded' if v is None else v}" for k, v in fields]
    out.append(
        f"- load average (1/5/15 min) at start {_load(env, 'load_avg_start')}, at end {_load(env, 'load_avg_end')}"
        f" (on {env.get('cpu_count', '?')} cores: a load above the core count means other processes"
        " shared the CPUs during the run)"
    )
    loads = [x for k in ("load_avg_start", "load_avg_end") for x in (env.get(k) or [])[:1]]
    if loads and env.get("cpu_count") and max(loads) > env["cpu_count"]:
        out.append(f"- **busy machine**: the 1-minute load reached {max(loads):.2f} on {env['cpu_count']} cores, so "
                   "other processes took CPU time during this run; its times (and to a lesser degree its ratios) "
                   "are not those of a quiet machine. Re-run the command below on a quiet machine to replace them.")
    out.append(f"- command: `{res.get('command', 'not recorded')}`" + (" (quick smoke shapes)" if res.get("quick") else ""))
    return out


def ordered_columns(table: Mapping) -> list[Mapping]:
    """The table's columns with the like-for-like one(s) first, the others in file order."""
    cols = list(table["columns"])
    return [c for c in cols if c.get("like_for_like")] + [c for c in cols if not c.get("like_for_like")]


def wall(v: Mapping) -> float | None:
    """A variant's median wall time."""
    return v.get("median")


def cpu(v: Mapping) -> float | None:
    """A variant's median user + median system CPU time (``None`` when not recorded)."""
    u, s = v.get("user_median"), v.get("sys_median")
    return None if u is None or s is None or v.get("median") is None else u + s


def ratio_table_lines(res: Mapping, table: Mapping, metric=wall, title: str | None = None) -> list[str]:
    """One markdown table: a row per (N, op of ours), a column per comparison (like for like first);
    each cell ``metric(baseline) / metric(ours)`` (median wall time unless told otherwise)."""
    cols = ordered_columns(table)
    header = ["N", "ours"] + [c["title"] for c in cols]
    rows = []
    for n, per_n in res["results"].items():
        var = per_n["variants"]
        for row in table["rows"]:
            cells = [n, row]
            for c in cols:
                ours = c["ours"].get(row)
                if ours is None:
                    cells.append("—")
                    continue
                cells.append(ratio(metric(var.get(c["baseline"], {})), metric(var.get(ours, {}))))
            rows.append(cells)
    if title is not None:
        return [f"#### {title}", "", *_table(header, rows), ""]
    notes = [f"- **{c['title']}**: `{c['baseline']}` ÷ ours ({', '.join(f'`{v}`' for v in c['ours'].values())});"
             f" {c['meaning']}." for c in cols]
    return [f"#### {table['title']}", "", *_table(header, rows), "", *notes, ""]


def variant_table_lines(res: Mapping) -> list[str]:
    """Every variant's median, min–max, spread, median user/system CPU time and peak memory growth."""
    rows = []
    unit = "s"
    for n, per_n in res["results"].items():
        for name, v in per_n["variants"].items():
            unit = v.get("unit", unit)
            d = 3 if unit == "s" else 2
            if v.get("median") is None:
                rows.append([n, f"`{name}`", "n/a", v.get("error", "not measured")[:90], "", "", "", ""])
                continue
            spread = "—" if v.get("spread_pct") is None else f"{v['spread_pct']:.0f} %"
            rows.append([
                n, f"`{name}`", _num(v["median"], d), f"{_num(v.get('min'), d)}–{_num(v.get('max'), d)}", spread,
                _num(v.get("user_median"), d), _num(v.get("sys_median"), d), _num(v.get("peak_rss_delta_mib"), 0),
            ])
    header = ["N", "variant", f"median {unit}", f"min–max {unit}", "spread", f"user CPU {unit}",
              f"system CPU {unit}", "peak RSS growth MiB"]
    if any("group" in v for per_n in res["results"].values() for v in per_n["variants"].values()):
        header.insert(2, "group")
        groups = [v.get("group", "") for per_n in res["results"].values() for v in per_n["variants"].values()]
        rows = [[*r[:2], g, *r[2:]] for r, g in zip(rows, groups, strict=True)]
    return _table(header, rows)


def comparison_section(title: str, res: Mapping) -> list[str]:
    """A results file with ``tables``: environment, shapes, ratio tables, then every variant."""
    shape = ", ".join(f"{k}={v}" for k, v in res.get("shape", {}).items())
    rounds = res.get("rounds") or f"{res.get('repeats')} (dense baselines {res.get('slow_repeats')})"
    out = [f"## {title}", "", *environment_lines(res), "",
           f"Shapes: {shape}; N (tokens per call) {res.get('n')}; timed rounds per variant: {rounds} after a warm-up.",
           "", "### Ratios (baseline time ÷ ours; above 1 means ours is faster)", ""]
    for table in res["tables"]:
        out += ratio_table_lines(res, table)
        out += ratio_table_lines(res, table, cpu, f"{table['title']}: by CPU time (median user + system)")
    out += ["CPU time counts what the process itself ran (all its threads), so it moves less than wall time "
            "when other processes share the cores; wall time is what a user waits for.", ""]
    out += ["### Every variant", "",
            "Variants of one group ran interleaved, round by round; different groups ran one after the other, "
            "so compare times only within a group (every ratio above pairs two variants of one group).", "",
            *variant_table_lines(res), ""]
    floors = [(n, opt, f) for n, per_n in res["results"].items() for opt, f in per_n.get("optimizer_only", {}).items()]
    if floors:
        out += ["Grad-norm clip + optimizer step + zero_grad alone (shared by every SAE of this shape): "
                + "; ".join(f"N={n} {opt} {_num(f['median'])} s" for n, opt, f in floors) + ".", ""]
    return out


def steering_section(res: Mapping) -> list[str]:
    """``bench_steering.py``: generation time per steering condition, ratio to unsteered."""
    shape = (f"{res['studies']} studies × {res['new_tokens']} new tokens, prompt {res['prompt_positions']} "
             f"positions, model {res['model']} (d_model {res['d_model']}), SAE d_sae {res['d_sae']} at "
             f"`{res['hook']}`, {res['threads']} thread(s), {res['repeats']} interleaved repeats")
    rows = []
    for name, c in res["conditions"].items():
        runs = c.get("all_s") or c.get("runs") or []
        span = f"{min(runs):.3f}–{max(runs):.3f}" if runs else "—"
        rows.append([name, _num(c["median_s"]), span, f"{c['ratio']:.3f}"])
    return ["## Steered generation overhead", "", *environment_lines(res), "", shape + ".", "",
            *_table(["condition", "median s", "min–max s", "× unsteered"], rows), ""]


def steering_demo_section(name: str, res: Mapping) -> list[str]:
    """``steering_demo_numbers.py``: held-out steering per finding (feature vs a random-feature control)."""
    m, env = res.get("measured", {}), res.get("environment", {})
    date = m.get("date") or (env.get("started_utc") or "")[:10] or "not recorded"
    root = m.get("root") or (f"`{res['demo_dir']}`" if res.get("demo_dir") else "not recorded")
    rows = []
    for f, r in res["findings"].items():
        rows.append([f, str(r["feature"]), _num(r["coefficient"], 1), _num(r["on_rate"], 2), _num(r["random_on_rate"], 2),
                     _num(r["off_target_rate"], 2), _num(r["random_off_target_rate"], 2), _num(r["parse_rate"], 2),
                     _num(r["baseline_parse_rate"], 2), "yes" if r.get("goal_met") else "no"])
    select = name.removeprefix("results_steering_demo_").removesuffix(".json").replace("_", " ")
    return [f"### Steering on the demo model ({select})", "",
            f"- measured: {date}, on {root} (a `sae-rad demo --out DEMO_DIR` folder)",
            f"- command: `{m.get('command') or res.get('command', 'not recorded')}`",
            f"- {res['n_val']} validation / {res['n_test']} test studies, coefficients {res['coefficients']} "
            f"(unit {res['unit']}), edit at {res['positions']} positions", "",
            *_table(["finding", "feature", "coef", "on-rate", "random on-rate", "off-target", "random off-target",
                     "parse rate", "unsteered parse rate", "goal met"], rows), ""]


def header_lines(results: Mapping[str, Mapping]) -> list[str]:
    gpu = [n for n in GPU_FILES if n in results] + [
        n for n, r in results.items() if r.get("environment", {}).get("device") == "cuda" and n not in GPU_FILES
    ]
    triton = (f"GPU results: {', '.join(gpu)}." if gpu else
              "No GPU results file is committed: the Triton kernels are verified for correctness only under "
              "the Triton interpreter (`TRITON_INTERPRET=1`, `pytest -m slow`), and no GPU speed is claimed.")
    names = [n for n in COMMANDS if n in results] + [n for n in results if n not in COMMANDS]
    cmds = [f"    {COMMANDS.get(n, '(no known command)')}   # → benchmarks/{n}" for n in names]
    return [
        "# Benchmarks", "",
        "<!-- Generated by `python benchmarks/report.py` from benchmarks/results_*.json. Do not edit by hand. -->",
        "",
        "Regenerate the results (each full run takes minutes on a 2-core CPU; run on a quiet machine), then this page:",
        "", *cmds, "    python benchmarks/report.py               # → docs/benchmarks.md", "",
        "Every benchmark script takes `--quick` (tiny shapes, a few rounds) for a smoke run; write its output "
        "elsewhere (`--out /tmp/...`) so the committed results stay full-size.",
        "", "## How to read this page", "",
        "- A ratio is baseline time ÷ ours, medians over interleaved rounds in one process on the same inputs. "
        "The **like-for-like** column comes first: both sides at the same settings (same optimizer, same "
        "`rescale_acts_by_decoder_norm`, no gradient-buffer reuse on ours). Each later column changes one "
        "setting, so what each extra adds is visible on its own.",
        "- CPU only, fp32. The load average recorded at the start and end of each run says how busy the machine "
        "was; on a shared machine the spread column shows how far the rounds disagreed.",
        f"- {triton}",
        "- SAELens's BatchTopK and Matryoshka BatchTopK always decode densely (their BatchTopK activation "
        "scatters into a dense `[N, d_sae]` tensor; `use_sparse_activations` is honoured only by the TopK "
        "architecture), so SAELens's own sparse path appears only in the single-decode kernel tables.",
        "",
    ]


def render(results: Mapping[str, Mapping]) -> str:
    """The whole page for ``results`` (file name → parsed JSON), as markdown text."""
    out = header_lines(results)
    titles = {"training_step": "Training step (SAELens trainer)", "kernels": "Kernels"}
    tabled = sorted((n for n, r in results.items() if "tables" in r), key=lambda n: (n not in COMMANDS, n != "results_training.json", n))
    for name in tabled:  # the training step first, then the kernels, then any other
        out += comparison_section(titles.get(results[name].get("benchmark"), name), results[name])
    if "results_steering.json" in results:
        out += steering_section(results["results_steering.json"])
    demo = [n for n in results if n.startswith("results_steering_demo_")]
    if demo:
        out += ["## Steering on the demo model", "",
                "Quality, not speed: held-out test studies where steering a finding's feature makes the report "
                "state it (on-rate) or state other findings (off-target), beside a random-feature control.", ""]
        for n in demo:
            out += steering_demo_section(n, results[n])
    unknown = [n for n, r in results.items() if "tables" not in r and n != "results_steering.json" and n not in demo]
    if unknown:
        out += ["## Not rendered", "", *[f"- `{n}`: no renderer for this file's layout" for n in unknown], ""]
    return "\n".join(out).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results-dir", type=Path, default=HERE)
    ap.add_argument("--out", type=Path, default=DOC)
    ap.add_argument("--check", action="store_true", help="exit 1 if --out differs from the rendered page")
    a = ap.parse_args(argv)
    text = render(load_results(a.results_dir))
    if a.check:
        same = a.out.exists() and a.out.read_text() == text
        print(f"{a.out} is {'up to date' if same else 'stale: run python benchmarks/report.py'}")
        return 0 if same else 1
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(text)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

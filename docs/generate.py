"""Render every generated part of the documents from committed result files.

    python docs/generate.py                                # rewrite the generated blocks (and docs/benchmarks.md)
    python docs/generate.py --from runs/demo/summary.json  # first copy a full demo run's summary into docs/results/
    python docs/generate.py --check                        # exit 1 if a generated block is out of date

A generated block sits between ``<!-- generated:start NAME -->`` and ``<!-- generated:end NAME -->`` in a
Markdown file; everything between the two markers is replaced, everything outside them is left alone. The
blocks are rendered from ``docs/results/demo_summary.json`` (a trimmed copy of the ``summary.json`` that
``sae-rad demo`` writes), so no measured number is typed by hand. ``benchmarks/report.py`` (when present)
renders ``docs/benchmarks.md`` from ``benchmarks/results_*.json``; this script runs it too, so one command
regenerates every generated document.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SUMMARY = ROOT / "docs" / "results" / "demo_summary.json"
SUMMARY_REL = "docs/results/demo_summary.json"
FINDINGS = (
    "cardiomegaly",
    "pleural_effusion",
    "pneumothorax",
    "lung_opacity",
    "pacemaker",
    "support_lines_tubes",
)
# keys dropped when a run's summary.json is copied into docs/results (duplicates of other fields)
_DROP_KEYS = {"table"}
_MARKER = re.compile(r"(<!-- generated:start (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- generated:end (?P=name) -->)", re.S)


# ---------------------------------------------------------------- formatting


def _num(x: Any, digits: int = 2) -> str:
    """A number for a table cell; ``—`` for missing or non-finite values."""
    if x is None or isinstance(x, bool):
        return "—" if x is None else ("yes" if x else "no")
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float) and not math.isfinite(x):
        return "—"
    return f"{x:.{digits}f}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    s = round(seconds)
    return f"{s // 60} min {s % 60:02d} s" if s >= 60 else f"{seconds:.1f} s"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _findings(d: dict[str, Any] | None) -> list[str]:
    """The project's findings present in ``d``, in the project's order, then any others."""
    d = d or {}
    return [f for f in FINDINGS if f in d] + sorted(k for k in d if k not in FINDINGS and k != "no_finding")


def _short(finding: str) -> str:
    return finding.replace("_", " ").replace("support lines tubes", "lines/tubes")


def _missing(s: dict[str, Any], stage: str) -> str | None:
    """A sentence when ``stage`` did not run (skipped or failed) in this summary, else None."""
    failed = s.get("failed_stages") or {}
    skipped = s.get("skipped_stages") or {}
    if stage in failed:
        return f"*The {stage} stage failed in this run: {failed[stage]}*"
    if stage in skipped:
        return f"*The {stage} stage was skipped in this run: {skipped[stage]}*"
    if not s.get(stage):
        return f"*No {stage} results in this run.*"
    return None


# ---------------------------------------------------------------- phantom benchmark page


def _run_section(s: dict[str, Any]) -> str:
    cfg, data = s.get("config", {}), s.get("data", {})
    quick = " **(a `--quick` smoke run: its numbers mean nothing)**" if cfg.get("quick_mode") else ""
    total = (s.get("timings_s") or {}).get("total")
    m = cfg.get("model") or {}
    return (
        f"Run: `sae-rad demo --seed {cfg.get('seed', 0)}` on {_num(cfg.get('n_studies'))} phantom studies "
        f"(train / validate / test {_num(data.get('n_train'))} / {_num(data.get('n_validate'))} / "
        f"{_num(data.get('n_test'))}), device `{cfg.get('device', 'cpu')}`, {s.get('torch_threads', '?')} "
        f"torch threads on {s.get('cpu_count', '?')} CPUs, {_duration(total)} in all{quick}.\n\n"
        f"Configuration: images {m.get('image_size')} px (patch {m.get('patch_size')}); vision tower "
        f"{m.get('vision_layers')} × {m.get('vision_hidden')}, language model {m.get('text_layers')} × "
        f"{m.get('text_hidden')}; vision / report epochs {m.get('vision_epochs')} / {m.get('lm_epochs')}; "
        f"SAE {_num(cfg.get('d_sae'))} latents, k = {cfg.get('k')}, level fractions "
        f"{', '.join(str(f) for f in cfg.get('group_fractions') or [])}, "
        f"{_num(cfg.get('sae_training_tokens'))} training positions."
    )


def _vision_section(s: dict[str, Any]) -> str:
    vision = ((s.get("model") or {}).get("training") or {}).get("vision") or {}
    study, patch = vision.get("val_study_auroc") or {}, vision.get("val_patch_auroc") or {}
    if not study:
        trained = (s.get("model") or {}).get("trained_now")
        return "*The tiny model came from the cache; its vision numbers are in its `training.json`.*" if (
            trained is False
        ) else "*No vision pretraining numbers in this run.*"
    rows = [[_short(f), _num(study.get(f)), _num(patch.get(f))] for f in _findings(study)]
    return "Validation studies (held out from training):\n\n" + _table(
        ["finding", "study AUROC", "patch AUROC"], rows
    )


def _above_chance(r: dict[str, Any]) -> list[str]:
    """Findings present in the scored studies whose report F1 beats always answering positive."""
    f1, chance, prev = r.get("f1", {}), r.get("chance_f1", {}), r.get("prevalence", {})
    return [f for f in _findings(f1) if (prev.get(f) or 0) > 0 and f1.get(f, 0) > chance.get(f, 0)]


def _reports_section(s: dict[str, Any]) -> str:
    r = s.get("reports") or {}
    miss = _missing(s, "reports")
    if miss:
        return miss
    f1, chance, prev = r.get("f1", {}), r.get("chance_f1", {}), r.get("prevalence", {})
    fs = _findings(f1)
    above = _above_chance(r)
    rows = [[_short(f), _num(prev.get(f)), _num(f1.get(f)), _num(chance.get(f)), _num(r.get("precision", {}).get(f)),
             _num(r.get("recall", {}).get(f)), _num((r.get("reference_f1") or {}).get(f))] for f in fs]
    return (
        f"Generated reports vs planted truth on {_num(r.get('n_studies'))} test studies (chance = the F1 of "
        f"always answering positive; reference = the labeler on the phantoms' own reports). Macro F1 "
        f"{_num(r.get('macro_f1'))}; above chance for {len(above)} of {len(fs)} findings (a finding absent "
        f"from the scored studies does not count).\n\n"
        + _table(["finding", "prevalence", "model F1", "chance F1", "precision", "recall", "reference F1"], rows)
    )


def _layers_section(s: dict[str, Any]) -> str:
    layers = s.get("layers") or {}
    miss = _missing(s, "layers")
    if miss:
        return miss
    fs = _findings(next(iter(layers.values())).get("probe_f1"))
    rows = []
    for hook, v in layers.items():
        cells = [f"{_num(v.get('probe_f1', {}).get(f))} / {_num(v.get('best_latent_f1', {}).get(f))}" for f in fs]
        rows.append([f"`{hook}`", *cells, f"{_num(v.get('probe_f1_mean'))} / {_num(v.get('best_latent_f1_mean'))}"])
    return "Per layer, test studies: logistic-probe F1 / quick-SAE best-latent F1.\n\n" + _table(
        ["hook", *map(_short, fs), "mean"], rows
    )


def _sae_section(s: dict[str, Any]) -> str:
    sae = s.get("sae") or {}
    miss = _missing(s, "sae")
    if miss:
        return miss
    ends = sae.get("level_ends") or []
    cols = ["explained_variance", "l0", "explained_variance_image_tokens", "l0_image_tokens"]
    vals = {c: sae.get(c) or [None] * len(ends) for c in cols}
    rows = [[_num(e), _num(vals[cols[0]][i], 3), _num(vals[cols[1]][i], 1), _num(vals[cols[2]][i], 3),
             _num(vals[cols[3]][i], 1)] for i, e in enumerate(ends)]
    best, latent = sae.get("best_latent_f1") or {}, sae.get("best_latent") or {}
    best_rows = [[_short(f), _num(latent.get(f)), _num(best.get(f))] for f in _findings(best)]
    return (
        f"Matryoshka SAE at `{sae.get('hook_name')}` ({_num(sae.get('d_sae'))} latents, positions "
        f"`{sae.get('positions')}`), on {_num(sae.get('n_test_positions'))} test positions:\n\n"
        + _table(["latents (level end)", "explained variance", "L0", "EV, image tokens", "L0, image tokens"], rows)
        + "\n\nBest single latent per finding (study level, test):\n\n"
        + _table(["finding", "latent", "F1"], best_rows)
    )


def _interpretation_section(s: dict[str, Any]) -> str:
    it = s.get("interpretation") or {}
    miss = _missing(s, "interpretation")
    if miss:
        return miss
    best = it.get("best_feature_per_concept") or {}
    rows = [[_short(f), _num(b.get("feature")), f"`{b.get('kind')}`", _num(b.get("f1")), _num(b.get("auroc")),
             _num(b.get("iou")), _num(b.get("pointing"))] for f in _findings(best) for b in [best[f]]]
    return (
        f"Interpretation on {_num(it.get('n_studies'))} validate + test studies (threshold fitted on one half, "
        f"numbers on the other): best feature per finding over the non-leaking position kinds. "
        f"{_num(it.get('n_interpretable'))} of {_num(it.get('n_explained'))} explained features reach RecSAE "
        f"confidence ≥ 0.8.\n\n"
        + _table(["finding", "feature", "kind", "holdout F1", "AUROC", "map IoU", "pointing"], rows)
    )


def _steering_section(s: dict[str, Any]) -> str:
    st = s.get("steering") or {}
    miss = _missing(s, "steering")
    if miss:
        return miss
    per = st.get("per_finding") or {}
    rows = [[_short(f), _num(p.get("feature")), _num(p.get("coefficient"), 1), _num(p.get("on_rate")),
             _num(p.get("random_on_rate")), _num(p.get("off_target_rate")), _num(p.get("random_off_target_rate")),
             _num(p.get("parse_rate")), _num(bool(p.get("goal_met")))] for f in _findings(per) for p in [per[f]]]
    met = sum(bool(p.get("goal_met")) for p in per.values())
    return (
        f"Steering (`add` at `{st.get('positions')}` positions, coefficient in units of `{st.get('unit')}`), "
        f"{_num(st.get('n_test'))} held-out test studies; goal (on-rate ≥ 0.8, off-target ≤ 0.1, reports "
        f"parse) met for {met} of {len(per)}.\n\n"
        + _table(["finding", "feature", "coef", "on-rate", "random on", "off-target", "random off", "parse",
                  "goal met"], rows)
    )


def _maps_section(s: dict[str, Any]) -> str:
    km = s.get("knowledge_maps") or {}
    miss = _missing(s, "knowledge_maps")
    if miss:
        return miss
    reasons = "\n" + "".join(f"\n- {r}" for r in km.get("reasons") or [])
    return (
        f"Knowledge maps ({', '.join(km.get('techniques') or [])}): recommended layer "
        f"{_num(km.get('recommended_layer'))} (probe layer {_num(km.get('probe_layer'))}, patch layer "
        f"{_num(km.get('patch_layer'))}); the demo's SAE reads layer {_num(km.get('sae_layer'))}.{reasons}"
    )


def _timings_section(s: dict[str, Any]) -> str:
    t = s.get("timings_s") or {}
    rows = [[k, _num(float(v), 1)] for k, v in t.items() if k != "total"]
    rows.append(["**total**", f"**{_num(float(t.get('total', 0.0)), 1)}**"])
    trained = (s.get("model") or {}).get("trained_now")
    note = " (the tiny model was trained in this run)" if trained else " (the tiny model came from the cache)"
    return f"Stage wall times in seconds{note}:\n\n" + _table(["stage", "seconds"], rows)


def render_phantom_benchmark(s: dict[str, Any]) -> str:
    """The generated block of docs/phantom-benchmark.md."""
    parts = [
        f"*Generated by `python docs/generate.py` from `{SUMMARY_REL}`; do not edit by hand.*",
        _run_section(s),
        "### Vision pretraining\n\n" + _vision_section(s),
        "### Reports\n\n" + _reports_section(s),
        "### Layers\n\n" + _layers_section(s),
        "### SAE\n\n" + _sae_section(s),
        "### Interpretation\n\n" + _interpretation_section(s),
        "### Steering\n\n" + _steering_section(s),
        "### Knowledge maps\n\n" + _maps_section(s),
        "### Stage times\n\n" + _timings_section(s),
    ]
    return "\n\n".join(parts) + "\n"


def render_readme_headline(s: dict[str, Any]) -> str:
    """The README's small headline block: one line per stage of the latest committed full demo run."""
    r, sae, it, st = (s.get(k) or {} for k in ("reports", "sae", "interpretation", "steering"))
    lines = [f"*Latest committed full demo run (`{SUMMARY_REL}`, rendered by `python docs/generate.py`):*", ""]
    if r:
        lines.append(f"- generated reports: macro F1 {_num(r.get('macro_f1'))}, above chance for "
                     f"{len(_above_chance(r))} of {len(_findings(r.get('f1')))} findings")
    if sae.get("explained_variance"):
        lines.append(f"- Matryoshka SAE: explained variance {_num(sae['explained_variance'][-1], 3)} at L0 "
                     f"{_num((sae.get('l0') or [None])[-1], 1)} (all {_num(sae.get('d_sae'))} latents)")
    best = it.get("best_feature_per_concept") or {}
    if best:
        fs = _findings(best)
        good = [_short(f) for f in fs if (best[f].get("f1") or 0) >= 0.9]
        lines.append(f"- single SAE feature with holdout F1 ≥ 0.9: {len(good)} of {len(fs)} findings"
                     + (f" ({', '.join(good)})" if good else ""))
    per = st.get("per_finding") or {}
    if per:
        lines.append(f"- steering goal met for {sum(bool(p.get('goal_met')) for p in per.values())} of "
                     f"{len(per)} findings")
    total = (s.get("timings_s") or {}).get("total")
    lines.append(f"- whole run: {_duration(total)} wall on {s.get('cpu_count', '?')} CPUs (depends on the machine "
                 f"and its load; details: [docs/phantom-benchmark.md](docs/phantom-benchmark.md))")
    return "\n".join(lines) + "\n"


def render_quickstart(_: dict[str, Any]) -> str:
    """The README's quickstart: ``examples/quickstart.py`` verbatim (``tests/test_quickstart.py`` runs that file)."""
    return "```python\n" + (ROOT / "examples" / "quickstart.py").read_text() + "```\n"


# ---------------------------------------------------------------- blocks and files

# file (relative to the repository root) -> block name -> renderer
BLOCKS: dict[str, dict[str, Callable[[dict[str, Any]], str]]] = {
    "docs/phantom-benchmark.md": {"demo-results": render_phantom_benchmark},
    "README.md": {"quickstart": render_quickstart, "demo-headline": render_readme_headline},
}


def replace_blocks(text: str, rendered: dict[str, str], where: str = "") -> str:
    """``text`` with the body of every named generated block replaced; a block named but absent is an error."""
    seen: set[str] = set()

    def sub(m: re.Match[str]) -> str:
        name = m.group("name")
        if name not in rendered:
            return m.group(0)
        seen.add(name)
        return m.group(1) + rendered[name] + m.group(4)

    out = _MARKER.sub(sub, text)
    missing = set(rendered) - seen
    if missing:
        raise SystemExit(
            f"{where}: no '<!-- generated:start NAME -->' … '<!-- generated:end NAME -->' block for "
            f"{sorted(missing)}; add the two marker lines where the block belongs"
        )
    return out


def render_all(root: Path = ROOT, summary_path: Path | None = None) -> dict[Path, str]:
    """Every file with generated blocks → its text with those blocks rendered from the summary."""
    summary = json.loads((summary_path or root / SUMMARY_REL).read_text())
    out = {}
    for rel, blocks in BLOCKS.items():
        path = root / rel
        out[path] = replace_blocks(path.read_text(), {n: fn(summary) for n, fn in blocks.items()}, rel)
    return out


def trim_summary(summary: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """A copy of a demo ``summary.json`` fit to commit: paths made relative to the run folder (other absolute
    paths reduced to their last part) and the pre-formatted ``table`` duplicates dropped."""
    run = str(run_dir.resolve())

    def walk(o: Any) -> Any:
        if isinstance(o, dict):
            return {k: walk(v) for k, v in o.items() if k not in _DROP_KEYS}
        if isinstance(o, list):
            return [walk(v) for v in o]
        if isinstance(o, str) and o.startswith("/"):
            return o[len(run) + 1:] or "." if o.startswith(run) else Path(o).name
        if isinstance(o, str) and run in o:
            return o.replace(run + "/", "").replace(run, ".")
        return o

    return walk(summary)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--from", dest="source", type=Path,
                    help="a full demo run's summary.json to copy (trimmed) into " + SUMMARY_REL)
    ap.add_argument("--check", action="store_true", help="change nothing; exit 1 if a block is out of date")
    args = ap.parse_args(argv)
    if args.source:
        src = json.loads(args.source.read_text())
        if (src.get("config") or {}).get("quick_mode"):
            print(f"note: {args.source} is a --quick run; its numbers mean nothing", file=sys.stderr)
        SUMMARY.parent.mkdir(parents=True, exist_ok=True)
        trimmed = trim_summary(src, args.source.parent)
        SUMMARY.write_text(json.dumps(trimmed, indent=1, sort_keys=False, allow_nan=False) + "\n")
        print(f"wrote {SUMMARY_REL}")
    stale = []
    for path, text in render_all().items():
        if path.read_text() != text:
            stale.append(path.relative_to(ROOT))
            if not args.check:
                path.write_text(text)
    report = ROOT / "benchmarks" / "report.py"
    if report.exists():  # docs/benchmarks.md, rendered by its own script
        rc = subprocess.run([sys.executable, str(report), *(["--check"] if args.check else [])], cwd=ROOT).returncode
        if rc and not args.check:
            raise SystemExit(f"benchmarks/report.py failed (exit {rc})")
        if rc:
            stale.append(Path("docs/benchmarks.md"))
    if args.check:
        for p in stale:
            print(f"out of date: {p} (run python docs/generate.py)", file=sys.stderr)
        return 1 if stale else 0
    print("updated: " + (", ".join(map(str, stale)) if stale else "nothing (already up to date)"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

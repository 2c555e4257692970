"""benchmarks/report.py: the page is rendered from results files, like-for-like column first, never stale."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def load_script(name: str):
    """Import ``benchmarks/<name>.py`` (a folder of scripts, not a package; siblings import ``_common``)."""
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up while the class is created
    spec.loader.exec_module(mod)
    return mod


report = load_script("report")


def synthetic_training() -> dict:
    """A results file whose like-for-like column is listed second, with distinct ratios per cell."""
    variants = {
        "stock/adam/rescale-off": 3.0,
        "ours/adam/rescale-off/reuse-off": 1.5,  # like for like: 3.0 / 1.5 = 2.00×
        "stock/fused/rescale-off": 2.2,
        "ours/fused/rescale-off/reuse-off": 0.4,  # fused: 2.2 / 0.4 = 5.50×
    }
    return {
        "benchmark": "training_step",
        "command": "python benchmarks/bench_training.py",
        "environment": {"cpu_model": "Test CPU 9000", "cpu_count": 2, "load_avg_start": [0.5, 0.25, 0.125],
                        "load_avg_end": [1.5, 1.0, 0.75]},
        "shape": {"d_in": 8, "d_sae": 32},
        "n": [64],
        "rounds": 3,
        "tables": [{
            "id": "training_step",
            "title": "Step",
            "rows": ["ours"],
            "columns": [
                {"id": "fused_adam", "title": "fused Adam (both)", "meaning": "m", "like_for_like": False,
                 "baseline": "stock/fused/rescale-off", "ours": {"ours": "ours/fused/rescale-off/reuse-off"}},
                {"id": "like_for_like", "title": "like for like", "meaning": "m", "like_for_like": True,
                 "baseline": "stock/adam/rescale-off", "ours": {"ours": "ours/adam/rescale-off/reuse-off"}},
            ],
        }],
        "results": {"64": {"variants": {
            k: {"unit": "s", "median": v, "min": v * 0.9, "max": v * 1.1, "spread_pct": 20.0, "runs": [v],
                "user_median": v * 1.8, "sys_median": 0.01, "peak_rss_delta_mib": 12.0}
            for k, v in variants.items()
        }}},
    }


def table_after(text: str, heading: str) -> tuple[list[str], list[list[str]]]:
    """Header cells and body rows of the first markdown table after ``heading``."""
    lines = text.splitlines()
    i = lines.index(heading)
    rows = []
    for line in lines[i + 1:]:
        if line.startswith("|"):
            rows.append([c.strip() for c in line.strip("|").split("|")])
        elif rows:
            break
    return rows[0], rows[2:]


def test_like_for_like_column_first_and_ratios_in_their_cells():
    text = report.render({"results_training.json": synthetic_training()})
    header, body = table_after(text, "#### Step")
    assert header[:4] == ["N", "ours", "like for like", "fused Adam (both)"]
    assert body == [["64", "ours", "2.00×", "5.50×"]]


def test_environment_and_variants_come_from_the_file():
    text = report.render({"results_training.json": synthetic_training()})
    assert "- CPU: Test CPU 9000" in text
    assert "at start 0.50 / 0.25 / 0.12, at end 1.50 / 1.00 / 0.75" in text
    header, body = table_after(text, "### Every variant")
    row = next(r for r in body if r[1] == "`ours/fused/rescale-off/reuse-off`")
    assert header[2] == "median s" and row[2] == "0.400" and row[5] == "0.720"  # user CPU = 1.8 × 0.4
    assert "python benchmarks/bench_training.py   # → benchmarks/results_training.json" in text


def test_missing_baseline_renders_na():
    res = synthetic_training()
    res["results"]["64"]["variants"]["stock/fused/rescale-off"] = {"median": None, "error": "NotImplementedError: x"}
    _, body = table_after(report.render({"results_training.json": res}), "#### Step")
    assert body[0][2:4] == ["2.00×", "n/a"]


def test_committed_page_matches_committed_results():
    """docs/benchmarks.md is exactly what report.py renders from benchmarks/results_*.json."""
    rendered = report.render(report.load_results(BENCH))
    assert report.DOC.read_text() == rendered, "docs/benchmarks.md is stale: run python benchmarks/report.py"


def test_busy_machine_is_flagged_from_the_recorded_load():
    res = synthetic_training()
    assert "busy machine" not in report.render({"results_training.json": res})  # load 1.5 on 2 cores
    res["environment"]["load_avg_end"] = [3.25, 2.0, 1.0]
    assert "the 1-minute load reached 3.25 on 2 cores" in report.render({"results_training.json": res})

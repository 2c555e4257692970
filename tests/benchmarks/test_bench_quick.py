"""The benchmark scripts run end to end with ``--quick`` and write what benchmarks/report.py renders."""

from __future__ import annotations

import json

from test_report import load_script


def _check_pairs(res: dict) -> None:
    """Every column's baseline and ours variants were measured (or carry the error that stopped them)."""
    for per_n in res["results"].values():
        var = per_n["variants"]
        for table in res["tables"]:
            for col in table["columns"]:
                for name in (col["baseline"], *col["ours"].values()):
                    v = var[name]
                    assert (v["median"] is not None and v["median"] > 0 and len(v["runs"]) >= 2) or "error" in v, name


def test_training_quick(tmp_path):
    out = tmp_path / "results_training.json"
    load_script("bench_training").main(["--quick", "--out", str(out)])
    res = json.loads(out.read_text())
    assert res["quick"] is True and res["command"] == "python benchmarks/bench_training.py --quick"
    assert res["environment"]["load_avg_end"] is not None and res["environment"]["sae_lens"]
    _check_pairs(res)
    cols = res["tables"][0]["columns"]
    assert cols[0]["like_for_like"] and sum(c["like_for_like"] for c in cols) == 1
    var = res["results"]["32"]["variants"]
    lfl = cols[0]
    # like for like means the same optimizer and rescale setting on both sides, no buffer reuse on ours
    for ours in lfl["ours"].values():
        assert (var[ours]["optimizer"], var[ours]["rescale"], var[ours]["reuse"]) == (
            var[lfl["baseline"]]["optimizer"], var[lfl["baseline"]]["rescale"], False)
    text = load_script("report").render({"results_training.json": res})
    ratio = var[lfl["baseline"]]["median"] / var[lfl["ours"]["ours-saelens"]]["median"]
    assert f"| 32 | ours-saelens | {ratio:.2f}× |" in text


def test_kernels_quick(tmp_path):
    out = tmp_path / "results_kernels.json"
    load_script("bench_kernels").main(["--quick", "--out", str(out)])
    res = json.loads(out.read_text())
    _check_pairs(res)
    var = res["results"]["8"]["variants"]
    # SAELens's own sparse TopK path ran; its Matryoshka decode has no sparse path (recorded, not hidden)
    assert var["decode_fwd/saelens decode (sparse acts)"]["median"] > 0
    assert var["matryoshka_all_levels/saelens _iterable_decode (sparse)"]["median"] is None
    assert all(t["columns"][0]["like_for_like"] for t in res["tables"])

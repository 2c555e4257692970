"""Atomic writes and strict JSON."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from sae_rad_ext.util.files import (
    atomic_open,
    atomic_write_text,
    json_safe,
    save_figure,
    to_json,
    write_json,
    write_jsonl,
)


def _reject(name: str):
    raise ValueError(f"non-strict JSON constant {name}")


class _Unserialisable:
    pass


def test_failed_write_keeps_old_file_and_leaves_no_temporary(tmp_path):
    path = write_json(tmp_path / "out.json", {"v": 1})
    with pytest.raises(TypeError):
        write_json(path, {"v": 2, "bad": _Unserialisable()})
    with pytest.raises(RuntimeError), atomic_open(path) as fh:
        fh.write('{"v": 3')  # half a document, then the writer dies
        raise RuntimeError("writer died")
    assert json.loads(path.read_text()) == {"v": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_nan_and_inf_become_null_and_parse_strictly(tmp_path):
    obj = {"a": float("nan"), "b": [1.5, float("inf"), -float("inf")], "c": {"d": np.float32("nan")},
           "e": (np.int64(3), np.float64(0.25)), "f": "NaN"}
    path = write_json(tmp_path / "x.json", obj, indent=1)
    back = json.loads(path.read_text(), parse_constant=_reject)
    assert back == {"a": None, "b": [1.5, None, None], "c": {"d": None}, "e": [3, 0.25], "f": "NaN"}
    rows = write_jsonl(tmp_path / "x.jsonl", [{"x": math.nan}, {"x": 2.0}])
    lines = rows.read_text().splitlines()
    assert [json.loads(s, parse_constant=_reject) for s in lines] == [{"x": None}, {"x": 2.0}]


def test_finite_json_is_byte_identical_to_json_dumps():
    obj = {"k": [1, 2.5, "s", None, True], "n": {"x": 1e-9}}
    for indent in (None, 1, 2):
        assert to_json(obj, indent=indent) == json.dumps(obj, indent=indent)
    assert to_json({"p": object()}, default=lambda o: "obj") == '{"p": "obj"}'
    assert json_safe([float("nan"), 1.0]) == [None, 1.0]


def test_text_and_parents(tmp_path):
    p = atomic_write_text(tmp_path / "a" / "b" / "t.txt", "héllo\n")
    assert p.read_bytes() == "héllo\n".encode()
    atomic_write_text(p, "second")
    assert p.read_text() == "second"


def test_save_figure_writes_a_png(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    p = save_figure(fig, tmp_path / "f.png", dpi=20, tight_layout=True)
    assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not plt.fignum_exists(fig.number)
    assert sorted(x.name for x in tmp_path.iterdir()) == ["f.png"]


def test_atomic_dir_replaces_a_folder_whole_or_not_at_all(tmp_path):
    from sae_rad_ext.util.files import atomic_dir

    out = tmp_path / "run"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_dir(out) as tmp:
            (tmp / "new.txt").write_text("half")
            raise RuntimeError("boom")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no temporary folder left
    assert sorted(p.name for p in out.iterdir()) == ["old.txt"]
    with atomic_dir(out) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".run.tmp-")
        (tmp / "new.txt").write_text("complete")
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"]
    assert (out / "new.txt").read_text() == "complete"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]

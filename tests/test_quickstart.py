"""The README's quickstart is examples/quickstart.py, and it runs offline as written."""

from __future__ import annotations

import re
import runpy
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "examples" / "quickstart.py"


def test_readme_shows_the_quickstart_file_verbatim() -> None:
    readme = (ROOT / "README.md").read_text()
    m = re.search(r"<!-- generated:start quickstart -->\n```python\n(.*?)```\n<!-- generated:end quickstart -->", readme, re.S)
    assert m, "README.md has no quickstart block (run python docs/generate.py)"
    assert m.group(1) == QUICKSTART.read_text(), "README's quickstart differs from examples/quickstart.py"


@pytest.fixture
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny shapes: thread barriers would cost more than the work
    yield
    torch.set_num_threads(n)


def test_quickstart_runs_and_each_step_produces_its_result(tmp_path, monkeypatch, capsys, one_thread) -> None:
    from sae_lens import SAE

    from sae_rad_ext import RadMatryoshkaSAE
    from sae_rad_ext.data import FINDINGS

    monkeypatch.chdir(tmp_path)
    ns = runpy.run_path(str(QUICKSTART))
    out = capsys.readouterr().out
    model, sae, hook = ns["model"], ns["sae"], ns["HOOK"]

    # cache: every selected position of every study, at the model's width
    x = ns["x"]
    assert ns["cache"].n_studies == len(ns["studies"]) and x.shape == (ns["cache"].n_positions, model.cfg.d_model)
    # train: our Matryoshka SAE through SAELens, nested levels that reconstruct better as they grow
    assert isinstance(sae, RadMatryoshkaSAE) and sae.cfg.metadata.hook_name == hook
    ev = ns["levels"].explained_variance.tolist()
    assert len(ev) == 3 and ev == sorted(ev) and ev[-1] > 0.3, ev
    # interpret: concepts aligned to features on the fit half, scored on the holdout half, and explanations
    best = ns["res"].best
    assert "pleural_effusion" in best and set(best) <= {*FINDINGS, "no_finding"}
    assert ns["feature"] == best["pleural_effusion"].feature and 0 <= ns["feature"] < sae.cfg.d_sae
    assert all(0.0 <= row.f1 <= 1.0 for row in best.values())
    assert ns["res"].explanations
    # steer: one report per study
    assert len(ns["steered"].reports) == 2
    # export: the release folder loads back as the same SAE; the dashboard has a page per feature
    again = SAE.load_from_disk(str(ns["release"].folder))
    assert torch.allclose(again.encode(x[:32]), sae.encode(x[:32]), atol=1e-6)
    site = Path(ns["site"])
    assert site.exists() and len(list((site.parent / "features").glob("*.html"))) == sae.cfg.d_sae
    assert "explained variance per level" in out and "release:" in out

"""The CLI's one error boundary: user errors → one `error:` line and exit 2; anything else → one line
naming a saved traceback file and exit 1; --debug / SAE_RAD_DEBUG=1 print the traceback."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from sae_lens import StandardSAE, StandardSAEConfig
from typer.testing import CliRunner

from sae_rad_ext.cli.app import app


@pytest.fixture(autouse=True)
def _errors_dir(tmp_path, monkeypatch):
    """Saved tracebacks go under this test's folder, not ~/.cache."""
    monkeypatch.setenv("SAE_RAD_EXT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("SAE_RAD_DEBUG", raising=False)


def _lines(text: str) -> list[str]:
    return [x for x in text.splitlines() if x.strip()]


def test_bad_sae_folder_is_one_line_and_exit_2(tmp_path):
    empty = tmp_path / "not_an_sae"
    empty.mkdir()
    res = CliRunner().invoke(app, ["export", "--sae", str(empty), "--out", str(tmp_path / "out")])
    assert res.exit_code == 2
    (line,) = _lines(res.stderr)
    assert line.startswith(f"error: {empty}: ") and "neither cfg.json" in line and "ae.pt" in line
    assert "Traceback" not in res.output
    assert not (tmp_path / "cache" / "errors").exists()  # user errors save nothing


def test_debug_prints_the_traceback(tmp_path):
    empty = tmp_path / "not_an_sae"
    empty.mkdir()
    args = ["export", "--sae", str(empty), "--out", str(tmp_path / "out")]
    for res in (
        CliRunner().invoke(app, ["--debug", *args]),
        CliRunner().invoke(app, args, env={"SAE_RAD_DEBUG": "1"}),
    ):
        assert res.exit_code == 2
        assert "Traceback (most recent call last)" in res.stderr
        assert "sae_rad_ext.errors.CheckpointError" in res.stderr or "CheckpointError:" in res.stderr
        assert _lines(res.stderr)[-1].startswith("error: ")


def test_sae_model_mismatch_is_a_config_error(tmp_path):
    sae = StandardSAE(StandardSAEConfig(d_in=7, d_sae=4))
    sae.save_model(str(tmp_path / "sae"))
    args = ["steer", "--sae", str(tmp_path / "sae"), "--feature", "0", "--studies", "phantom:2"]
    res = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "out")])
    assert res.exit_code == 2
    (line,) = _lines(res.stderr)
    assert "d_in=7" in line and "d_model is" in line and "--model" in line


def test_unexpected_error_saves_the_traceback(tmp_path, monkeypatch):
    import sae_rad_ext.demo.pipeline as pipeline

    def broken(cfg):
        raise RuntimeError("stage exploded\nsecond line")

    monkeypatch.setattr(pipeline, "run_demo", broken)
    res = CliRunner().invoke(app, ["demo", "--quick", "--out", str(tmp_path / "run")])
    assert res.exit_code == 1
    (line,) = _lines(res.stderr)
    assert line.startswith("error: unexpected RuntimeError: stage exploded second line")
    assert "Traceback" not in res.output and "--debug" in line
    saved = Path(re.search(r"traceback saved to (\S+?);", line).group(1))
    assert saved.parent == tmp_path / "cache" / "errors"
    text = saved.read_text()
    assert text.startswith(f"$ sae-rad demo --quick --out {tmp_path / 'run'}\n")
    assert "Traceback (most recent call last)" in text and "RuntimeError: stage exploded" in text
    assert "in broken" in text  # the frame that raised

    res = CliRunner().invoke(app, ["--debug", "demo", "--quick", "--out", str(tmp_path / "run")])
    assert res.exit_code == 1 and "Traceback (most recent call last)" in res.stderr
    assert "traceback saved" not in res.stderr


def test_usage_errors_and_exits_pass_through(tmp_path):
    res = CliRunner().invoke(app, ["--version"])
    assert res.exit_code == 0 and res.stdout.startswith("sae-rad ")
    res = CliRunner().invoke(app, ["steer", "--sae", str(tmp_path / "missing"), "--feature", "0"])
    assert res.exit_code == 2 and "error: unexpected" not in res.output  # click's own usage error


def test_missing_file_is_a_user_error(tmp_path, monkeypatch):
    import sae_rad_ext.demo.pipeline as pipeline

    def missing(cfg):
        torch.load(tmp_path / "nope.pt")

    monkeypatch.setattr(pipeline, "run_demo", missing)
    res = CliRunner().invoke(app, ["demo", "--quick", "--out", str(tmp_path / "run")])
    assert res.exit_code == 2
    (line,) = _lines(res.stderr)
    assert line.startswith("error: ") and str(tmp_path / "nope.pt") in line

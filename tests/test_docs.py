"""The documents: README shape, links, generated blocks in sync with their result files, commands that exist."""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
from pathlib import Path

import pytest
import typer

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
MARKDOWN = [README, *sorted(DOCS.glob("*.md"))]
# docs/benchmarks.md is rendered by benchmarks/report.py, which has its own check
HAND_WRITTEN = [p for p in MARKDOWN if p.name != "benchmarks.md"]

_FENCE = re.compile(r"^```.*?^```", re.S | re.M)
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
_GENERATED = re.compile(r"<!-- generated:start ([\w-]+) -->.*?<!-- generated:end \1 -->", re.S)


def _generate_module():
    spec = importlib.util.spec_from_file_location("docs_generate", DOCS / "generate.py")
    mod = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(mod)
    return mod


def _slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = _FENCE.sub("", path.read_text())
    return {_slug(m.group(1)) for m in re.finditer(r"^#+ (.+)$", text, re.M)}


def _ci_commands() -> list[str]:
    """The install and test commands of .ci/run, without pip's/pytest's -q."""
    cmds = []
    for line in (ROOT / ".ci" / "run").read_text().splitlines():
        line = line.strip()
        if line.startswith(("python3 -m pip install", "python3 -m pytest")):
            cmds.append(" ".join(t for t in shlex.split(line) if t != "-q"))
    return cmds


def _readme_commands() -> list[list[str]]:
    lines = README.read_text().splitlines()
    assert lines[0].startswith("# ") and lines[2] == "```bash" and lines[5] == "```", (
        "README must open with its title, then a bash block holding exactly the two fresh-machine commands"
    )
    return [[" ".join(t for t in shlex.split(part) if t != "-q") for part in lines[i].split(" && ")] for i in (3, 4)]


def test_readme_is_short() -> None:
    n = len(README.read_text().splitlines())
    assert n <= 300, f"README.md has {n} lines; keep it at most 300 and move detail into docs/"


def test_readme_starts_with_the_two_commands_of_ci() -> None:
    ci = _ci_commands()
    assert len(ci) == 3 and ci[0].endswith("torch==2.13.0") and "pytest" in ci[2], f".ci/run changed shape: {ci}"
    demo, tests = _readme_commands()
    assert tests == ci, f"README's test command {tests} differs from .ci/run's {ci}"
    assert demo == [ci[0], "python3 -m pip install -e .", "sae-rad demo"], demo


@pytest.mark.parametrize("path", MARKDOWN, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path: Path) -> None:
    text = _FENCE.sub("", path.read_text())
    bad = []
    for target in _LINK.findall(text):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.exists():
            bad.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            bad.append(f"{target}: no heading with anchor #{anchor} in {dest.name}")
    assert not bad, f"{path.relative_to(ROOT)}: broken links:\n  " + "\n  ".join(bad)


def test_link_checker_sees_a_broken_link(tmp_path: Path) -> None:
    page = tmp_path / "p.md"
    page.write_text("# Title\n\n[ok](p.md#title) [gone](missing.md) [anchor](p.md#nope)\n")
    found = _LINK.findall(page.read_text())
    assert found == ["p.md#title", "missing.md", "p.md#nope"]
    assert "title" in _anchors(page) and "nope" not in _anchors(page)
    assert _slug("The `sae-rad demo` command, step 2") == "the-sae-rad-demo-command-step-2"


def test_generated_blocks_match_the_committed_results() -> None:
    gen = _generate_module()
    stale = [str(p.relative_to(ROOT)) for p, text in gen.render_all().items() if p.read_text() != text]
    assert not stale, f"generated blocks out of date in {stale}: run `python docs/generate.py`"


def test_generated_blocks_follow_the_results_file(tmp_path: Path) -> None:
    # A changed number in the results file must change the rendered page (so a stale page is caught).
    gen = _generate_module()
    summary = json.loads((DOCS / "results" / "demo_summary.json").read_text())
    page = gen.render_phantom_benchmark(summary)
    summary["reports"]["macro_f1"] = 0.123456
    changed = gen.render_phantom_benchmark(summary)
    assert page != changed and "Macro F1 0.12;" in changed
    text = "a\n<!-- generated:start demo-results -->\nold\n<!-- generated:end demo-results -->\nb\n"
    assert gen.replace_blocks(text, {"demo-results": "new\n"}) == text.replace("old\n", "new\n")
    with pytest.raises(SystemExit, match="demo-headline"):
        gen.replace_blocks(text, {"demo-headline": "x\n"})


def test_committed_results_are_a_full_run() -> None:
    summary = json.loads((DOCS / "results" / "demo_summary.json").read_text())
    assert not summary["config"].get("quick_mode"), "docs/results/demo_summary.json must come from a full run"
    for stage in ("reports", "sae", "interpretation", "steering", "timings_s"):
        assert summary.get(stage), f"docs/results/demo_summary.json lacks {stage!r}"


@pytest.mark.parametrize("path", HAND_WRITTEN, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_lab_notebook_prose(path: Path) -> None:
    # Outside generated blocks: no dated runs, no machine-relative timings, no hand-typed speed-up ratios.
    text = _GENERATED.sub("", path.read_text())
    patterns = [r"\b20\d\d-\d\d-\d\d\b", r"yesterday", r"previous session", r"on this machine",
                r"\b\d+(\.\d+)?×"]
    hits = [m.group(0) for p in patterns for m in re.finditer(p, text, re.I)]
    assert not hits, f"{path.relative_to(ROOT)}: measurement-log wording {hits}; generate numbers from result files"


def test_every_sae_rad_command_named_in_the_docs_exists() -> None:
    from sae_rad_ext.cli import app

    commands = set(typer.main.get_command(app).commands)
    named = {c for p in MARKDOWN for c in re.findall(r"\bsae-rad ([a-z][a-z_-]*)", p.read_text())}
    assert {"demo", "train", "cache", "interpret", "steer", "map", "export"} <= named
    assert named <= commands, f"the docs name commands the CLI lacks: {sorted(named - commands)}"

"""A built wheel holds every module and data file of the tree, and each module imports from it alone."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def tracked_package_files() -> set[str]:
    """Paths as they appear inside the wheel (``sae_rad_ext/...``) for every tracked or new file of the package."""
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "sae_rad_ext", "kernels", "adapters"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout.split()
    names = set()
    for rel in out:
        if rel.endswith((".pyc", ".keep")) or "__pycache__" in rel:
            continue
        if not (ROOT / rel).exists():  # deleted in the work tree, not yet committed
            continue
        names.add(rel if rel.startswith("sae_rad_ext/") else f"sae_rad_ext/{rel}")
    return names


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    res = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-q", "-w", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    (whl,) = out.glob("sae_rad_ext-*.whl")
    return whl


def test_wheel_holds_every_module_and_data_file(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = sorted(tracked_package_files() - names)
    assert not missing, f"not in the wheel (add the package to pyproject's packages / package-data): {missing}"
    assert "sae_rad_ext/kernels/__init__.py" in names and "sae_rad_ext/adapters/hooked.py" in names
    assert not [n for n in names if n.startswith(("kernels/", "adapters/", "tests/"))]


def test_every_module_imports_from_the_wheel_alone(wheel: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-compile", "--target", str(site), str(wheel)],
        check=True, capture_output=True, timeout=300,
    )
    modules = sorted(
        n[: -len(".py")].replace("/", ".").removesuffix(".__init__")
        for n in zipfile.ZipFile(wheel).namelist()
        if n.endswith(".py") and n.startswith("sae_rad_ext/") and not n.endswith("__main__.py")
    )
    code = (
        "import importlib, sys\n"
        f"site = {str(site)!r}\n"
        "bad = []\n"
        f"for m in {modules!r}:\n"
        "    mod = importlib.import_module(m)\n"
        "    if not mod.__file__.startswith(site): bad.append((m, mod.__file__))\n"
        "print('imported', len(" + repr(modules) + "), 'bad', bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    assert f"imported {len(modules)} bad []" in res.stdout


def test_cli_entry_point_and_version() -> None:
    import sae_rad_ext

    out = subprocess.run([sys.executable, "-m", "sae_rad_ext", "--version"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"sae-rad {sae_rad_ext.__version__}"
    out = subprocess.run([sys.executable, "-m", "sae_rad_ext", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for command in ["cache", "train", "demo", "interpret", "steer", "export", "map"]:
        assert f" {command} " in out.stdout, command

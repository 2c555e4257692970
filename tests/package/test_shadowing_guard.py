"""``kernels/`` and ``adapters/`` sit at the repository root but install as ``sae_rad_ext.kernels`` /
``sae_rad_ext.adapters``; imported under their bare names (a checkout's root on ``sys.path``) they stay
empty, so Hugging Face's ``kernels`` and AdapterHub's ``adapters`` are not shadowed by our code."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bare_names_are_empty_and_the_package_names_work() -> None:
    code = (
        f"import sys; sys.path.insert(0, {str(ROOT)!r})\n"
        "import adapters, kernels\n"
        "import sae_rad_ext.adapters as A, sae_rad_ext.kernels as K\n"
        "print(adapters.__all__, kernels.__all__, hasattr(adapters, 'HookedMaira2'), hasattr(kernels, 'sparse_decode'))\n"
        "print('HookedMaira2' in A.__all__, 'sparse_decode' in K.__all__)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.split("\n")[:2] == ["[] [] False False", "True True"]

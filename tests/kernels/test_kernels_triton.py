"""Triton path of sae_rad_ext.kernels under the interpreter (``TRITON_INTERPRET=1``), tiny shapes.

The interpreter must be switched on before triton is imported, so the default test session runs this
module once more in a subprocess with the variable set (``test_triton_interpreter_suite``); inside that
subprocess the cases below run (~4 ms per Triton program, so shapes stay tiny).
"""

import os
import subprocess
import sys

import pytest
import torch
from kernel_cases import (
    check_batch_topk,
    check_matryoshka,
    check_sparse_decode,
    check_sparse_decode_flat,
    check_topk,
)

INTERP = os.environ.get("TRITON_INTERPRET") == "1"
# Run only inside the TRITON_INTERPRET=1 subprocess; tests/conftest.py deselects them elsewhere.
inside = pytest.mark.triton_interpreter_only

pytestmark = pytest.mark.triton


def _has_triton():
    try:
        import importlib.util

        return importlib.util.find_spec("triton") is not None
    except Exception:
        return False


@pytest.mark.skipif(INTERP, reason="this is the driver")
@pytest.mark.skipif(not _has_triton(), reason="triton not installed")
def test_triton_interpreter_suite():
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", __file__, "-q", "-p", "no:cacheprovider", "-x"],
        env=env, capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert " passed" in proc.stdout and "failed" not in proc.stdout.splitlines()[-1]


DTYPES = [torch.float32, torch.bfloat16]


@inside
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(3, 2, 7, 5), (1, 1, 3, 2), (2, 5, 5, 19)])
def test_sparse_decode_triton(shape, dtype):
    check_sparse_decode(*shape, dtype, "triton")


@inside
@pytest.mark.parametrize("dtype", DTYPES)
def test_sparse_decode_flat_triton(dtype):
    check_sparse_decode_flat(5, 3, dtype, "triton")


@inside
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("flat", [False, True])
def test_matryoshka_triton(flat, dtype):
    check_matryoshka(3, 2, 7, 5, [2, 4, 7], dtype, "triton", flat=flat)


@inside
@pytest.mark.parametrize("dtype", DTYPES)
def test_encoders_triton(dtype):
    check_topk(3, 4, 7, 2, dtype, "triton", chunk_size=3)
    check_batch_topk(3, 4, 7, 2, dtype, "triton", chunk_size=3)


@inside
def test_triton_on_cpu_allowed_only_in_interpreter():
    from sae_rad_ext.kernels._checks import resolve_backend

    assert resolve_backend("triton", torch.zeros(1)) == "triton"
    assert resolve_backend(None, torch.zeros(1)) == "torch"

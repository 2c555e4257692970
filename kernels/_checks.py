"""Input validation and backend selection shared by every kernel (cheap: one min/max per index tensor)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence

import torch

BACKENDS = ("torch", "triton")
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def interpreter_on() -> bool:
    """True when Triton runs in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:  # pragma: no cover - depends on platform
        return False
    return True


def resolve_backend(backend: str | None, *tensors: torch.Tensor) -> str:
    """Pick the backend from the tensors' device: CUDA → ``"triton"``, anything else → ``"torch"``.

    An explicit ``backend="triton"`` with CPU tensors is allowed only under ``TRITON_INTERPRET=1``;
    a CPU tensor never reaches a compiled Triton launch.
    """
    ts = [t for t in tensors if isinstance(t, torch.Tensor)]
    devices = {t.device for t in ts}
    if len(devices) > 1:
        raise ValueError(f"all tensors must be on one device, got {sorted(str(d) for d in devices)}")
    device = ts[0].device if ts else torch.device("cpu")
    if backend is None:
        backend = "triton" if device.type == "cuda" else "torch"
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS} or None, got {backend!r}")
    if backend == "triton":
        if not triton_available():
            raise RuntimeError("backend='triton' requested but triton cannot be imported; use backend='torch'")
        if device.type != "cuda" and not interpreter_on():
            raise RuntimeError(
                f"backend='triton' needs CUDA tensors (got {device}); on CPU use backend='torch', "
                "or set TRITON_INTERPRET=1 before importing triton to run the Triton interpreter"
            )
    return backend


def check_float(name: str, t: torch.Tensor, ndim: int | None = None) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be a floating tensor (fp32/fp16/bf16/fp64), got {t.dtype}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(t.shape)}")


def check_index(name: str, t: torch.Tensor, ndim: int | None, upper: int) -> None:
    """Integer tensor with every entry in ``[0, upper)`` (one min/max reduction)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"{name} must be an integer (long) tensor, got {t.dtype}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(t.shape)}")
    if t.numel():
        with single_threaded(t):
            lo, hi = torch.aminmax(t)
        lo, hi = int(lo), int(hi)
        if lo < 0 or hi >= upper:
            raise IndexError(f"{name} has entries in [{lo}, {hi}], outside [0, {upper})")


def check_decoder(W_dec: torch.Tensor, b_dec: torch.Tensor | None) -> tuple[int, int]:
    check_float("W_dec", W_dec, 2)
    d_sae, d_in = W_dec.shape
    if b_dec is not None:
        check_float("b_dec", b_dec, 1)
        if b_dec.shape[0] != d_in:
            raise ValueError(f"b_dec must have shape [{d_in}] (= W_dec.shape[1]), got {tuple(b_dec.shape)}")
    return d_sae, d_in


def check_offsets(offsets: torch.Tensor, nnz: int) -> int:
    """Validate CSR row offsets ``[N+1]`` (0 first, ``nnz`` last, non-decreasing); return N."""
    if not isinstance(offsets, torch.Tensor) or offsets.dtype not in (torch.int64, torch.int32):
        raise TypeError("offsets must be an integer (long) tensor of shape [N+1]")
    if offsets.dim() != 1 or offsets.numel() < 1:
        raise ValueError(f"offsets must be 1-D of length N+1 >= 1, got shape {tuple(offsets.shape)}")
    first, last = int(offsets[0]), int(offsets[-1])
    if first != 0 or last != nnz:
        raise ValueError(f"offsets must start at 0 and end at nnz={nnz}, got {first}..{last}")
    with single_threaded(offsets):
        bad = offsets.numel() > 1 and bool((offsets[1:] < offsets[:-1]).any())
    if bad:
        raise ValueError("offsets must be non-decreasing")
    return offsets.numel() - 1


def group_ends_list(group_ends: Sequence[int] | torch.Tensor, d_sae: int) -> list[int]:
    """Validate cumulative group ends: strictly increasing positive ints, last == d_sae."""
    if isinstance(group_ends, torch.Tensor):
        ends = [int(v) for v in group_ends.reshape(-1).tolist()]
    else:
        ends = [int(v) for v in group_ends]
    if not ends:
        raise ValueError("group_ends must contain at least one group")
    prev = 0
    for e in ends:
        if e <= prev:
            raise ValueError(f"group_ends must be strictly increasing positive ints, got {ends}")
        prev = e
    if ends[-1] != d_sae:
        raise ValueError(f"group_ends[-1] must equal d_sae={d_sae} (cumulative ends), got {ends}")
    return ends


_SMALL = 1 << 22


@contextlib.contextmanager
def single_threaded(t: torch.Tensor | None = None):
    """Run small CPU index bookkeeping (sorts, bincounts, min/max checks) on one thread.

    torch's multi-threaded CPU kernels for such small tensors gain nothing and, when the cores are
    oversubscribed, can be orders of magnitude slower than one thread (its parallel radix sort and
    ``aminmax`` wait on busy worker threads). Tensors above ``_SMALL`` elements and CUDA tensors keep
    torch's own threading.
    """
    if (t is not None and (t.device.type != "cpu" or t.numel() > _SMALL)) or torch.get_num_threads() == 1:
        yield
        return
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def sort1d(x: torch.Tensor, stable: bool = False):
    """``torch.sort`` of a 1-D tensor, single-threaded on CPU (see :func:`single_threaded`)."""
    with single_threaded(x):
        return torch.sort(x, stable=stable)

"""Writing files so that a reader never sees a half-written one, and strict JSON.

Every writer here goes through a temporary file in the target's own folder (named ``.<name>.<random>``,
so a glob for the target's pattern never matches it) and ``os.replace``-s it onto the target: the target
holds either its old content or the complete new one. When the writer raises — an object that does not
serialise, a full disk — the temporary file is removed and the old target is left untouched. Parent
folders are created.

JSON is written strict (RFC 8259): NaN and ±inf become ``null`` (:func:`json_safe`), so any JSON parser
reads the files. Files whose readers need NaN back write their own text with :func:`atomic_write_text`.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np

__all__ = [
    "atomic_dir",
    "atomic_open",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "json_safe",
    "save_figure",
    "to_json",
    "write_json",
    "write_jsonl",
]


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w", **open_kwargs: Any) -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path`` for writing; on a clean exit it replaces ``path``.

    ``mode`` is ``"w"`` or ``"wb"`` (plus ``open_kwargs`` such as ``newline=""``). If the ``with`` body
    raises, the temporary file is deleted, ``path`` keeps its old content and the error propagates.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes whole files: mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, mode, **open_kwargs) as fh:
            yield fh
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see the module docstring); returns ``path``."""
    with atomic_open(path, "wb") as fh:
        fh.write(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` (encoded with ``encoding``) to ``path`` atomically; returns ``path``."""
    return atomic_write_bytes(path, text.encode(encoding))


def atomic_write(path: str | Path, data: str | bytes) -> Path:
    """:func:`atomic_write_text` for ``str`` (UTF-8), :func:`atomic_write_bytes` for ``bytes``."""
    return atomic_write_text(path, data) if isinstance(data, str) else atomic_write_bytes(path, data)


def json_safe(obj: Any) -> Any:
    """``obj`` with every non-finite float (NaN, ±inf) replaced by ``None``, recursively.

    Walks dicts (keys kept), lists and tuples (→ lists); NumPy scalars become Python numbers first
    (``np.float32(nan)`` → ``None``, ``np.int64(3)`` → ``3``). Other values are returned as they are.
    """
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        return json_safe(obj.item())
    return obj


def to_json(obj: Any, *, indent: int | None = None, default: Callable[[Any], Any] | None = None) -> str:
    """Strict JSON text of ``obj`` (non-finite floats → ``null``; ``default`` as in :func:`json.dumps`).

    Output is byte-identical to ``json.dumps(obj, indent=indent, default=default)`` whenever ``obj``
    holds no non-finite float and no NumPy scalar.
    """
    return json.dumps(json_safe(obj), indent=indent, default=default, allow_nan=False)


def write_json(
    path: str | Path, obj: Any, *, indent: int | None = 2, default: Callable[[Any], Any] | None = None
) -> Path:
    """Write ``obj`` as strict JSON (:func:`to_json`, no trailing newline) to ``path`` atomically."""
    return atomic_write_text(path, to_json(obj, indent=indent, default=default))


def write_jsonl(
    path: str | Path, rows: Iterable[Any], *, default: Callable[[Any], Any] | None = None
) -> Path:
    """Write one strict-JSON line per row (each ending in ``\\n``) to ``path`` atomically."""
    return atomic_write_text(path, "".join(to_json(r, default=default) + "\n" for r in rows))


def save_figure(fig: Any, path: str | Path, *, dpi: float | None = None, tight_layout: bool = False) -> Path:
    """Save a matplotlib figure atomically (format from ``path``'s suffix, PNG without one) and close it.

    ``tight_layout`` calls ``fig.tight_layout()`` first; ``dpi`` ``None`` uses matplotlib's setting.
    """
    import io

    import matplotlib.pyplot as plt

    path = Path(path)
    if tight_layout:
        fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format=path.suffix.lstrip(".").lower() or "png", dpi=dpi if dpi is not None else "figure")
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Fill a folder so that ``path`` holds either its old content or the complete new one.

    Yields a fresh temporary folder beside ``path`` (``.<name>.tmp-<random>``). On a normal exit an
    existing ``path`` is removed and the temporary folder is renamed onto it; when the block raises, the
    temporary folder is removed and ``path`` is left untouched. Parent folders are created.
    """
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

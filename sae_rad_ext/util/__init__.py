"""Small shared pieces used across the package: atomic file writing and strict JSON
(:mod:`~sae_rad_ext.util.files`), batching (:mod:`~sae_rad_ext.util.batching`) and the one progress
callback type (:mod:`~sae_rad_ext.util.progress`). Nothing here imports another part of the package."""

from __future__ import annotations

from sae_rad_ext.util.batching import batched
from sae_rad_ext.util.files import (
    atomic_open,
    atomic_write,
    atomic_write_bytes,
    atomic_write_text,
    json_safe,
    to_json,
    write_json,
    write_jsonl,
)
from sae_rad_ext.util.progress import (
    ProgressCallback,
    ProgressEvent,
    RichProgress,
    Ticker,
    prefixed,
    sae_lens_tqdm,
)

__all__ = [
    "ProgressCallback",
    "ProgressEvent",
    "RichProgress",
    "Ticker",
    "atomic_open",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "batched",
    "json_safe",
    "prefixed",
    "sae_lens_tqdm",
    "to_json",
    "write_json",
    "write_jsonl",
]

"""Splitting a stream of items into batches."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from typing import TypeVar

__all__ = ["batched"]

T = TypeVar("T")


def batched(items: Iterable[T], n: int) -> Iterator[list[T]]:
    """Consecutive lists of ``n`` items from ``items`` (the last may be shorter; none when empty).

    Lazy: ``items`` is consumed one batch at a time, so it may be a generator or an endless stream.
    Raises ``ValueError`` when ``n < 1``.
    """
    if n < 1:
        raise ValueError(f"batch_size must be >= 1; got {n}")
    it = iter(items)
    while chunk := list(itertools.islice(it, n)):
        yield chunk

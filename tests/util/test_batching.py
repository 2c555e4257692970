from __future__ import annotations

import itertools

import pytest

from sae_rad_ext.util.batching import batched


@pytest.mark.parametrize(
    ("n_items", "n", "sizes"),
    [(0, 3, []), (1, 3, [1]), (6, 3, [3, 3]), (7, 3, [3, 3, 1]), (5, 1, [1] * 5), (2, 10, [2])],
)
def test_sizes_and_order(n_items, n, sizes):
    out = list(batched(range(n_items), n))
    assert [len(b) for b in out] == sizes
    assert [x for b in out for x in b] == list(range(n_items))


def test_lazy_on_an_endless_stream():
    first = list(itertools.islice(batched(itertools.count(), 4), 2))
    assert first == [[0, 1, 2, 3], [4, 5, 6, 7]]


@pytest.mark.parametrize("n", [0, -2])
def test_rejects_non_positive_batch_size(n):
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        next(batched([1, 2], n))

"""The streaming reader every source shares: an iterator of :class:`Study` with an error policy."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Iterator

from sae_rad_ext.data.read_stats import (
    OnError,
    ReadStats,
    StudyFiltered,
    StudyReadError,
    check_on_error,
)
from sae_rad_ext.data.study import Study

StudyThunk = Callable[[], Study]
"""Builds one study when called (decodes its images); raises StudyReadError or StudyFiltered."""


class StudyReader(Iterator[Study]):
    """An iterator of studies. Nothing is decoded before ``next()`` asks for it.

    Subclasses implement :meth:`_candidates` (cheap: ids and paths, no pixels) yielding
    ``(study_id, thunk)`` pairs; the base class applies ``on_error`` and ``max_studies`` and keeps
    :attr:`stats`; ``shard=(rank, world_size)`` keeps every ``world_size``-th candidate from ``rank`` on
    (disjoint shards for ``torchrun`` ranks; ``max_studies`` then counts per shard). A reader is a one-pass iterator like a generator; :meth:`reopen` gives a fresh pass
    (sharing any index the first pass built).
    """

    kind: str = "studies"

    def __init__(
        self,
        *,
        on_error: OnError = "raise",
        max_studies: int | None = None,
        shard: tuple[int, int] | None = None,
    ):
        self.on_error: OnError = check_on_error(on_error)
        if max_studies is not None and max_studies < 0:
            raise ValueError(f"max_studies must be >= 0 or None, got {max_studies}")
        if shard is not None:
            rank, world = shard
            if not (world >= 1 and 0 <= rank < world):
                raise ValueError(f"shard must be (rank, world_size) with 0 <= rank < world_size, got {shard}")
        self.max_studies = max_studies
        self.shard = shard
        self.stats = ReadStats()
        self._gen: Iterator[Study] | None = None

    # -- to implement ---------------------------------------------------------------------------
    def _candidates(self) -> Iterator[tuple[str, StudyThunk]]:
        raise NotImplementedError

    def count(self) -> int:
        """Cheap upper bound on the studies this reader yields (no image is decoded)."""
        raise NotImplementedError

    # -- iterator protocol ----------------------------------------------------------------------
    def __iter__(self) -> StudyReader:
        return self

    def __next__(self) -> Study:
        if self._gen is None:
            self._gen = self._run()
        return next(self._gen)

    def _run(self) -> Iterator[Study]:
        for i, (study_id, build) in enumerate(self._candidates()):
            if self.shard is not None and i % self.shard[1] != self.shard[0]:
                continue
            if self.max_studies is not None and self.stats.n_read >= self.max_studies:
                return
            try:
                study = build()
            except StudyFiltered as f:
                self.stats.filter(f.reason)
                continue
            except StudyReadError as err:
                err.with_study(study_id)
                if self.on_error == "raise":
                    raise
                self.stats.skip(err)
                continue
            self.stats.n_read += 1
            yield study

    def reopen(self) -> StudyReader:
        """A fresh pass over the same source with the same options (new :attr:`stats`)."""
        new = copy.copy(self)
        new.stats = ReadStats(max_examples=self.stats.max_examples)
        new._gen = None
        return new

    def __repr__(self) -> str:
        return f"{type(self).__name__}(kind={self.kind!r}, on_error={self.on_error!r}, read={self.stats.n_read})"


class IterReader(StudyReader):
    """Any iterable of studies (e.g. a generator of phantoms) as a :class:`StudyReader`.

    ``factory()`` returns a fresh iterable per pass (so :meth:`reopen` works); ``count`` (optional) answers
    :meth:`count` without iterating. Gives plain generators ``stats``, ``max_studies`` and ``shard``.
    """

    def __init__(
        self,
        factory: Callable[[], Iterable[Study]],
        *,
        count: int | Callable[[], int] | None = None,
        kind: str = "iterable",
        on_error: OnError = "raise",
        max_studies: int | None = None,
        shard: tuple[int, int] | None = None,
    ):
        super().__init__(on_error=on_error, max_studies=max_studies, shard=shard)
        self.factory, self._count, self.kind = factory, count, kind

    def _candidates(self) -> Iterator[tuple[str, StudyThunk]]:
        for study in self.factory():
            yield study.study_id, (lambda study=study: study)

    def count(self) -> int:
        if self._count is None:
            n = sum(1 for _ in self.factory())
        else:
            n = self._count() if callable(self._count) else int(self._count)
        if self.shard is not None:
            n = len(range(self.shard[0], n, self.shard[1]))
        return n if self.max_studies is None else min(n, self.max_studies)

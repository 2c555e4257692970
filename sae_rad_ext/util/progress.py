"""One progress-callback type, a rich display that consumes it, and SAELens's tqdm bars routed through it.

A long-running library function takes ``progress: ProgressCallback | None`` and calls it with a
:class:`ProgressEvent` after each unit of work (a batch of studies, an optimisation step). ``done`` is
cumulative within the stage, so a callback never has to keep its own count; a function with several
stages (or several counters, like studies and token positions) reports each under its own ``stage``
name. :class:`Ticker` is the counting side for library code; :class:`RichProgress` is the display side.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ProgressCallback", "ProgressEvent", "RichProgress", "Ticker", "prefixed", "sae_lens_tqdm"]


@dataclass(frozen=True)
class ProgressEvent:
    """Where one stage of a long-running function stands."""

    stage: str
    """What is progressing (``"scan studies"``, ``"train"``); a display keeps one bar per stage."""
    done: int
    """Units finished so far in this stage (cumulative, never a delta)."""
    total: int | None = None
    """Units in the stage, ``None`` when unknown (streams)."""
    metrics: Mapping[str, float] = field(default_factory=dict)
    """Latest values to show beside the bar (``{"loss": 0.41}``); empty for most stages."""


ProgressCallback = Callable[[ProgressEvent], None]
"""What every library function's ``progress`` parameter takes."""


class Ticker:
    """Counts the units of one stage and reports every advance to ``progress`` (a no-op without one).

    ``tick = Ticker(progress, "scan studies", len(studies))`` then ``tick(len(batch))`` after each batch;
    ``tick(1, loss=0.4)`` attaches metrics to the event.
    """

    def __init__(self, progress: ProgressCallback | None, stage: str, total: int | None = None) -> None:
        self.progress, self.stage, self.total, self.done = progress, stage, total, 0

    def __call__(self, n: int = 1, **metrics: float) -> None:
        self.done += int(n)
        if self.progress is not None:
            self.progress(ProgressEvent(self.stage, self.done, self.total, metrics))


class _Prefixed:
    def __init__(self, progress: ProgressCallback, prefix: str) -> None:
        self.progress, self.prefix = progress, prefix

    def __call__(self, event: ProgressEvent) -> None:
        self.progress(ProgressEvent(f"{self.prefix}: {event.stage}", event.done, event.total, event.metrics))


def prefixed(progress: ProgressCallback | None, prefix: str) -> ProgressCallback | None:
    """``progress`` with every event's stage renamed ``"<prefix>: <stage>"`` (``None`` stays ``None``).

    A caller that hands one display to several library functions uses it to keep their stages apart
    (``prefixed(bar, "knowledge map")`` shows ``knowledge map: probes``).
    """
    return None if progress is None else _Prefixed(progress, prefix)


class RichProgress:
    """A rich progress display with one bar per stage; the instance itself is a :data:`ProgressCallback`.

    Bars appear on a stage's first event, or earlier with :meth:`add` (to set a description, a unit for
    the rate column, a total the events do not carry, or units already done before this run).
    ``enabled=False`` shows nothing and accepts events. Use as a context manager (starts/stops the display).
    """

    def __init__(self, *, enabled: bool = True, console: Any = None, description_width: int = 28) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.enabled = enabled
        self.console = console or Console()
        self.progress = Progress(
            TextColumn(f"[bold]{{task.description:<{description_width}}}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            console=self.console,
            disable=not enabled,
            transient=False,
        )
        self._bars: dict[str, tuple[Any, str, int, float]] = {}  # stage → (task, unit, offset, start)

    def add(
        self,
        stage: str,
        description: str | None = None,
        total: int | None = None,
        *,
        unit: str = "",
        completed: int = 0,
    ) -> None:
        """Show a bar for ``stage`` now. ``unit`` adds a rate column (``"tok"`` → ``1,234 tok/s``);
        ``completed`` units count as done before this run (shown, not in the rate)."""
        task = self.progress.add_task(description or stage, total=total, completed=completed, info="")
        self._bars[stage] = (task, unit, completed, time.monotonic())

    def __call__(self, event: ProgressEvent) -> None:
        if event.stage not in self._bars:
            self.add(event.stage, total=event.total)
        task, unit, offset, start = self._bars[event.stage]
        info = "  ".join(f"{k} {v:.3g}" for k, v in event.metrics.items())
        if unit:
            rate = event.done / max(time.monotonic() - start, 1e-9)
            info = f"{rate:,.0f} {unit}/s" + (f"  {info}" if info else "")
        kw: dict[str, Any] = {"completed": offset + event.done, "info": info}
        if event.total is not None:
            kw["total"] = offset + event.total if offset else event.total
        self.progress.update(task, **kw)

    def __enter__(self) -> RichProgress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.__exit__(*exc)


class _CallbackTqdm:
    """The part of tqdm's interface SAELens uses, reporting to a :data:`ProgressCallback` (or nothing)."""

    def __init__(self, iterable: Iterable[Any] | None = None, *args: Any, progress: ProgressCallback | None = None,
                 total: int | None = None, desc: str | None = None, **kwargs: Any) -> None:
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.iterable, self.total, self.n = iterable, total, 0
        self._tick = Ticker(progress, f"SAELens: {desc or 'progress'}", total)

    def __iter__(self) -> Iterator[Any]:
        for x in self.iterable or ():
            yield x
            self.update(1)

    def update(self, n: int = 1) -> None:
        self.n += n
        self._tick(n)

    def set_description(self, *args: Any, **kwargs: Any) -> None:
        pass

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        pass

    def refresh(self, *args: Any, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> _CallbackTqdm:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


_SAE_LENS_TQDM_MODULES = (
    "sae_lens.training.sae_trainer",
    "sae_lens.training.activation_scaler",
    "sae_lens.training.activations_store",
)


@contextlib.contextmanager
def sae_lens_tqdm(progress: ProgressCallback | None = None) -> Iterator[None]:
    """Inside the block SAELens's own tqdm bars (trainer, activation scaler, store) draw nothing;
    with ``progress`` their advances arrive there as events (stage ``"SAELens: <bar description>"``).

    The bars' ``tqdm`` names are swapped in SAELens's modules for the block and restored after it.
    """
    import importlib
    import importlib.util

    mods = [importlib.import_module(name) for name in _SAE_LENS_TQDM_MODULES if importlib.util.find_spec(name)]
    mods = [m for m in mods if hasattr(m, "tqdm")]
    old = [m.tqdm for m in mods]

    def make(*args: Any, **kwargs: Any) -> _CallbackTqdm:
        return _CallbackTqdm(*args, progress=progress, **kwargs)

    for m in mods:
        m.tqdm = make
    try:
        yield
    finally:
        for m, t in zip(mods, old, strict=True):
            m.tqdm = t

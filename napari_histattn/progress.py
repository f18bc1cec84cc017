"""Progress reports yielded by long-running generators.

Long work (synthesis, training, inference) is written as a generator that
yields :class:`Progress` once per batch and *returns* its result. The CLI drains
it with a progress bar, the napari widget wraps it in ``thread_worker``, tests
drain it synchronously with :func:`run_to_completion`. Cancellation takes effect
at the next ``yield``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Progress:
    """One progress report.

    Attributes
    ----------
    stage
        Short machine-friendly stage name, for example ``"tiles"`` or ``"epoch"``.
    done
        Units of work finished in this stage.
    total
        Units of work in this stage, or ``None`` when unknown.
    message
        Optional human-readable detail.
    """

    stage: str
    done: int
    total: int | None = None
    message: str = ""

    @property
    def fraction(self) -> float | None:
        """``done / total`` in [0, 1], or ``None`` when the total is unknown."""
        if not self.total:
            return None
        return min(1.0, max(0.0, self.done / self.total))


ProgressGen = Generator[Progress, None, T]


def run_to_completion(
    gen: Generator[Progress, None, T],
    callback: Callable[[Progress], None] | None = None,
) -> T:
    """Drain a progress generator and return its result.

    Parameters
    ----------
    gen
        A generator that yields :class:`Progress` and returns a value.
    callback
        Called with each progress report, if given.
    """
    while True:
        try:
            report = next(gen)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        if callback is not None:
            callback(report)


def run_with_tqdm(gen: Generator[Progress, None, T], disable: bool = False) -> T:
    """Drain a progress generator, drawing one tqdm bar per stage."""
    from tqdm.auto import tqdm

    bar = None
    stage = None
    try:
        while True:
            try:
                report = next(gen)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]
            if report.stage != stage:
                if bar is not None:
                    bar.close()
                stage = report.stage
                bar = tqdm(total=report.total, desc=stage, disable=disable, leave=False)
            assert bar is not None
            if report.total is not None and bar.total != report.total:
                bar.total = report.total
            bar.n = report.done
            if report.message:
                bar.set_postfix_str(report.message, refresh=False)
            bar.refresh()
    finally:
        if bar is not None:
            bar.close()


def timing_text(started: float, fraction: float | None) -> str:
    """`` (12 s, about 30 s left)``: the time since ``started`` (``time.monotonic()``) and,
    once a tenth of the work is done, the time left at the pace so far."""
    elapsed = time.monotonic() - started
    text = f" ({_seconds(elapsed)}"
    if fraction is not None and 0.1 <= fraction < 1.0:
        text += f", about {_seconds(elapsed * (1.0 - fraction) / fraction)} left"
    return text + ")"


def _seconds(value: float) -> str:
    return f"{value:.0f} s" if value < 90 else f"{value / 60:.1f} min"

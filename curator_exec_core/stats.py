"""Stage counts: the one envelope counts travel in, and the run's one stats object.

Every call of the core's runner ends with :class:`Counts` (tasks in, outputs, new failure
records) for its stage. Wherever the call ran, those counts reach the driver's
:class:`RunStats` (the run owns one) exactly once: in the driver process the runner adds
them itself; a worker process returns them with its outputs (a Ray backend's chunk
carries them) and the backend adds them on the driver. ``result.metrics["stages"]`` is
read from the :class:`RunStats`; progress observers watch it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import NamedTuple, TypedDict

__all__ = ["Counts", "StageCounts", "StageMetrics", "RunStats", "add_counts", "stage_metrics_keys"]


class Counts(NamedTuple):
    """What one stage did in one call (or in sum): tasks consumed, outputs made, new failure
    records. Failure records passing through a stage are counted nowhere."""

    tasks_in: int = 0
    tasks_out: int = 0
    tasks_failed: int = 0

    def plus(self, other: Sequence[int]) -> Counts:
        return Counts(self[0] + other[0], self[1] + other[1], self[2] + other[2])


class StageMetrics(TypedDict):
    """One stage's entry of ``result.metrics["stages"]``: its index in the pipeline and its counts."""

    index: int
    tasks_in: int
    tasks_out: int
    tasks_failed: int


#: counts of several stages (a fused chain of stages, a whole chunk's history): stage index -> counts
StageCounts = dict[int, Counts]


def add_counts(into: StageCounts, index: int, counts: Sequence[int]) -> StageCounts:
    """Fold ``counts`` of stage ``index`` into ``into`` (returned, for chaining)."""
    old = into.get(index)
    into[index] = Counts(*counts) if old is None else old.plus(counts)
    return into


def stage_metrics_keys(names: Sequence[str]) -> list[str]:
    """The keys of ``result.metrics["stages"]``: the stage names, with ``#<position>`` appended to
    every stage whose name another stage of the pipeline shares (``add#0``, ``add#2``)."""
    return [f"{n}#{i}" if names.count(n) > 1 else n for i, n in enumerate(names)]


class RunStats:
    """Per-stage totals of one run, on the driver. Thread-safe; ``listener(index)`` is called after
    every change (the progress reporter throttles what it sends on)."""

    def __init__(self, stage_names: Sequence[str]) -> None:
        self.names = list(stage_names)
        n = len(self.names)
        self._in, self._out, self._failed = [0] * n, [0] * n, [0] * n
        self.resumed: list[int] = [0] * n
        self._lock = threading.Lock()
        self._listeners: list[Callable[[int], None]] = []

    @property
    def counts(self) -> list[Counts]:
        """Each stage's totals so far."""
        with self._lock:
            return [Counts(a, b, c) for a, b, c in zip(self._in, self._out, self._failed, strict=True)]

    def listen(self, listener: Callable[[int], None]) -> None:
        self._listeners.append(listener)

    def add(self, index: int, counts: Sequence[int]) -> None:
        """Stage ``index`` did ``counts`` (a :class:`Counts` or an ``(in, out, failed)`` triple)."""
        n_in, n_out, n_failed = counts
        if not (n_in or n_out or n_failed):
            return
        with self._lock:
            self._in[index] += n_in
            self._out[index] += n_out
            self._failed[index] += n_failed
        for listener in self._listeners:
            listener(index)

    def add_all(self, counts: Mapping[int, Sequence[int]] | Iterable[tuple[int, Sequence[int]]]) -> None:
        """Several stages' counts at once (what a chunk carries back)."""
        items = counts.items() if isinstance(counts, Mapping) else counts
        for index, c in items:
            self.add(index, c)

    def resume(self, index: int, n: int) -> None:
        """``n`` tasks into stage ``index`` were finished by an earlier run (a checkpoint)."""
        with self._lock:
            self.resumed[index] += n
        for listener in self._listeners:
            listener(index)

    def stage(self, index: int) -> Counts:
        """Stage ``index``'s totals so far."""
        with self._lock:
            return Counts(self._in[index], self._out[index], self._failed[index])

    def metrics(self) -> dict[str, StageMetrics]:
        """``result.metrics["stages"]``: per stage key, its index and counts."""
        counts = self.counts
        return {key: StageMetrics(index=i, tasks_in=c.tasks_in, tasks_out=c.tasks_out, tasks_failed=c.tasks_failed)
                for i, (key, c) in enumerate(zip(stage_metrics_keys(self.names), counts, strict=True))}

"""Stage counts: the one envelope counts travel in, and the run's one stats object.

Every call of the core's runner ends with :class:`Counts` (tasks in, outputs, new failure
records) for its stage. Wherever the call ran, those counts reach the driver's
:class:`RunStats` (the run owns one) exactly once: in the driver process the runner adds
them itself; a worker process returns them with its outputs (a Ray backend's chunk
carries them) and the backend adds them on the driver. ``result.metrics["stages"]`` is
read from the :class:`RunStats`; progress observers watch it.

Statistics travel in the same envelope: a call's :class:`Counts` may carry a :class:`CallPerf` (the
worker, the call's wall and CPU seconds, the stage's :meth:`~curator_exec_core.stages.ProcessingStage.record`
counters, the first errors of the call's new failures). :class:`RunStats` folds them per stage and
per worker into mergeable :class:`Summary` figures (count, sum, mean, min, max, std):
``result.metrics["stats"]``, ``DIR/stats.json`` with a checkpoint, and the periodic ``"stats"``
progress event.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple, TypedDict

__all__ = ["Counts", "CallPerf", "Summary", "WorkerStats", "StageStats", "StageCounts", "StageMetrics", "RunStats",
           "add_counts", "stage_metrics_keys", "FIRST_ERRORS"]

#: how many errors of new failures a run keeps (for messages such as the failure budget's)
FIRST_ERRORS = 5


class Summary:
    """Count, sum, min, max, mean and (population) standard deviation of a series of values,
    mergeable (Chan et al.'s parallel variance): the figures of many workers merge exactly into the
    figures of all their values."""

    __slots__ = ("n", "total", "lo", "hi", "m2")

    def __init__(self, n: int = 0, total: float = 0.0, lo: float = math.inf, hi: float = -math.inf,
                 m2: float = 0.0) -> None:
        self.n, self.total, self.lo, self.hi, self.m2 = n, total, lo, hi, m2

    @classmethod
    def of(cls, value: float) -> Summary:
        return cls(1, value, value, value, 0.0)

    @property
    def mean(self) -> float:
        return self.total / self.n if self.n else 0.0

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / self.n) if self.n else 0.0

    def add(self, value: float) -> None:
        n = self.n + 1
        total = self.total
        delta = value - (total / self.n if self.n else 0.0)
        self.total = total = total + value
        self.m2 += delta * (value - total / n)
        self.n = n
        if value < self.lo:
            self.lo = value
        if value > self.hi:
            self.hi = value

    def merge(self, other: Summary) -> Summary:
        """Fold ``other`` in (returns self)."""
        if not other.n:
            return self
        if not self.n:
            self.n, self.total, self.lo, self.hi, self.m2 = other.n, other.total, other.lo, other.hi, other.m2
            return self
        n = self.n + other.n
        delta = other.mean - self.mean
        self.m2 += other.m2 + delta * delta * self.n * other.n / n
        self.n, self.total = n, self.total + other.total
        self.lo, self.hi = min(self.lo, other.lo), max(self.hi, other.hi)
        return self

    def copy(self) -> Summary:
        return Summary(self.n, self.total, self.lo, self.hi, self.m2)

    def as_dict(self) -> dict[str, float]:
        empty = not self.n
        return {"count": self.n, "sum": self.total, "mean": self.mean, "min": 0.0 if empty else self.lo,
                "max": 0.0 if empty else self.hi, "std": self.std}

    @classmethod
    def from_dict(cls, d: Mapping[str, float]) -> Summary:
        n = int(d["count"])
        return cls(n, float(d["sum"]), float(d["min"]), float(d["max"]), float(d["std"]) ** 2 * n) if n else cls()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Summary) and self.as_dict() == other.as_dict()

    def __repr__(self) -> str:
        return f"Summary(n={self.n}, sum={self.total:g}, min={self.lo:g}, max={self.hi:g}, std={self.std:g})"

    def __getstate__(self) -> tuple[int, float, float, float, float]:
        return self.n, self.total, self.lo, self.hi, self.m2

    def __setstate__(self, state: tuple[int, float, float, float, float]) -> None:
        self.n, self.total, self.lo, self.hi, self.m2 = state


class CallPerf(NamedTuple):
    """What one call of a stage on one worker took: the worker, the call's counts, its wall and CPU
    seconds, the stage's recorded counters, and ``"<task id>: <error>"`` of (at most
    :data:`FIRST_ERRORS`) new failure records it made."""

    worker: str
    tasks_in: int
    tasks_out: int
    tasks_failed: int
    wall: float
    cpu: float
    counters: dict[str, Summary] | None = None
    errors: tuple[str, ...] = ()


class WorkerStats:
    """One worker's figures for one stage: its tasks, a :class:`Summary` of its calls' wall and CPU
    seconds, its recorded counters."""

    __slots__ = ("tasks_in", "tasks_out", "tasks_failed", "process_s", "cpu_s", "counters")

    def __init__(self) -> None:
        self.tasks_in = self.tasks_out = self.tasks_failed = 0
        self.process_s, self.cpu_s = Summary(), Summary()
        self.counters: dict[str, Summary] = {}

    def fold(self, call: CallPerf) -> None:
        self.add(call.tasks_in, call.tasks_out, call.tasks_failed, call.wall, call.cpu, call.counters)

    def add(self, n_in: int, n_out: int, n_failed: int, wall: float, cpu: float,
            counters: Mapping[str, Summary] | None) -> None:
        """One call's figures (what :meth:`fold` takes from a :class:`CallPerf`)."""
        self.tasks_in += n_in
        self.tasks_out += n_out
        self.tasks_failed += n_failed
        self.process_s.add(wall)
        self.cpu_s.add(cpu)
        if counters:
            _merge_counters(self.counters, counters)

    def merge(self, other: WorkerStats) -> None:
        self.tasks_in += other.tasks_in
        self.tasks_out += other.tasks_out
        self.tasks_failed += other.tasks_failed
        self.process_s.merge(other.process_s)
        self.cpu_s.merge(other.cpu_s)
        _merge_counters(self.counters, other.counters)

    def as_dict(self) -> dict[str, Any]:
        return {"tasks_in": self.tasks_in, "tasks_out": self.tasks_out, "tasks_failed": self.tasks_failed,
                "process_s": self.process_s.as_dict(), "cpu_s": self.cpu_s.as_dict(),
                "counters": {k: v.as_dict() for k, v in sorted(self.counters.items())}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> WorkerStats:
        w = cls()
        w.tasks_in, w.tasks_out, w.tasks_failed = int(d["tasks_in"]), int(d["tasks_out"]), int(d["tasks_failed"])
        w.process_s, w.cpu_s = Summary.from_dict(d["process_s"]), Summary.from_dict(d["cpu_s"])
        w.counters = {k: Summary.from_dict(v) for k, v in d.get("counters", {}).items()}
        return w

    def __getstate__(self) -> tuple[Any, ...]:
        return (self.tasks_in, self.tasks_out, self.tasks_failed, self.process_s, self.cpu_s, self.counters)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        (self.tasks_in, self.tasks_out, self.tasks_failed, self.process_s, self.cpu_s, self.counters) = state


def _merge_counters(into: dict[str, Summary], more: Mapping[str, Summary]) -> None:
    for name, summary in more.items():
        mine = into.get(name)
        if mine is None:
            into[name] = summary.copy()
        else:
            mine.merge(summary)


class StageStats:
    """One stage's figures per worker (mergeable: the figures of several calls, chunks or runs), and
    the first errors of its new failure records."""

    __slots__ = ("workers", "errors")

    def __init__(self) -> None:
        self.workers: dict[str, WorkerStats] = {}
        self.errors: list[str] = []

    def fold(self, perf: Perf) -> StageStats:
        """Fold a call's :class:`CallPerf` or another :class:`StageStats` in (returns self)."""
        if isinstance(perf, StageStats):
            for worker, stats in perf.workers.items():
                self.worker(worker).merge(stats)
            errors = perf.errors
        else:
            self.worker(perf.worker).fold(perf)
            errors = list(perf.errors)
        self.note_errors(errors)
        return self

    def worker(self, name: str) -> WorkerStats:
        """The figures of worker ``name`` (new, empty ones the first time)."""
        mine = self.workers.get(name)
        if mine is None:
            mine = self.workers[name] = WorkerStats()
        return mine

    def note_errors(self, errors: Sequence[str]) -> None:
        """Keep the first :data:`FIRST_ERRORS` errors."""
        if errors and len(self.errors) < FIRST_ERRORS:
            self.errors.extend(errors[:FIRST_ERRORS - len(self.errors)])

    def merged(self) -> WorkerStats:
        """Every worker's figures merged."""
        total = WorkerStats()
        for stats in self.workers.values():
            total.merge(stats)
        return total

    def as_dict(self) -> dict[str, Any]:
        """``result.metrics["stats"][stage]``: the merged figures, the number of workers, and each worker's."""
        return {"workers": len(self.workers), **self.merged().as_dict(),
                "per_worker": {w: s.as_dict() for w, s in sorted(self.workers.items())}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> StageStats:
        stats = cls()
        stats.workers = {w: WorkerStats.from_dict(s) for w, s in d.get("per_worker", {}).items()}
        return stats

    def __getstate__(self) -> tuple[Any, ...]:
        return self.workers, self.errors

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        self.workers, self.errors = state


#: what a :class:`Counts` may carry besides the three counts: one call's figures, or many merged
Perf = CallPerf | StageStats


class Counts(NamedTuple):
    """What one stage did in one call (or in sum): tasks consumed, outputs made, new failure
    records (failure records passing through a stage are counted nowhere); ``perf``: the call's
    figures (:class:`CallPerf`, or a :class:`StageStats` of several calls), if measured."""

    tasks_in: int = 0
    tasks_out: int = 0
    tasks_failed: int = 0
    perf: Perf | None = None

    def plus(self, other: Sequence[Any]) -> Counts:
        perf = self.perf
        more = other[3] if len(other) > 3 else None
        if more is not None:  # a new StageStats: neither side's figures are changed
            perf = StageStats().fold(more) if perf is None else StageStats().fold(perf).fold(more)
        return Counts(self[0] + other[0], self[1] + other[1], self[2] + other[2], perf)


class StageMetrics(TypedDict):
    """One stage's entry of ``result.metrics["stages"]``: its index in the pipeline and its counts."""

    index: int
    tasks_in: int
    tasks_out: int
    tasks_failed: int


#: counts of several stages (a fused chain of stages, a whole chunk's history): stage index -> counts
StageCounts = dict[int, Counts]


def add_counts(into: StageCounts, index: int, counts: Sequence[Any]) -> StageCounts:
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
        self._perf = [StageStats() for _ in range(n)]
        #: the figures of earlier runs of this checkpoint (``stats.json``), merged into :meth:`perf_metrics`
        self.earlier: dict[int, StageStats] = {}
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

    def add(self, index: int, counts: Sequence[Any]) -> None:
        """Stage ``index`` did ``counts`` (a :class:`Counts` or an ``(in, out, failed)`` triple)."""
        n_in, n_out, n_failed = counts[0], counts[1], counts[2]
        perf = counts[3] if len(counts) > 3 else None
        if not (n_in or n_out or n_failed or perf):
            return
        with self._lock:
            self._in[index] += n_in
            self._out[index] += n_out
            self._failed[index] += n_failed
            if perf is not None:
                self._perf[index].fold(perf)
        for listener in self._listeners:
            listener(index)

    def add_call(self, index: int, worker: str, n_in: int, n_out: int, n_failed: int, wall: float, cpu: float,
                 counters: dict[str, Summary] | None, errors: tuple[str, ...]) -> None:
        """One call of stage ``index`` in this process: :meth:`add` of its counts and its
        :class:`CallPerf` figures, without building either (the runner's hot path)."""
        with self._lock:
            self._in[index] += n_in
            self._out[index] += n_out
            self._failed[index] += n_failed
            stage = self._perf[index]
            stage.worker(worker).add(n_in, n_out, n_failed, wall, cpu, counters)
            if errors:
                stage.note_errors(errors)
        for listener in self._listeners:
            listener(index)

    @property
    def failed(self) -> int:
        """New failure records so far, all stages."""
        with self._lock:
            return sum(self._failed)

    def first_errors(self, limit: int = FIRST_ERRORS) -> list[str]:
        """``"<stage>: <task id>: <error>"`` of the first failures that carried their error."""
        out: list[str] = []
        with self._lock:
            for name, perf in zip(self.names, self._perf, strict=True):
                out += [f"{name}: {e}" for e in perf.errors]
        return out[:limit]

    def perf_metrics(self) -> dict[str, dict[str, Any]]:
        """``result.metrics["stats"]``: per stage key, the merged figures and each worker's
        (:meth:`StageStats.as_dict`), including earlier runs of a resumed checkpoint."""
        with self._lock:
            perf = [StageStats().fold(p) for p in self._perf]
        for index, earlier in self.earlier.items():
            if index < len(perf):
                perf[index].fold(earlier)
        return {key: p.as_dict() for key, p in zip(stage_metrics_keys(self.names), perf, strict=True)}

    def add_all(self, counts: Mapping[int, Sequence[Any]] | Iterable[tuple[int, Sequence[Any]]]) -> None:
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

    def totals(self) -> StageCounts:
        """Every stage that did something: its counts with its figures (a :class:`StageStats`), what a
        worker process that ran many calls (a batch job's element) sends back to the driver's
        :meth:`add_all`."""
        with self._lock:
            return {i: Counts(self._in[i], self._out[i], self._failed[i], StageStats().fold(self._perf[i]))
                    for i in range(len(self.names))
                    if self._in[i] or self._out[i] or self._failed[i] or self._perf[i].workers}

    def stage(self, index: int) -> Counts:
        """Stage ``index``'s totals so far."""
        with self._lock:
            return Counts(self._in[index], self._out[index], self._failed[index])

    def metrics(self) -> dict[str, StageMetrics]:
        """``result.metrics["stages"]``: per stage key, its index and counts."""
        counts = self.counts
        return {key: StageMetrics(index=i, tasks_in=c.tasks_in, tasks_out=c.tasks_out, tasks_failed=c.tasks_failed)
                for i, (key, c) in enumerate(zip(stage_metrics_keys(self.names), counts, strict=True))}

"""Progress events sent to ``curator_exec_progress`` observers, and the reporter that sends them.

The :class:`ProgressReporter` watches the run's :class:`~curator_exec_core.stats.RunStats`
and turns changes into throttled ``stage_progress`` events (at most one per stage every
``min_interval`` seconds, plus a final one). It never holds counts of its own: metrics are
read from the stats, so how progress is displayed cannot change what a run reports.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs

from curator_exec_core.stats import RunStats

if TYPE_CHECKING:  # pragma: no cover
    from curator_exec_core.executor import BaseExecutor

__all__ = ["ProgressEvent", "ProgressReporter"]


@attrs.frozen
class ProgressEvent:
    """One progress event.

    ``kind``: ``"run_started"`` (``stages`` lists the stage names, ``total`` the source tasks),
    ``"stage_progress"`` (``stage``/``index``: ``tasks_in`` consumed, ``tasks_out`` produced and
    ``tasks_failed`` failed in this stage so far, cumulative; failure records are never counted as
    outputs; ``tasks_resumed``: tasks of a resumed run that the checkpoint had already finished,
    counted as done), ``"stats"`` (every ``progress_interval`` seconds and once at the end:
    ``stats`` is a snapshot of every stage's counts and figures, see
    :mod:`curator_exec_core.statslog`), or ``"run_finished"`` (``error`` set if it failed; ``seconds``).
    """

    kind: str
    executor: BaseExecutor
    run_id: str
    stage: str = ""
    index: int = -1
    tasks_in: int = 0
    tasks_out: int = 0
    tasks_failed: int = 0
    tasks_resumed: int = 0
    stages: tuple[str, ...] = ()
    total: int | None = None
    seconds: float = 0.0
    error: BaseException | None = None
    stats: dict[str, Any] | None = None


class ProgressReporter:
    """Sends ``stage_progress`` events for the changes of ``stats``, throttled per stage."""

    def __init__(self, executor: BaseExecutor, run_id: str, stats: RunStats,
                 emit: Callable[[ProgressEvent], None], min_interval: float = 0.1) -> None:
        self.executor = executor
        self.run_id = run_id
        self.stats = stats
        self.emit = emit
        self.min_interval = min_interval
        n = len(stats.names)
        self._last = [0.0] * n
        self._dirty = [False] * n
        stats.listen(self._changed)

    def _changed(self, index: int) -> None:
        # no lock: at worst two threads both send an event (the counts are read from the stats)
        now = time.monotonic()
        if now - self._last[index] >= self.min_interval:
            self._last[index], self._dirty[index] = now, False
            self._send(index)
        else:
            self._dirty[index] = True

    def _send(self, index: int) -> None:
        c, stats = self.stats.stage(index), self.stats
        self.emit(ProgressEvent(kind="stage_progress", executor=self.executor, run_id=self.run_id,
                                stage=stats.names[index], index=index, tasks_in=c.tasks_in, tasks_out=c.tasks_out,
                                tasks_failed=c.tasks_failed, tasks_resumed=stats.resumed[index]))

    def flush(self) -> None:
        """Send the final counts of every stage that changed since its last event."""
        dirty = [i for i, d in enumerate(self._dirty) if d]
        for i in dirty:
            self._dirty[i] = False
            self._send(i)

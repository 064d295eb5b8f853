"""Progress events sent to ``curator_exec_progress`` observers, and the driver-side reporter."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import attrs

if TYPE_CHECKING:  # pragma: no cover
    from curator_exec_core.executor import BaseExecutor

__all__ = ["ProgressEvent", "ProgressReporter"]


@attrs.frozen
class ProgressEvent:
    """One progress event.

    ``kind``: ``"run_started"`` (``stages`` lists the stage names), ``"stage_progress"``
    (``stage``/``index``: ``tasks_in`` consumed, ``tasks_out`` produced and
    ``tasks_failed`` failed in this stage so far, cumulative; failure records are
    never counted as outputs; ``tasks_resumed``: tasks of a resumed run that the checkpoint had
    already finished, counted as done), or ``"run_finished"`` (``error`` set if it failed; ``seconds``).
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


class ProgressReporter:
    """Aggregates per-stage counts on the driver and emits throttled events.

    Backends call :meth:`add` when they learn that a stage consumed/produced
    tasks (in-process backends get this for free through ``ManagedStage``);
    events go out at most every ``min_interval`` seconds per stage, and
    :meth:`flush` sends the final counts.
    """

    def __init__(self, executor: BaseExecutor, run_id: str, stage_names: list[str], emit: Any,
                 min_interval: float = 0.1) -> None:
        self.executor = executor
        self.run_id = run_id
        self.names = stage_names
        self.emit = emit
        self.min_interval = min_interval
        self.tasks_in = [0] * len(stage_names)
        self.tasks_out = [0] * len(stage_names)
        self.tasks_failed = [0] * len(stage_names)
        self.tasks_resumed = [0] * len(stage_names)
        self._last = [0.0] * len(stage_names)
        self._dirty = [False] * len(stage_names)

    def add(self, index: int, tasks_in: int, tasks_out: int, tasks_failed: int = 0) -> None:
        """Stage ``index`` consumed ``tasks_in`` tasks and produced ``tasks_out`` outputs and
        ``tasks_failed`` failure records (see ``ManagedStage.last_counts``)."""
        self.tasks_in[index] += tasks_in
        self.tasks_out[index] += tasks_out
        self.tasks_failed[index] += tasks_failed
        self._dirty[index] = True
        now = time.monotonic()
        if now - self._last[index] >= self.min_interval:
            self._send(index, now)

    def resume(self, index: int, n: int) -> None:
        """``n`` tasks into stage ``index`` were finished by an earlier run (a checkpoint)."""
        self.tasks_resumed[index] += n
        self._send(index, time.monotonic())

    def _send(self, index: int, now: float) -> None:
        self._last[index] = now
        self._dirty[index] = False
        self.emit(ProgressEvent(kind="stage_progress", executor=self.executor, run_id=self.run_id,
                                stage=self.names[index], index=index, tasks_in=self.tasks_in[index],
                                tasks_out=self.tasks_out[index], tasks_failed=self.tasks_failed[index],
                                tasks_resumed=self.tasks_resumed[index]))

    def flush(self) -> None:
        now = time.monotonic()
        for i, dirty in enumerate(self._dirty):
            if dirty:
                self._send(i, now)

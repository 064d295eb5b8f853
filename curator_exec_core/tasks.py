"""Task records that flow through a pipeline.

A :class:`Task` carries a user payload (``data``) plus framework-owned bookkeeping:
a deterministic ``task_id`` (parent id + index on fan-out), a free ``metadata`` dict
and one :class:`StagePerf` record per stage it went through. Tasks must pickle,
because distributed backends ship them between processes.

A :class:`FailedTask` is the record of a task that a stage could not process. It
travels through the rest of the pipeline untouched (stages never see it) and ends
up on :attr:`PipelineResult.failed_tasks`, so no failure is silently dropped on any
backend, whatever the engine does with the data stream.
"""

from __future__ import annotations

import traceback
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import attrs

if TYPE_CHECKING:  # pragma: no cover
    from curator_exec_core.planning import ExecutionPlan

__all__ = ["Task", "EmptyTask", "FailedTask", "StagePerf", "PipelineResult"]


@attrs.frozen
class StagePerf:
    """How one stage handled one task: the batch it was part of and the time it took."""

    stage: str
    seconds: float
    batch_size: int
    worker: str = ""


@attrs.define(eq=False)
class Task:
    """A unit of work. ``data`` is yours; ``task_id`` is set by the framework.

    Initial tasks without an id get their index in the initial list. A stage output
    keeps its parent's id when the stage returned a single task, and gets
    ``"<parent id>.<index>"`` when the stage returned a list (fan-out).
    """

    data: Any = None
    task_id: str = ""
    dataset_name: str = ""
    metadata: dict[str, Any] = attrs.field(factory=dict)
    stage_perf: list[StagePerf] = attrs.field(factory=list)
    #: framework-owned, only in checkpointed runs: the source tasks this task descends from and its
    #: share of each, ``((source_id, share), ...)``; empty for all of the share of the source whose
    #: id is this task's own; see ``curator_exec_core.checkpoint``
    lineage: tuple[tuple[str, Any], ...] = attrs.field(default=(), repr=False)

    @property
    def num_items(self) -> int:
        """Number of items in ``data`` (``len`` for sized containers, else 1)."""
        data = self.data
        if data is None:
            return 0
        if isinstance(data, (str, bytes, bytearray)) or not hasattr(data, "__len__"):
            return 1
        return len(data)

    def __repr__(self) -> str:
        data = repr(self.data)
        if len(data) > 60:
            data = data[:57] + "..."
        return f"{type(self).__name__}(task_id={self.task_id!r}, data={data})"


@attrs.define(eq=False, repr=False)
class EmptyTask(Task):
    """The seed task of a pipeline whose first stage generates its own input."""


@attrs.define(eq=False, repr=False)
class FailedTask(Task):
    """A task a stage could not process, with the error that stopped it.

    ``data`` is the input task as the failing stage received it. ``error`` is the
    exception's ``repr``; ``traceback`` its formatted traceback (strings, so the
    record always pickles). ``attempts`` counts tries including retries.
    """

    stage: str = ""
    error: str = ""
    error_type: str = ""
    traceback: str = ""
    attempts: int = 1

    @classmethod
    def from_exception(cls, task: Task, stage: str, exc: BaseException, attempts: int) -> FailedTask:
        return cls(
            data=task,
            task_id=task.task_id,
            dataset_name=task.dataset_name,
            stage=stage,
            error=repr(exc),
            error_type=f"{type(exc).__module__}.{type(exc).__qualname__}",
            traceback="".join(traceback.format_exception(exc)),
            attempts=attempts,
            lineage=task.lineage,
        )

    def __repr__(self) -> str:
        return f"FailedTask(stage={self.stage!r}, task_id={self.task_id!r}, error={self.error})"


class PipelineResult(list[Task]):
    """The last stage's output tasks, as a list, plus what else the run produced.

    ``failed_tasks`` lists every task that failed (only non-empty with
    ``ignore_failures=True``; otherwise the first failure aborts the run).
    ``metrics`` holds timings; ``plan`` the :class:`ExecutionPlan` that ran.
    """

    def __init__(
        self,
        tasks: Iterable[Task] = (),
        *,
        failed_tasks: list[FailedTask] | None = None,
        metrics: dict[str, Any] | None = None,
        plan: ExecutionPlan | None = None,
        executor: str = "",
    ) -> None:
        super().__init__(tasks)
        self.failed_tasks: list[FailedTask] = failed_tasks or []
        self.metrics: dict[str, Any] = metrics or {}
        self.plan = plan
        self.executor = executor

    def __repr__(self) -> str:
        return f"PipelineResult({len(self)} tasks, {len(self.failed_tasks)} failed, executor={self.executor!r})"

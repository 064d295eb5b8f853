"""``Pipeline``: an ordered list of stages, run by an executor."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any

from curator_exec_core.executor import BaseExecutor
from curator_exec_core.lifecycle import capacity_and_plan
from curator_exec_core.planning import ExecutionPlan
from curator_exec_core.registry import get_executor, get_plugin_manager
from curator_exec_core.stages import ProcessingStage
from curator_exec_core.streaming import RunStream
from curator_exec_core.tasks import PipelineResult, Task

__all__ = ["Pipeline", "DEFAULT_EXECUTOR", "resolve_executor"]

DEFAULT_EXECUTOR = "local"


def resolve_executor(executor: BaseExecutor | str | None) -> BaseExecutor:
    """``None`` -> the default (``local``); a name -> ``get_executor(name)``; an instance as is."""
    if executor is None:
        return get_executor(DEFAULT_EXECUTOR)
    if isinstance(executor, str):
        return get_executor(executor)
    if isinstance(executor, BaseExecutor):
        return executor
    raise TypeError(f"executor must be None, a name or a BaseExecutor, got {type(executor).__name__}")


class Pipeline:
    """An ordered list of stages. ``add_stage`` chains; ``run`` returns the output tasks as a list."""

    def __init__(self, name: str = "pipeline", stages: Sequence[ProcessingStage[Any, Any]] | None = None,
                 description: str | None = None) -> None:
        self.name = name
        self.description = description
        self.stages: list[ProcessingStage[Any, Any]] = []
        for stage in stages or []:
            self.add_stage(stage)

    def add_stage(self, stage: ProcessingStage[Any, Any]) -> Pipeline:
        if not isinstance(stage, ProcessingStage):
            raise TypeError(f"add_stage() takes a ProcessingStage, got {type(stage).__name__}")
        self.stages.append(stage)
        return self

    def run(self, executor: BaseExecutor | str | None = None,
            initial_tasks: Iterable[Task] | None = None, *,
            checkpoint_path: str | os.PathLike[str] | None = None, overwrite: bool = False,
            return_outputs: bool = True) -> PipelineResult:
        """Run on ``executor`` (default ``local``). ``initial_tasks``: any iterable of tasks (a generator is
        read as the run needs it); ``None`` starts from one ``EmptyTask``.

        ``checkpoint_path``: a directory that makes the run resumable (a rerun skips what finished);
        ``overwrite=True`` discards a checkpoint of another pipeline or other inputs there.
        ``return_outputs=False``: the last stage's outputs are dropped where they are made (a writer stage
        has written them); the result holds metrics and failure records only."""
        self._check()
        return resolve_executor(executor).run(self.stages, initial_tasks, checkpoint_path=checkpoint_path,
                                              overwrite=overwrite, return_outputs=return_outputs)

    def stream(self, executor: BaseExecutor | str | None = None, initial_tasks: Iterable[Task] | None = None, *,
               buffer: int = 1024, checkpoint_path: str | os.PathLike[str] | None = None,
               overwrite: bool = False) -> RunStream:
        """Run on ``executor`` in the background and yield the output tasks as they finish, from a buffer of
        about ``buffer`` tasks: a consumer that stops reading holds the run back. ``.result`` (metrics,
        failure records) once the iterator is exhausted; ``close()`` (or leaving a ``with`` block) stops
        the run early and tears its workers down. Errors of the run are raised by the iterator."""
        self._check()
        return RunStream(resolve_executor(executor), self.stages, initial_tasks, buffer=buffer,
                         checkpoint_path=checkpoint_path, overwrite=overwrite)

    def _check(self) -> None:
        if not self.stages:
            raise ValueError(f"pipeline {self.name!r} has no stages; add some with add_stage()")

    def plan(self, executor: BaseExecutor | str | None = None) -> ExecutionPlan:
        """The plan ``executor`` would use, without running anything."""
        return capacity_and_plan(get_plugin_manager().hook, resolve_executor(executor), self.stages)[1]

    def describe(self, executor: BaseExecutor | str | None = None) -> str:
        """The stages; with ``executor``, also the plan (what would run where)."""
        lines = [f"Pipeline {self.name!r}" + (f": {self.description}" if self.description else "")]
        for i, stage in enumerate(self.stages):
            lines.append(f"  {i}: {stage.name} ({stage.resources.describe()}, batch_size={stage.batch_size})")
        if executor is not None:
            lines += ["", self.plan(executor).describe()]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"Pipeline({self.name!r}, {len(self.stages)} stages)"

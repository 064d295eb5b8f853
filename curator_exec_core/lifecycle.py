"""The core's default lifecycle hook implementations, and the phase calls the core makes itself.

Every lifecycle hook is ``firstresult``; the defaults here are registered ``trylast`` and call the
executor's own method of the same name, so a plugin can answer a phase first or wrap it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from curator_exec_core.hookspecs import hookimpl

if TYPE_CHECKING:  # pragma: no cover
    import pluggy

    from curator_exec_core.capacity import Capacity
    from curator_exec_core.executor import BaseExecutor
    from curator_exec_core.planning import ExecutionPlan
    from curator_exec_core.runner import ManagedStage
    from curator_exec_core.scheduling import Schedule
    from curator_exec_core.stages import ProcessingStage
    from curator_exec_core.tasks import Task

__all__ = ["DefaultLifecycle", "capacity_and_plan"]


class DefaultLifecycle:
    """Each phase calls the executor's own method."""

    @hookimpl(trylast=True)
    def curator_exec_capacity(self, executor: BaseExecutor) -> Capacity:
        return executor.capacity()

    @hookimpl(trylast=True)
    def curator_exec_plan(self, executor: BaseExecutor, stages: list[ProcessingStage[Any, Any]],
                          capacity: Capacity) -> ExecutionPlan:
        return executor.plan(stages, capacity)

    @hookimpl(trylast=True)
    def curator_exec_schedule(self, executor: BaseExecutor, plan: ExecutionPlan) -> Schedule:
        return executor.schedule(plan)

    @hookimpl(trylast=True)
    def curator_exec_execute(self, executor: BaseExecutor, stages: list[ManagedStage],
                             initial_tasks: list[Task]) -> list[Task]:
        return executor.execute(stages, initial_tasks)

    @hookimpl(trylast=True)
    def curator_exec_teardown(self, executor: BaseExecutor, error: BaseException | None) -> None:
        executor.teardown()


def capacity_and_plan(hook: pluggy.HookRelay, executor: BaseExecutor, stages: Sequence[ProcessingStage[Any, Any]],
                      ) -> tuple[Capacity, ExecutionPlan]:
    """The first two phases through their hooks (a run, ``Pipeline.plan`` and ``curator-exec plan``)."""
    capacity = hook.curator_exec_capacity(executor=executor)
    return capacity, hook.curator_exec_plan(executor=executor, stages=list(stages), capacity=capacity)

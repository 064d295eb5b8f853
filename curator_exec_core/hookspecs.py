"""Every curator-exec hook, grouped by phase. Project name: ``curator_exec``.

Implement hooks with :data:`curator_exec_core.hookimpl` in a module or class and
expose it through the ``curator_exec.executors`` entry point (executor plugins)
or register it with :func:`curator_exec_core.register_plugin` (observers).

Lifecycle (``BaseExecutor.run`` -> ``Run.drive``), in this order::

    curator_exec_capacity -> curator_exec_plan -> curator_exec_schedule
    -> curator_exec_execute -> curator_exec_teardown (always, also after a failure)

The run driver (:class:`curator_exec_core.run.Run`) calls them. Each lifecycle hook
is ``firstresult``; the core registers default implementations (``trylast``,
:mod:`curator_exec_core.lifecycle`) that call the executor's own method of the same
name. A plugin can answer a phase first, or wrap it with
``@hookimpl(wrapper=True)`` (``result = yield``; return it or a replacement) to
time, log, or change it (a policy that caps workers wraps ``curator_exec_plan``).
Observers get :class:`~curator_exec_core.progress.ProgressEvent` objects through
``curator_exec_progress``; it is called on the driver, for every backend.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:  # pragma: no cover
    from curator_exec_core.capacity import Capacity
    from curator_exec_core.executor import BaseExecutor
    from curator_exec_core.planning import ExecutionPlan
    from curator_exec_core.progress import ProgressEvent
    from curator_exec_core.registry import ExecutorSpec
    from curator_exec_core.runner import ManagedStage
    from curator_exec_core.scheduling import Schedule
    from curator_exec_core.stages import ProcessingStage
    from curator_exec_core.tasks import Task

PROJECT = "curator_exec"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

# -- registration --------------------------------------------------------------


@hookspec
def curator_exec_register_executors() -> list[ExecutorSpec]:  # type: ignore[empty-body]  # a spec: never called
    """Return the executors this plugin provides, as :class:`ExecutorSpec` records.

    Called by ``list_executors()`` and ``get_executor()``. Must not import an
    engine: ``factory`` is a ``"module:Class"`` string, imported only when the
    executor is asked for by name.
    """


# -- lifecycle -----------------------------------------------------------------


@hookspec(firstresult=True)
def curator_exec_capacity(executor: BaseExecutor) -> Capacity | None:
    """Return the :class:`Capacity` ``executor`` can use.

    First phase of every run; also called by ``Pipeline.plan`` and ``curator-exec plan``/``info``.
    Stops at the first non-None result. Default: ``executor.capacity()``.
    """


@hookspec(firstresult=True)
def curator_exec_plan(executor: BaseExecutor, stages: list[ProcessingStage[Any, Any]],
                      capacity: Capacity) -> ExecutionPlan | None:
    """Return the :class:`ExecutionPlan` for ``stages`` on ``capacity``: how many workers of what.

    Raise :class:`PlanError` for a request that cannot be met. Stops at the first non-None result.
    Default: ``executor.plan(stages, capacity)``. Wrap it to change the plan (cap workers).
    """


@hookspec(firstresult=True)
def curator_exec_schedule(executor: BaseExecutor, plan: ExecutionPlan) -> Schedule | None:
    """Return the :class:`~curator_exec_core.scheduling.Schedule`: where each planned worker runs.

    ``plan`` says how many; the schedule says where (a node per worker, or None: the engine decides).
    ``execute`` obeys it (the run's schedule is ``Run.of(stages).schedule``). Stops at the first
    non-None result. Default: ``executor.schedule(plan)`` (with ``ignore_head_node``, ``ray_actor_pool``
    pins every worker off the head node; ``ray_data`` and ``xenna``, which place their workers
    themselves, get the head in ``Schedule.excluded``). Wrap it to pin a stage: ``return (yield).pin(index, [node_id])``.
    """


@hookspec(firstresult=True)
def curator_exec_execute(
    executor: BaseExecutor, stages: list[ManagedStage], initial_tasks: list[Task]
) -> list[Task] | None:
    """Run the managed ``stages`` on ``initial_tasks`` and return the last stage's outputs.

    Always called with prepared inputs: planned ``ManagedStage`` objects in pipeline order,
    and tasks that all have ids: a non-empty list (one window of the source, or all of it), or,
    for an executor that streams its input (``streams_input``) and a source that is a generator,
    an iterator read as the executor goes. Such an executor may return an iterator too.

    Default: ``executor.execute(stages, initial_tasks)``.
    """


@hookspec
def curator_exec_teardown(executor: BaseExecutor, error: BaseException | None) -> None:
    """Release what the run acquired. Called once per run, also after a failure (``error`` set).

    The default calls ``executor.teardown()``. Every implementation is called.
    """


# -- events --------------------------------------------------------------------


@hookspec
def curator_exec_progress(event: ProgressEvent) -> None:
    """Observe a :class:`ProgressEvent` (run_started, stage_progress, run_finished) on the driver."""


HOOKS = (
    "curator_exec_register_executors",
    "curator_exec_capacity",
    "curator_exec_plan",
    "curator_exec_schedule",
    "curator_exec_execute",
    "curator_exec_teardown",
    "curator_exec_progress",
)

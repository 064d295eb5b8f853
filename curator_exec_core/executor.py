"""``BaseExecutor``: options, capacity, planning and the run lifecycle.

A backend subclasses :class:`BaseExecutor`, sets ``name`` and ``Options`` (an
:class:`ExecutorOptions` subclass), and implements :meth:`execute`. Everything
else (validation, capacity, the plan, managed stages with the shared failure
semantics, progress, teardown) is done here, the same for every backend.

:meth:`run` drives the lifecycle through the hooks::

    capacity -> plan -> schedule -> execute -> teardown (always)

``run()`` always calls ``execute(stages, initial_tasks)`` with prepared inputs: a
list of planned :class:`~curator_exec_core.runner.ManagedStage` objects and a list
of tasks that all have ids. A third party's executor that only overrides
``execute`` (the NeMo Curator "custom executor" shape) works unchanged: calling
``stage.setup()``, ``stage.process(task)`` and ``stage.teardown()`` on managed
stages gives it ids, retries, failure records and once-per-node setup for free.
Someone who calls ``execute()`` directly with plain stages gets the whole
lifecycle (:meth:`BaseExecutor.execute_unprepared`), so no backend re-normalises
its inputs.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import socket
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import attrs

from curator_exec_core.capacity import Capacity, local_capacity
from curator_exec_core.checkpoint import Checkpoint
from curator_exec_core.config import ExecutorOptions, build_options
from curator_exec_core.errors import PlanError, StageFailedError
from curator_exec_core.events import ProgressEvent, ProgressReporter
from curator_exec_core.gang import GangStage, ManagedGang, run_gang_in_threads
from curator_exec_core.planning import ExecutionPlan, check_gang, plan_stages
from curator_exec_core.registry import get_plugin_manager
from curator_exec_core.runner import FailurePolicy, ManagedStage, run_dir
from curator_exec_core.shuffle import ManagedShuffle, ShuffleStage, group_in_process, split_at_barriers
from curator_exec_core.stages import ProcessingStage, WorkerMetadata
from curator_exec_core.tasks import EmptyTask, FailedTask, PipelineResult, Task

__all__ = ["BaseExecutor", "find_stage_error", "prepare_initial_tasks", "stage_metrics_keys"]

logger = logging.getLogger("curator_exec")


def find_stage_error(exc: BaseException) -> StageFailedError | None:
    """The :class:`StageFailedError` inside an engine's exception (cause chains, Ray's ``.cause``)."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    wrapped: StageFailedError | None = None
    while todo:
        cur = todo.pop(0)
        if cur is None or id(cur) in seen:
            continue
        seen.add(id(cur))
        if isinstance(cur, StageFailedError):
            if type(cur) is StageFailedError or not hasattr(cur, "cause"):
                return cur
            # Ray's RayTaskError(StageFailedError) is both; prefer the plain one it carries
            wrapped = wrapped or cur
        todo += [getattr(cur, "cause", None), cur.__cause__, cur.__context__]
        todo += [e for e in getattr(cur, "exceptions", ()) if isinstance(e, BaseException)]
    return wrapped


def prepare_initial_tasks(initial_tasks: Sequence[Task] | None) -> list[Task]:
    """``None`` -> ``[EmptyTask()]``; tasks without an id get their index."""
    tasks = [EmptyTask()] if initial_tasks is None else list(initial_tasks)
    for i, task in enumerate(tasks):
        if not isinstance(task, Task):
            raise TypeError(f"initial_tasks[{i}] is {type(task).__name__}, not a Task")
        if not task.task_id:
            task.task_id = str(i)
    return tasks


def stage_metrics_keys(names: Sequence[str]) -> list[str]:
    """The keys of ``result.metrics["stages"]``: the stage names, with ``#<position>`` appended to
    every stage whose name another stage of the pipeline shares (``add#0``, ``add#2``)."""
    return [f"{n}#{i}" if names.count(n) > 1 else n for i, n in enumerate(names)]


def _user(stage: ProcessingStage) -> ProcessingStage:
    """The user's stage (a managed stage wraps one)."""
    return stage.stage if isinstance(stage, ManagedStage) else stage


def _prepared(execute: Callable[..., list[Task]]) -> Callable[..., list[Task]]:
    """Wrap a subclass's ``execute``: inside ``run()`` it is called as is; called directly (plain
    stages, raw tasks) it goes through the whole lifecycle instead."""

    @functools.wraps(execute)
    def wrapper(self: BaseExecutor, stages: Sequence[Any], initial_tasks: Sequence[Task] | None = None) -> list[Task]:
        if getattr(self._state, "executing", False):
            return execute(self, stages, initial_tasks)
        return self.execute_unprepared(stages, initial_tasks)

    wrapper.__curator_prepared__ = True  # type: ignore[attr-defined]
    return wrapper


class BaseExecutor(ABC):
    """Base class for all executors.

    ``config`` is a dict of options; keyword ``options`` are merged over it.
    Unknown keys and bad values raise :class:`ConfigError`. The validated options
    are on ``self.options``; the original dict stays on ``self.config``.
    """

    #: the registry name of this executor
    name: ClassVar[str] = ""
    #: the options class (subclass :class:`ExecutorOptions` to add options)
    Options: ClassVar[type[ExecutorOptions]] = ExecutorOptions
    #: do all stages run at once (streaming)? The planner shares capacity if so.
    concurrent_stages: ClassVar[bool] = True
    #: barrier stage kinds this executor's ``execute`` runs itself (``"shuffle"``, ``"gang"``). For the
    #: others the core splits the pipeline at the barrier: the map parts go through ``execute``, the
    #: barrier through :meth:`run_shuffle` or :meth:`run_gang`.
    native_stage_kinds: ClassVar[frozenset[str]] = frozenset()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        fn = cls.__dict__.get("execute")
        if fn is not None and not getattr(fn, "__isabstractmethod__", False) \
                and not getattr(fn, "__curator_prepared__", False):
            cls.execute = _prepared(fn)  # type: ignore[method-assign]

    def __init__(self, config: dict[str, Any] | None = None, ignore_head_node: bool = False, **options: Any) -> None:
        self.config: dict[str, Any] = dict(config or {})
        values = {**self.config, **options}
        if ignore_head_node or "ignore_head_node" not in values:
            values["ignore_head_node"] = ignore_head_node
        self.options = build_options(self.Options, values, self.executor_name)
        self.ignore_head_node: bool = self.options.ignore_head_node
        self.run_id: str = ""
        self.current_plan: ExecutionPlan | None = None
        self.progress: ProgressReporter | None = None
        self._state = threading.local()

    @property
    def executor_name(self) -> str:
        return type(self).name or type(self).__name__

    # -- phases (each called through its hook by run()) ------------------------
    def capacity(self) -> Capacity:
        """The compute this executor can use (default: this machine). Honours ``ignore_head_node``."""
        cap = local_capacity()
        return cap.without_head() if self.ignore_head_node else cap

    def plan_options(self) -> dict[str, Any]:
        """Extra keyword arguments for :func:`plan_stages` (reservations, caps)."""
        return {}

    def explicit_size(self, stage: ProcessingStage) -> bool:
        """Whether the user fixed how many workers ``stage`` gets: its own ``num_workers()``, or a
        per-stage cap given to the planner (``plan_options()["max_workers_per_stage"]``)."""
        return _user(stage).num_workers() is not None or self.plan_options().get("max_workers_per_stage") is not None

    def stage_serializer(self) -> Callable[[Any], Any] | None:
        """How this executor ships stages to its workers (e.g. ``pickle.dumps``), or None if its
        workers run in this process. :meth:`plan` checks every stage with it."""
        return None

    def plan(self, stages: Sequence[ProcessingStage], capacity: Capacity) -> ExecutionPlan:
        """Size the stages against ``capacity``; raises :class:`PlanError` if they cannot run
        (also for a stage this executor cannot ship to its workers)."""
        users = [_user(s) for s in stages]
        dumps = self.stage_serializer()
        if dumps is not None:
            for i, user in enumerate(users):
                try:
                    dumps(user)
                except Exception as exc:
                    raise PlanError(
                        f"stage {i} {user.name!r} cannot be pickled ({type(exc).__name__}: {exc}), and executor "
                        f"{self.executor_name!r} ships every stage to its workers. Create what cannot be pickled "
                        "(clients, locks, open files, loaded models) in setup(), not in __init__.") from exc
        plan = plan_stages(list(stages), capacity, executor=self.executor_name,
                           concurrent=self.concurrent_stages, **self.plan_options())
        for user, sp in zip(users, plan.stages, strict=True):
            if isinstance(user, GangStage):  # all ranks at once, or not at all
                # as requested (a gang's ranks are not scaled to fit), GPUs as resolved by the plan
                per_rank = attrs.evolve(sp.resources, cpus=user.resources.cpus)
                check_gang(user.name, int(user.gang_size), user.placement_strategy, per_rank, capacity,
                           self.executor_name)
        return plan

    def schedule(self, plan: ExecutionPlan) -> Any:
        """Map the plan onto the engine before execution (default: nothing to do)."""
        return None

    @abstractmethod
    def execute(self, stages: list[ManagedStage], initial_tasks: list[Task]) -> list[Task]:
        """Run the managed, planned ``stages`` on ``initial_tasks`` (non-empty, every task has an id)
        and return the last stage's outputs, :class:`FailedTask` records included."""

    def execute_unprepared(self, stages: Sequence[ProcessingStage], initial_tasks: Sequence[Task] | None = None,
                           ) -> list[Task]:
        """``execute`` as someone calls it directly, with plain stages: the whole :meth:`run`
        lifecycle; returns the outputs followed by the failure records."""
        result = self.run(stages, initial_tasks)
        return [*result, *result.failed_tasks]

    def teardown(self) -> None:  # noqa: B027 - optional hook, not abstract
        """Release what the run acquired (engine sessions, actors). Called after every run."""

    # -- driver ------------------------------------------------------------
    def managed_stages(self, stages: Sequence[ProcessingStage], plan: ExecutionPlan | None = None,
                       run_id: str = "") -> list[ManagedStage]:
        """Wrap user stages for execution (idempotent: managed stages are returned as they are)."""
        if all(isinstance(s, ManagedStage) for s in stages):
            return list(stages)  # type: ignore[arg-type]
        if plan is None:
            plan = self.plan(stages, self.capacity())
        policy = FailurePolicy(self.options.ignore_failures, self.options.max_retries)
        run_id = run_id or self.run_id or uuid.uuid4().hex[:12]
        kinds = {ShuffleStage: ManagedShuffle, GangStage: ManagedGang}
        return [next((m for k, m in kinds.items() if isinstance(s, k)), ManagedStage)(
                    s, index=i, plan=plan.stages[i], policy=policy, run_id=run_id) for i, s in enumerate(stages)]

    def run_shuffle(self, stage: ManagedShuffle, tasks: list[Task]) -> list[Task]:
        """Run one shuffle stage on its whole input ``tasks``: the failure records (those that came
        in, and those it made), then its outputs. Default: in this process, one worker (setup, keys,
        reduce, teardown). The Ray executors run it on Ray (``curator_exec_ray.shuffle``)."""

        def report(kind: str, counts: tuple[int, int, int]) -> None:
            if self.progress is not None:
                inserted = kind == "insert"
                self.progress.add(stage.index, counts[0] if inserted else 0, 0 if inserted else counts[1], counts[2])

        stage.setup(WorkerMetadata(worker_id=f"{self.executor_name}:{os.getpid()}:{stage.index}",
                                   node_id=socket.gethostname()))
        try:
            return group_in_process(stage, tasks, report)
        finally:
            stage.teardown()

    def run_gang(self, stage: ManagedGang, tasks: list[Task]) -> list[Task]:
        """Run one gang stage on its whole input ``tasks``: the failure records that came in, then
        the ranks' outputs. Default: the ranks as threads of this process. The Ray executors start
        them as actors in a placement group (``curator_exec_ray.gang``)."""

        def report(counts: tuple[int, int, int]) -> None:
            if self.progress is not None:
                self.progress.add(stage.index, *counts)

        return run_gang_in_threads(stage, tasks, self.executor_name, report)

    def check_shared_path(self, path: str) -> None:  # noqa: B027 - optional, not abstract
        """Raise :class:`CheckpointError` unless every worker of this executor sees the directory
        ``path`` (a checkpoint). Default: nothing to check, the workers run on this machine. The Ray
        executors have every node write a marker that the driver reads."""

    def _execute(self, stages: list[ManagedStage], tasks: list[Task], checkpoint: Checkpoint | None = None,
                 ) -> list[Task]:
        """The execute phase: one ``execute`` call, or, with barrier stages this executor does not run
        itself (``native_stage_kinds``) or a checkpoint, the map parts through ``execute`` and each
        barrier through :meth:`run_shuffle` or :meth:`run_gang`; with a checkpoint, finished work
        is taken from it and new work recorded in it."""
        hook = get_plugin_manager().hook
        if checkpoint is None and all(s.barrier in self.native_stage_kinds for s in stages if s.barrier):
            return self._call_execute(hook, stages, tasks)
        parts = split_at_barriers(stages)
        start = 0
        if checkpoint is not None and (found := checkpoint.last_barrier(parts)) is not None:
            checkpoint.resumed = len(tasks)  # every source task's work up to that barrier is done
            start, tasks = found[0] + 1, found[1]
            self._resumed(parts[found[0]].index, len(tasks))
        for p in range(start, len(parts)):
            part = parts[p]
            if not tasks:
                break  # nothing flows on
            if isinstance(part, list):
                if checkpoint is None:
                    tasks = self._call_execute(hook, part, tasks)
                else:
                    tasks = checkpoint.run_part(p, part, tasks, functools.partial(self._call_execute, hook, part),
                                                functools.partial(self._resumed, part[0].index))
            else:
                tasks = (self.run_shuffle if part.barrier == "shuffle" else self.run_gang)(part, tasks)
                if checkpoint is not None:
                    checkpoint.save_barrier(p, tasks)
        return tasks

    def _resumed(self, index: int, n: int) -> None:
        if self.progress is not None:
            self.progress.resume(index, n)

    def _call_execute(self, hook: Any, stages: list[ManagedStage], tasks: list[Task]) -> list[Task]:
        outputs = hook.curator_exec_execute(executor=self, stages=stages, initial_tasks=tasks)
        if outputs is None:
            raise TypeError(f"executor {self.executor_name!r}: execute() returned None, expected a list of tasks")
        return list(outputs)

    def describe(self, stages: Sequence[ProcessingStage]) -> str:
        """The plan for ``stages`` on this executor's capacity, without running anything."""
        hook = get_plugin_manager().hook
        capacity = hook.curator_exec_capacity(executor=self)
        return hook.curator_exec_plan(executor=self, stages=list(stages), capacity=capacity).describe()

    def run(self, stages: Sequence[ProcessingStage], initial_tasks: Sequence[Task] | None = None, *,
            checkpoint_path: str | os.PathLike[str] | None = None, overwrite: bool = False) -> PipelineResult:
        """Run the full lifecycle and return the outputs (a list) with failures and metrics.

        With ``checkpoint_path`` the run is resumable: finished source tasks (and finished barrier
        stages) are recorded in that directory, and a rerun with the same stages and initial tasks
        skips them and returns what one uninterrupted run returns (see
        :mod:`curator_exec_core.checkpoint`). ``overwrite=True`` discards a checkpoint written by
        another pipeline or other inputs instead of refusing it.
        """
        stages = list(stages)
        if not stages:
            raise ValueError("a pipeline needs at least one stage")
        tasks = prepare_initial_tasks(initial_tasks)
        if not tasks:
            return PipelineResult([], executor=self.executor_name)
        checkpoint = Checkpoint(checkpoint_path, overwrite) if checkpoint_path is not None else None
        hook = get_plugin_manager().hook
        self.run_id = run_id = uuid.uuid4().hex[:12]
        started = time.perf_counter()
        managed: list[ManagedStage] = []
        error: BaseException | None = None
        outputs: list[Task] | None = None
        self.progress = ProgressReporter(self, run_id, [s.name for s in stages], lambda e: hook.curator_exec_progress(event=e))
        try:
            capacity = hook.curator_exec_capacity(executor=self)
            plan = hook.curator_exec_plan(executor=self, stages=stages, capacity=capacity)
            self.current_plan = plan
            if checkpoint is not None:
                checkpoint.open(stages, tasks, self.options.ignore_failures)
                self.check_shared_path(checkpoint.path)
            managed = self.managed_stages(stages, plan, run_id)
            for stage in managed:
                stage.progress = self._count
            hook.curator_exec_schedule(executor=self, plan=plan)
            hook.curator_exec_progress(event=ProgressEvent(kind="run_started", executor=self, run_id=run_id,
                                                           stages=tuple(s.name for s in stages), total=len(tasks)))
            self._state.executing = True
            try:
                outputs = self._execute(managed, tasks, checkpoint)
            finally:
                self._state.executing = False
        except BaseException as exc:
            error = exc
            stage_error = find_stage_error(exc)
            if stage_error is not None and stage_error is not exc:
                error = stage_error
                raise stage_error from exc
            raise
        finally:
            if checkpoint is not None:
                checkpoint.close()
            self._finish(managed, error, started)
        results: list[Task] = []
        failed: list[FailedTask] = []
        for task in outputs:
            (failed if isinstance(task, FailedTask) else results).append(task)
        for f in failed[:20]:
            logger.warning("task %s failed in stage %r after %d attempt(s): %s", f.task_id, f.stage, f.attempts, f.error)
        if len(failed) > 20:
            logger.warning("... and %d more failed tasks (see result.failed_tasks)", len(failed) - 20)
        seconds = time.perf_counter() - started
        p = self.progress
        metrics = {
            "seconds": seconds,
            "stages": {key: {"index": i, "tasks_in": p.tasks_in[i], "tasks_out": p.tasks_out[i],
                             "tasks_failed": p.tasks_failed[i]}
                       for i, key in enumerate(stage_metrics_keys([s.name for s in stages]))},
        }
        if checkpoint is not None:
            metrics["checkpoint"] = {"path": checkpoint.path, "source_tasks": len(tasks),
                                     "resumed_tasks": checkpoint.resumed, "resumed_after": checkpoint.resumed_after}
        logger.info("%s: %d tasks out, %d failed in %.2fs", self.executor_name, len(results), len(failed), seconds)
        for name, counts in metrics["stages"].items():
            logger.info("  stage %-24s in=%d out=%d failed=%d", name, counts["tasks_in"], counts["tasks_out"],
                        counts["tasks_failed"])
        return PipelineResult(results, failed_tasks=failed, metrics=metrics, plan=self.current_plan,
                              executor=self.executor_name)

    def _count(self, stage: ManagedStage, tasks_in: int, tasks_out: int, tasks_failed: int = 0) -> None:
        if self.progress is not None:
            self.progress.add(stage.index, tasks_in, tasks_out, tasks_failed)

    def _finish(self, managed: list[ManagedStage], error: BaseException | None, started: float) -> None:
        hook = get_plugin_manager().hook
        # Workers that live in this process and ran setup get their teardown, whatever happened.
        for stage in managed:
            if stage.is_set_up:
                try:
                    stage.teardown()
                except Exception:
                    logger.exception("teardown of stage %r failed", stage.name)
        try:
            hook.curator_exec_teardown(executor=self, error=error)
        except Exception:
            if error is None:
                raise
            logger.exception("executor teardown failed after an error")
        finally:
            if self.progress is not None:
                self.progress.flush()
            hook.curator_exec_progress(event=ProgressEvent(kind="run_finished", executor=self, run_id=self.run_id,
                                                           seconds=time.perf_counter() - started, error=error))
            shutil.rmtree(run_dir(self.run_id), ignore_errors=True)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.executor_name!r}>"

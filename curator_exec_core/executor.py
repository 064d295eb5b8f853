"""``BaseExecutor``: the plugin contract. Settings and phases; no run state, no hook calls.

A backend subclasses :class:`BaseExecutor`, sets ``name`` and ``Options`` (an
:class:`ExecutorOptions` subclass), and implements :meth:`execute`. The phases
(``capacity``, ``plan``, ``schedule``, ``execute``, ``teardown``) are called by the run
driver (:mod:`curator_exec_core.run`) through the lifecycle hooks; one run's state lives on
its :class:`~curator_exec_core.run.Run`, never on the executor.

``run()`` calls ``execute(stages, initial_tasks)`` with prepared inputs: planned
:class:`~curator_exec_core.runner.ManagedStage` objects that belong to the run, and a
list of tasks that all have ids. A third party's executor that only overrides
``execute`` (the NeMo Curator "custom executor" shape) works unchanged: calling
``stage.setup()``, ``stage.process(task)`` and ``stage.teardown()`` on managed stages
gives it ids, retries, failure records, counts and once-per-node setup for free.

The rule for ``execute`` called directly (not by a run) with plain stages: the executor
must run the whole lifecycle instead, which :meth:`BaseExecutor.execute_unprepared` does;
the built-in executors start their ``execute`` with that check (:meth:`is_prepared`).

One executor instance runs one run at a time: a second ``run()`` on the same instance (from
another thread) waits until the first has finished. Use two instances to run two pipelines
at once.
"""

from __future__ import annotations

import logging
import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from curator_exec_core.capacity import Capacity, local_capacity
from curator_exec_core.config import ExecutorOptions, build_options
from curator_exec_core.errors import PlanError
from curator_exec_core.planning import ExecutionPlan, plan_stages
from curator_exec_core.runner import FailurePolicy, ManagedStage
from curator_exec_core.runner.kinds import kind_named, kind_of, manage
from curator_exec_core.scheduling import Schedule
from curator_exec_core.source import Source
from curator_exec_core.stages import ProcessingStage
from curator_exec_core.stats import stage_metrics_keys
from curator_exec_core.tasks import Task

if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Iterable

    from curator_exec_core.tasks import PipelineResult

__all__ = ["BaseExecutor", "prepare_initial_tasks", "stage_metrics_keys"]

logger = logging.getLogger("curator_exec")


def prepare_initial_tasks(initial_tasks: Iterable[Task] | None) -> list[Task]:
    """``None`` -> ``[EmptyTask()]``; tasks without an id get their index (all read, as a list: a run
    reads them lazily through :class:`~curator_exec_core.source.Source`, which does the same)."""
    return Source(initial_tasks).all()


def _user(stage: ProcessingStage[Any, Any]) -> ProcessingStage[Any, Any]:
    """The user's stage (a managed stage wraps one)."""
    return stage.stage if isinstance(stage, ManagedStage) else stage


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
    concurrent_stages: bool = True
    #: barrier stage kinds (:mod:`curator_exec_core.runner.kinds`: ``"shuffle"``, ``"gang"``) this
    #: executor's ``execute`` runs itself. For the others the run driver splits the pipeline at the
    #: barrier: the map segments go through ``execute``, the barrier through :meth:`run_barrier`.
    native_stage_kinds: ClassVar[frozenset[str]] = frozenset()
    #: does ``execute`` read its ``initial_tasks`` lazily (any iterable, read no further ahead than its
    #: workers need) and may it return its outputs as an iterator? Then the run hands it the whole
    #: source at once. If not (a list in, a list out), the run calls ``execute`` once per window of
    #: source tasks (the ``source_window`` option) on a pipeline of map stages, so the driver still holds
    #: a window, not the source; a pipeline with a barrier in ``native_stage_kinds`` gets it whole.
    streams_input: ClassVar[bool] = False
    #: in a checkpointed run, may ``execute`` and ``stream_barrier`` get
    #: :class:`~curator_exec_core.checkpoint.barrier.StoredBlock` items among their tasks (blocks of a
    #: saved barrier's outputs, for the workers to ``load()``), so that the part after a barrier is not
    #: read back through the driver? If not, the driver reads them and passes tasks.
    loads_stored_blocks: ClassVar[bool] = False

    def __init__(self, config: dict[str, Any] | None = None, ignore_head_node: bool = False, **options: Any) -> None:
        self.config: dict[str, Any] = dict(config or {})
        values = {**self.config, **options}
        if ignore_head_node or "ignore_head_node" not in values:
            values["ignore_head_node"] = ignore_head_node
        self.options = build_options(self.Options, values, self.executor_name)
        self.ignore_head_node: bool = self.options.ignore_head_node
        self._run_lock = threading.RLock()  # one run at a time per instance

    @property
    def executor_name(self) -> str:
        return type(self).name or type(self).__name__

    # -- phases (each called through its hook by the run driver) -------------------------------
    def capacity(self) -> Capacity:
        """The compute this executor can use (default: this machine). Honours ``ignore_head_node``."""
        cap = local_capacity()
        return cap.without_head() if self.ignore_head_node else cap

    def plan_options(self) -> dict[str, Any]:
        """Extra keyword arguments for :func:`plan_stages` (reservations, caps)."""
        return {}

    def explicit_size(self, stage: ProcessingStage[Any, Any]) -> bool:
        """Whether the user fixed how many workers ``stage`` gets: its own ``num_workers()``, or a
        per-stage cap given to the planner (``plan_options()["max_workers_per_stage"]``)."""
        return _user(stage).num_workers() is not None or self.plan_options().get("max_workers_per_stage") is not None

    def stage_serializer(self) -> Callable[[Any], Any] | None:
        """How this executor ships stages to its workers (e.g. ``pickle.dumps``), or None if its
        workers run in this process. :meth:`plan` checks every stage with it."""
        return None

    def plan(self, stages: Sequence[ProcessingStage[Any, Any]], capacity: Capacity) -> ExecutionPlan:
        """Size the stages against ``capacity``; raises :class:`PlanError` if they cannot run
        (also for a stage this executor cannot ship to its workers)."""
        users = [_user(s) for s in stages]
        self._check_picklable(users)
        plan = plan_stages(list(stages), capacity, executor=self.executor_name,
                           concurrent=self.concurrent_stages, **self.plan_options())
        for user, sp in zip(users, plan.stages, strict=True):
            check = kind_of(user).check_plan
            if check is not None:
                check(user, sp, capacity, self.executor_name)
        return plan

    def _check_picklable(self, users: Sequence[ProcessingStage[Any, Any]]) -> None:
        dumps = self.stage_serializer()
        if dumps is None:
            return
        for i, user in enumerate(users):
            try:
                dumps(user)
            except Exception as exc:
                raise PlanError(
                    f"stage {i} {user.name!r} cannot be pickled ({type(exc).__name__}: {exc}), and executor "
                    f"{self.executor_name!r} ships every stage to its workers. Create what cannot be pickled "
                    "(clients, locks, open files, loaded models) in setup(), not in __init__.") from exc

    def schedule(self, plan: ExecutionPlan) -> Schedule:
        """Where the plan's workers go (default: wherever the engine puts them)."""
        return Schedule.unpinned(plan)

    @abstractmethod
    def execute(self, stages: list[ManagedStage], initial_tasks: list[Task]) -> list[Task]:
        """Run the managed, planned ``stages`` on ``initial_tasks`` (non-empty, every task has an id)
        and return the last stage's outputs, :class:`FailedTask` records included.

        The run these stages belong to (its id, plan, schedule, stats) is
        ``curator_exec_core.run.Run.of(stages)``."""

    def teardown(self) -> None:  # noqa: B027 - optional hook, not abstract
        """Release what the run acquired (engine sessions, actors). Called after every run."""

    def check_shared_path(self, path: str) -> None:  # noqa: B027 - optional, not abstract
        """Raise :class:`CheckpointError` unless every worker of this executor sees the directory
        ``path`` (a checkpoint). Default: nothing to check, the workers run on this machine. The Ray
        executors have every node write a marker that the driver reads."""

    def run_barrier(self, stage: ManagedStage, tasks: list[Task]) -> list[Task]:
        """Run one barrier stage (a kind not in ``native_stage_kinds``) on its whole input ``tasks``:
        the failure records (those that came in, and those it made), then its outputs. Default: the
        kind's in-process runner (a shuffle on one worker, a gang's ranks as threads). The Ray
        executors run them on Ray (:mod:`curator_exec_ray`)."""
        runner = kind_named(stage.kind).run_in_process
        if runner is None:
            raise TypeError(f"stage {stage.name!r} of kind {stage.kind!r} is not a barrier")
        return runner(stage, tasks, self.executor_name)

    def stream_barrier(self, stage: ManagedStage, tasks: Iterable[Task]) -> Iterable[Task]:
        """:meth:`run_barrier` in a run that streams between segments (an executor with
        ``streams_input``, no checkpoint): ``tasks`` is any iterable (the segment before, as it comes),
        and any iterable may be returned. Default: ``run_barrier(stage, list(tasks))``."""
        return self.run_barrier(stage, list(tasks))

    # -- building blocks of a run -------------------------------------------------------
    def managed_stages(self, stages: Sequence[ProcessingStage[Any, Any]], plan: ExecutionPlan | None = None,
                       run_id: str = "") -> list[ManagedStage]:
        """Wrap user stages for execution (idempotent: managed stages are returned as they are)."""
        if all(isinstance(s, ManagedStage) for s in stages):
            return list(stages)  # type: ignore[arg-type]
        if plan is None:
            plan = self.plan(stages, self.capacity())
        policy = FailurePolicy(self.options.ignore_failures, self.options.max_retries, self.options.task_timeout)
        return [manage(s, index=i, plan=plan.stages[i], policy=policy, run_id=run_id) for i, s in enumerate(stages)]

    @staticmethod
    def is_prepared(stages: Sequence[ProcessingStage[Any, Any]]) -> bool:
        """Whether ``stages`` were prepared by a run (managed stages that belong to one): the rule an
        ``execute`` applies when it may be called directly with plain stages."""
        return bool(stages) and all(isinstance(s, ManagedStage) and s.run is not None for s in stages)

    def execute_unprepared(self, stages: Sequence[ProcessingStage[Any, Any]],
                           initial_tasks: Iterable[Task] | None = None) -> list[Task]:
        """``execute`` as someone calls it directly, with plain stages: the whole :meth:`run`
        lifecycle; returns the outputs followed by the failure records."""
        result = self.run([_user(s) for s in stages], initial_tasks)
        return [*result, *result.failed_tasks]

    def describe(self, stages: Sequence[ProcessingStage[Any, Any]]) -> str:
        """The plan for ``stages`` on this executor's capacity (through the hooks), without running anything."""
        from curator_exec_core.lifecycle import capacity_and_plan
        from curator_exec_core.registry import get_plugin_manager

        return capacity_and_plan(get_plugin_manager().hook, self, stages)[1].describe()

    def run(self, stages: Sequence[ProcessingStage[Any, Any]], initial_tasks: Iterable[Task] | None = None, *,
            checkpoint_path: str | os.PathLike[str] | None = None, overwrite: bool = False,
            return_outputs: bool = True) -> PipelineResult:
        """Run the full lifecycle and return the outputs (a list) with failures and metrics.

        ``initial_tasks``: any iterable of tasks (a generator is read as the run needs it, never
        whole, unless a checkpoint or a barrier stage needs the whole source). ``return_outputs=False``:
        the last stage's outputs are dropped where they are made (never shipped to the driver); the
        result holds no tasks, only the failure records and the metrics.

        With ``checkpoint_path`` the run is resumable: finished source tasks (and finished barrier
        stages) are recorded in that directory, and a rerun with the same stages and initial tasks
        skips them and returns what one uninterrupted run returns (see
        :mod:`curator_exec_core.checkpoint`). ``overwrite=True`` discards a checkpoint written by
        another pipeline or other inputs instead of refusing it. Runs on one instance are serialized.
        """
        from curator_exec_core.run import Run

        with self._run_lock:
            return Run(self, stages, initial_tasks, checkpoint_path=checkpoint_path, overwrite=overwrite,
                       return_outputs=return_outputs).drive()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.executor_name!r}>"

"""The base of every Ray executor: one options class, one session, one capacity, one plan check."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import attrs

from curator_exec_core.capacity import Capacity
from curator_exec_core.config import ExecutorOptions, option
from curator_exec_core.errors import ConfigError
from curator_exec_core.executor import BaseExecutor
from curator_exec_core.gang import ManagedGang
from curator_exec_core.runner import ManagedStage
from curator_exec_core.shuffle import ManagedShuffle, split_at_barriers
from curator_exec_core.tasks import Task
from curator_exec_ray.cluster import cluster_capacity
from curator_exec_ray.placement import assign_nodes
from curator_exec_ray.session import RaySession, ensure_ray

__all__ = ["RayExecutorOptions", "RayTaskOptions", "RayExecutorBase"]


@attrs.define(kw_only=True)
class RayExecutorOptions(ExecutorOptions):
    """Options every Ray executor has (plus those of every executor)."""

    runtime_env: dict | None = option(
        None, dict,
        "Ray runtime_env (env_vars, pip, working_dir, ...): given to ray.init when this executor starts or "
        "connects to Ray, and to every worker it creates itself.", allow_none=True)
    include_dashboard: bool | None = option(
        None, bool,
        "Start Ray's dashboard when this executor starts Ray itself (about 2 s more start here). None: only "
        "if the engine needs it (xenna). No effect when attaching to a running Ray.", allow_none=True)
    reserved_cpus: float = option(0.0, float, "CPUs of the cluster the plan leaves free (for other work).", minimum=0)
    reserved_gpus: float = option(0.0, float, "GPUs of the cluster the plan leaves free.", minimum=0)
    max_workers_per_stage: int | None = option(
        None, int, "The most workers of any stage (None: as many as the plan gives it).", minimum=1, allow_none=True)
    teardown_timeout: float = option(
        60.0, float, "Seconds to wait for the workers' teardown at the end of a run before they are killed anyway.",
        minimum=0)


@attrs.define(kw_only=True)
class RayTaskOptions(RayExecutorOptions):
    """Options of a Ray executor that can run stages without lifecycle methods as Ray tasks."""

    stateless_as_tasks: bool = option(
        True, bool,
        "Run a stage that overrides none of setup, setup_on_node and teardown as Ray tasks on Ray's pooled "
        "worker processes instead of on actors of its own: nothing to start per run, nothing to tear down. "
        "False: every stage gets actors.")


class RayExecutorBase(BaseExecutor):
    """What the Ray executors share: attaching to Ray, per-node capacity, the planner's options,
    head-node placement, and stages checked picklable at plan time (Ray ships them)."""

    Options: ClassVar[type[ExecutorOptions]] = RayExecutorOptions
    #: shuffles run through the Ray layer with the data in the object store (gangs: the core's split)
    native_stage_kinds = frozenset({"shuffle"})
    #: the engine cannot work without Ray's dashboard (state API)
    needs_dashboard: ClassVar[bool] = False
    #: environment the Ray processes need when this executor starts Ray (set only around ``ray.init``)
    start_env: ClassVar[Mapping[str, str]] = {}

    def __init__(self, config: dict[str, Any] | None = None, ignore_head_node: bool = False, **options: Any) -> None:
        super().__init__(config, ignore_head_node, **options)
        if self.needs_dashboard and self.options.include_dashboard is False:
            raise ConfigError(f"executor {self.executor_name!r} needs Ray's dashboard (its state API): "
                              "leave include_dashboard unset or True")

    def ensure_ray(self) -> RaySession:
        """Attach to Ray (start a local one if none runs); see :mod:`curator_exec_ray.session`."""
        dashboard = self.options.include_dashboard
        return ensure_ray(self.options.runtime_env, start_env=self.start_env,
                          include_dashboard=self.needs_dashboard if dashboard is None else dashboard)

    def capacity(self) -> Capacity:
        """Per-node capacity of the Ray cluster (attaching first); honours ``ignore_head_node``."""
        self.ensure_ray()
        return cluster_capacity(ignore_head_node=self.ignore_head_node)

    def plan_options(self) -> dict[str, Any]:
        o = self.options
        return {"max_workers_per_stage": o.max_workers_per_stage, "reserved_cpus": o.reserved_cpus,
                "reserved_gpus": o.reserved_gpus}

    def stage_serializer(self) -> Callable[[Any], Any] | None:
        import ray.cloudpickle

        return ray.cloudpickle.dumps

    def execute(self, stages: list[ManagedStage], initial_tasks: list[Task]) -> list[Task]:
        """The plugin's ``execute_chunks`` on the tasks; with shuffle stages, :meth:`execute_parts`."""
        if any(isinstance(s, ManagedShuffle) for s in stages):
            return self.execute_parts(stages, initial_tasks)
        return self.execute_chunks(stages, [(initial_tasks, len(initial_tasks))], False)

    @abstractmethod
    def execute_chunks(self, stages: list[ManagedStage], chunks: list[tuple[Any, int]], to_chunks: bool) -> Any:
        """The map ``stages`` on ``chunks`` (``(tasks, count)``, the tasks a list in the driver or an
        object ref of one): the last stage's outputs as a list in the driver, or (``to_chunks``) as
        such chunks left in the object store."""

    def execute_parts(self, stages: list[ManagedStage], tasks: list[Task]) -> list[Task]:
        """Run a pipeline that holds shuffle stages with its data in the object store from part to
        part: the map parts through :meth:`execute_chunks`, the shuffles through
        :mod:`curator_exec_ray.shuffle`. Only the last part's outputs reach the driver."""
        from curator_exec_ray.chunking import put_chunks
        from curator_exec_ray.shuffle import shuffle_chunks

        data: Any = put_chunks(tasks, max(s.num_workers() or 1 for s in stages))
        parts = split_at_barriers(stages)
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if not data:
                return []
            if isinstance(part, ManagedShuffle):
                data = shuffle_chunks(self, part, data, last)
            else:
                data = self.execute_chunks(part, data, not last)
        return data

    def check_shared_path(self, path: str) -> None:
        """Every node writes a marker in the checkpoint directory that the driver reads (bounded, see
        :func:`curator_exec_ray.cluster.check_shared_path`)."""
        from curator_exec_ray.cluster import check_shared_path

        self.ensure_ray()
        check_shared_path(path)

    def run_shuffle(self, stage: ManagedShuffle, tasks: list[Task]) -> list[Task]:
        """A shuffle stage on Ray: keyed pieces in the object store, reduced on the stage's workers
        (see :mod:`curator_exec_ray.shuffle`)."""
        from curator_exec_ray.shuffle import run_shuffle

        return run_shuffle(self, stage, tasks)

    def run_gang(self, stage: ManagedGang, tasks: list[Task]) -> list[Task]:
        """A gang stage on Ray: its ranks as actors in one placement group (:mod:`curator_exec_ray.gang`)."""
        from curator_exec_ray.gang import run_gang

        return run_gang(self, stage, tasks)

    def placement(self, stages: Sequence[ManagedStage]) -> list[list[str | None]] | None:
        """A node for each planned worker when workers must be pinned (``ignore_head_node``), else None."""
        if not self.ignore_head_node:
            return None
        plan = self.current_plan
        return assign_nodes(stages, plan.capacity if plan is not None else self.capacity())

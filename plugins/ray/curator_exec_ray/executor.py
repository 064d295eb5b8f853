"""The base of every Ray executor: one options class, one session, one capacity, one schedule,
one plan check, and the segment loop with the data in the object store between segments."""

from __future__ import annotations

import logging
from abc import abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, ClassVar

import attrs

from curator_exec_core.capacity import Capacity
from curator_exec_core.checkpoint import StoredBlock, loaded
from curator_exec_core.config import ExecutorOptions, option
from curator_exec_core.errors import ConfigError
from curator_exec_core.executor import BaseExecutor
from curator_exec_core.planning import ExecutionPlan
from curator_exec_core.run import Run
from curator_exec_core.runner import ManagedStage
from curator_exec_core.runner.segments import BarrierSegment, MapSegment, run_segments, split_segments
from curator_exec_core.scheduling import Schedule
from curator_exec_core.tasks import Task
from curator_exec_ray import engine_logs
from curator_exec_ray.chunking import TaskChunk, put_chunks
from curator_exec_ray.cluster import cluster_capacity, head_node_ids
from curator_exec_ray.context import RayRun
from curator_exec_ray.placement import assign_nodes
from curator_exec_ray.session import RaySession, ensure_ray

__all__ = ["RayExecutorOptions", "RayTaskOptions", "RayExecutorBase", "RAY_BARRIERS"]

logger = logging.getLogger("curator_exec.ray")


@attrs.define(kw_only=True)
class RayExecutorOptions(ExecutorOptions):
    """Options every Ray executor has (plus those of every executor)."""

    runtime_env: dict[str, Any] | None = option(
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
    actor_start_timeout: float = option(
        300.0, float, "Seconds a stage's workers (actors, a gang's placement group, reduce workers) may take to "
        "start before the run fails, instead of hanging when Ray cannot place them.", minimum=0)
    placement_warning_s: float | None = option(
        30.0, float, "Seconds a stage's workers (actors, a gang's placement group, reduce workers) may wait for Ray "
        "to place them before a warning names the stage, what each worker asks for and what the cluster has free; "
        "repeated every placement_warning_s until they start or actor_start_timeout fails the run. 0 or None: no "
        "warning.", minimum=0, allow_none=True)
    teardown_timeout: float = option(
        60.0, float, "Seconds to wait for the workers' teardown at the end of a run before they are killed anyway.",
        minimum=0)
    engine_logs: str = option(
        "file", str, "'file': the engines' own log lines below ERROR (Ray's, Ray Data's, Xenna's, their workers') "
        "go to <Ray session dir>/logs/curator_exec/driver-<pid>.log, not to the console (errors are printed "
        "too); 'console': printed as the engines print them.", choices=("file", "console"))


@attrs.define(kw_only=True)
class RayTaskOptions(RayExecutorOptions):
    """Options of a Ray executor that can run stages without lifecycle methods as Ray tasks."""

    stateless_as_tasks: bool = option(
        True, bool,
        "Run a stage that overrides none of setup, setup_on_node and teardown as Ray tasks on Ray's pooled "
        "worker processes instead of on actors of its own: nothing to start per run, nothing to tear down. "
        "False: every stage gets actors.")


def _run_shuffle(ray_run: RayRun, stage: ManagedStage, tasks: list[Task]) -> list[Task]:
    from curator_exec_ray.shuffle import run_shuffle

    return run_shuffle(ray_run, stage, tasks)  # type: ignore[arg-type]


def _run_gang(ray_run: RayRun, stage: ManagedStage, tasks: list[Task]) -> list[Task]:
    from curator_exec_ray.gang import run_gang

    return run_gang(ray_run, stage, tasks)  # type: ignore[arg-type]


#: how the Ray layer runs a barrier stage of each kind (a kind not here runs the core's default)
RAY_BARRIERS: dict[str, Callable[[RayRun, ManagedStage, list[Task]], list[Task]]] = {
    "shuffle": _run_shuffle, "gang": _run_gang}

#: input tasks put into the object store at a time when a barrier's input comes as a stream
STREAM_WINDOW = 1_000


def barrier_chunks(ray_run: RayRun, stage: ManagedStage, chunks: list[TaskChunk], last: bool) -> Any:
    """A barrier stage of a kind in :data:`RAY_BARRIERS` on its whole input as chunks: its outputs as
    chunks left in the object store, or (``last``) as tasks in the driver."""
    if stage.kind == "gang":
        from curator_exec_ray.gang import gang_chunks

        return gang_chunks(ray_run, stage, chunks, last)  # type: ignore[arg-type]
    from curator_exec_ray.shuffle import shuffle_chunks

    return shuffle_chunks(ray_run, stage, chunks, last)  # type: ignore[arg-type]


def _fetched(chunks: list[TaskChunk]) -> Iterator[Task]:
    """The tasks of ``chunks``, fetched one chunk at a time (and each let go once handed out)."""
    chunks.reverse()
    while chunks:
        yield from chunks.pop().resolve()


class RayExecutorBase(BaseExecutor):
    """What the Ray executors share: attaching to Ray, per-node capacity, the planner's options,
    the schedule (workers off the head node), stages checked picklable at plan time (Ray ships
    them), barrier stages on Ray, and the run's :class:`RayRun`.

    A plugin implements :meth:`execute_chunks`: the map stages of one segment on chunks of tasks."""

    Options: ClassVar[type[RayExecutorOptions]] = RayExecutorOptions
    #: the validated options (of ``Options``, a :class:`RayExecutorOptions` subclass)
    options: RayExecutorOptions
    #: shuffles and gangs run through the Ray layer with the data in the object store (with a
    #: checkpoint: the core's split, then :data:`RAY_BARRIERS`)
    native_stage_kinds = frozenset({"shuffle", "gang"})
    #: a checkpointed run's saved barrier outputs are loaded by Ray tasks (:mod:`curator_exec_ray.saving`)
    loads_stored_blocks = True
    #: the engine cannot work without Ray's dashboard (state API)
    needs_dashboard: ClassVar[bool] = False
    #: environment the Ray processes need when this executor starts Ray (set only around ``ray.init``)
    start_env: ClassVar[Mapping[str, str]] = {}
    #: the engine starts each planned worker where the driver says (actors pinned to nodes); if not
    #: (Ray Data, Xenna place their workers themselves), the default schedule only excludes nodes and a
    #: stage pinned by a schedule wrapper is kept on the set of nodes it was pinned to
    pins_workers: ClassVar[bool] = True

    def __init__(self, config: dict[str, Any] | None = None, ignore_head_node: bool = False, **options: Any) -> None:
        super().__init__(config, ignore_head_node, **options)
        if self.needs_dashboard and self.options.include_dashboard is False:
            raise ConfigError(f"executor {self.executor_name!r} needs Ray's dashboard (its state API): "
                              "leave include_dashboard unset or True")

    def ensure_ray(self) -> RaySession:
        """Attach to Ray (start a local one if none runs); see :mod:`curator_exec_ray.session`."""
        dashboard = self.options.include_dashboard
        engine_logs.divert(self.options.engine_logs)  # Ray's start-up lines too
        session = ensure_ray(self.options.runtime_env, start_env=self.start_env,
                             include_dashboard=self.needs_dashboard if dashboard is None else dashboard)
        engine_logs.settle()
        return session

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

        dumps: Callable[[Any], Any] = ray.cloudpickle.dumps
        return dumps

    def schedule(self, plan: ExecutionPlan) -> Schedule:
        """With ``ignore_head_node``, a node off the head for every planned worker (spread, GPU nodes
        kept for GPU stages; an engine that places its workers itself gets the head excluded instead);
        else Ray places them."""
        if not self.ignore_head_node:
            return Schedule.unpinned(plan)
        heads = head_node_ids()
        if not self.pins_workers:
            return Schedule.unpinned(plan, excluded=heads)
        return Schedule.from_nodes(plan, assign_nodes(plan.stages, plan.capacity), excluded=heads)

    def ray_run(self, stages: Sequence[ManagedStage]) -> RayRun:
        """The Ray layer's view of the run ``stages`` belong to."""
        o = self.options
        run = Run.of(stages)
        run.defer(lambda error: _remove_run_dirs(run.id), key="curator_exec_ray.run_dirs")
        if engine_logs.diverting() and engine_logs.log_path():
            run.info.setdefault("engine_log", engine_logs.log_path())
        return RayRun(run=run, runtime_env=o.runtime_env, start_timeout=o.actor_start_timeout,
                      teardown_timeout=o.teardown_timeout, show_progress=o.show_progress,
                      progress_interval=o.progress_interval, ensure_ray=self.ensure_ray,
                      placement_warning_s=o.placement_warning_s)

    def execute(self, stages: list[ManagedStage], initial_tasks: list[Task]) -> list[Task]:
        """The plugin's :meth:`execute_chunks` on the tasks; with shuffle stages, the segments with
        their data in the object store from segment to segment (only the last one's outputs reach
        the driver)."""
        if not self.is_prepared(stages):  # called directly with plain stages: the whole lifecycle
            return self.execute_unprepared(stages, initial_tasks)
        try:
            return self._execute(stages, initial_tasks)
        except BaseException:
            if engine_logs.diverting() and engine_logs.log_path():
                logger.warning("the engines' own log lines of this run are in %s", engine_logs.log_path())
            raise

    def _execute(self, stages: list[ManagedStage], initial_tasks: list[Task]) -> list[Task]:
        ray_run = self.ray_run(stages)
        segments = split_segments(stages)
        if len(segments) == 1 and isinstance(segments[0], MapSegment):
            if ray_run.run.checkpoint is not None:  # the core reads them as it goes
                from curator_exec_ray.saving import stored_chunks

                stored: list[TaskChunk] = self.execute_chunks(stages, stored_chunks(ray_run, stages[0], initial_tasks),
                                                              True)
                barrier = ray_run.run.next_barrier(stages)
                if barrier is not None and barrier.kind in RAY_BARRIERS:  # into our stream_barrier as they are
                    return stored  # type: ignore[return-value]
                return _fetched(stored)  # type: ignore[return-value]  # fetched chunk by chunk
            outputs: list[Task] = self.execute_chunks(stages, [TaskChunk(initial_tasks)], False)
            return outputs
        self.ensure_ray()
        data = put_chunks(initial_tasks, max(s.num_workers() or 1 for s in stages))

        def run_map(segment: MapSegment, chunks: list[TaskChunk], last: bool) -> Any:
            return self.execute_chunks(list(segment.stages), chunks, not last)

        def run_barrier(segment: BarrierSegment, chunks: list[TaskChunk], last: bool) -> Any:
            return barrier_chunks(ray_run, segment.stage, chunks, last)

        # chunks between segments; the last segment's outputs as tasks or as chunks
        out: list[Any] = run_segments(segments, data, run_map=run_map, run_barrier=run_barrier)
        return out if out and isinstance(out[0], Task) else [t for c in out for t in c.resolve()]

    @abstractmethod
    def execute_chunks(self, stages: list[ManagedStage], chunks: list[TaskChunk], to_chunks: bool) -> Any:
        """The map ``stages`` (one segment) on ``chunks``: the last stage's outputs as a list of tasks
        in the driver, or (``to_chunks``) as :class:`TaskChunk` objects left in the object store.
        Every stage's counts must reach the run's stats (``self.ray_run(stages).report_all``): workers
        return them with their outputs (``ManagedStage.process_counted``)."""

    def run_barrier(self, stage: ManagedStage, tasks: list[Task]) -> list[Task]:
        """A barrier stage on Ray (:data:`RAY_BARRIERS`: shuffles keyed in the object store, gangs as
        actors of one placement group); another kind: the core's default."""
        runner = RAY_BARRIERS.get(stage.kind)
        if runner is None:
            return super().run_barrier(stage, tasks)
        ray_run = self.ray_run([stage])
        return runner(ray_run, stage, tasks)

    def stream_barrier(self, stage: ManagedStage, tasks: Iterable[Task]) -> Iterable[Task]:
        """A barrier stage on Ray in a run whose segments stream (a checkpointed run): its input goes
        into the object store as it comes (:data:`STREAM_WINDOW` tasks at a time); its outputs are
        saved into the checkpoint by Ray workers where they are (:mod:`curator_exec_ray.saving`: the
        driver gets block references), or else fetched chunk by chunk as the run reads them, so the
        driver holds a window, never the data."""
        if stage.kind not in RAY_BARRIERS:
            return super().stream_barrier(stage, loaded(tasks))
        from curator_exec_ray.saving import stored_chunks

        ray_run = self.ray_run([stage])
        self.ensure_ray()
        widest = stage.num_workers() or 1
        chunks: list[TaskChunk] = []
        window: list[Task] = []
        stored: list[StoredBlock] = []
        for task in tasks:
            if isinstance(task, TaskChunk):  # a map segment's outputs left in the object store (next_barrier)
                chunks.append(task)
                continue
            if isinstance(task, StoredBlock):  # a saved barrier's outputs block, loaded by a worker
                stored.append(task)
                continue
            window.append(task)
            if len(window) >= STREAM_WINDOW:
                chunks += put_chunks(window, widest)
                window = []
        if window:
            chunks += put_chunks(window, widest)
        del window
        chunks += stored_chunks(ray_run, stage, stored)  # in lanes (a barrier after a checkpointed barrier)
        if not chunks:
            return []
        out: list[TaskChunk] = barrier_chunks(ray_run, stage, chunks, False)
        store = ray_run.run.barrier_store(stage)
        if store is not None:  # saved into the checkpoint where they are: the driver gets block references
            from curator_exec_ray.saving import save_chunks

            return save_chunks(ray_run, stage, out, store)  # type: ignore[return-value]
        return _fetched(out)

    def check_shared_path(self, path: str) -> None:
        """Every node writes a marker in the checkpoint directory that the driver reads (bounded, see
        :func:`curator_exec_ray.cluster.check_shared_path`)."""
        from curator_exec_ray.cluster import check_shared_path

        self.ensure_ray()
        check_shared_path(path)

    def placement(self, stages: Sequence[ManagedStage]) -> list[list[str | None]] | None:
        """The schedule's node for every worker of ``stages``, or None where Ray places them all."""
        return self.ray_run(stages).placement(stages)


def _remove_run_dirs(run_id: str) -> None:
    from curator_exec_ray.cluster import remove_run_dirs

    remove_run_dirs(run_id)

"""The ``ray_data`` executor: a pipeline as one Ray Data streaming dataset.

How a run maps onto Ray Data:

* **Blocks carry chunks of tasks.** Tasks are pickled in chunks of
  ``tasks_per_block`` into a one-column Arrow table (one row = one chunk = one
  block), so Ray Data's per-block cost is paid per chunk, not per task.
* **One actor pool per stage with lifecycle methods.** Each such stage is a ``map_batches`` over the callable
  class :class:`StageWorker` with ``compute=ActorPoolStrategy(size=workers)``,
  ``num_cpus``/``num_gpus`` from the core's plan. The actor holds the core's
  :class:`~curator_exec_core.runner.ManagedStage` across batches: its constructor
  runs ``setup`` (and ``setup_on_node`` once per node, through the core's file
  lock); every batch goes through ``ManagedStage.process_batch``, which re-batches
  to the stage's own ``batch_size`` and implements ids, retries and failure records.
* **Stages without lifecycle methods are task maps** (``stateless_as_tasks``, on
  by default): a stage that overrides none of ``setup``, ``setup_on_node`` and
  ``teardown`` is a ``map_batches`` over the function :func:`process_block_task`
  with ``compute=TaskPoolStrategy(size=workers x max_tasks_in_flight_per_actor)``
  (``size=workers`` when the stage's size is explicit). Ray runs those tasks on
  its pooled worker processes, which outlive the run, so a second run starts no
  actor. Such maps are kept from fusing with their neighbours (a fused fan-out
  stage would run all its output through the next stage inside one task).
* **Outputs are re-chunked** by each stage (at most ``tasks_per_block`` tasks and
  ``max_block_bytes`` bytes per block), and every chunk is its own block, so a
  fan-out stage's output spreads over the next stage's actors.
* **Teardown is explicit.** Ray Data ends its actors on its own schedule (when
  their handles go out of scope; a callable class's ``__del__`` may never run,
  and a failed dataset can keep its actors alive until it is garbage-collected).
  So a Ray Data execution callback holds the handles of the run's actor pools;
  when the dataset is consumed, or fails, the driver calls ``teardown`` in every
  actor (``__ray_call__``, queued behind any constructor still running ``setup``)
  and kills them: ``teardown`` runs once per actor also after a failure, and no
  actor outlives the run. Should the callback not find the pools (a future Ray
  Data), the actors still tear down when they exit (``__del__``, then ``atexit``).
* **Progress** is counted where the work happens and travels with the chunks:
  each chunk carries the per-stage (tasks in, tasks out) counts of its lineage,
  which the driver adds to ``self.progress`` as the final stage's output is
  consumed.
* Ray Data settings (progress bars, order, block shaping) are set on a *copy*
  of the current ``DataContext`` for the duration of the run only.
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import pickle
import threading
import uuid
import warnings
import weakref
from collections.abc import Iterator, Sequence
from typing import Any

import attrs

from curator_exec_core import ray_session
from curator_exec_core.capacity import Capacity
from curator_exec_core.config import ExecutorOptions, option
from curator_exec_core.errors import ConfigError, StageFailedError
from curator_exec_core.executor import BaseExecutor, prepare_initial_tasks
from curator_exec_core.runner import ManagedStage
from curator_exec_core.stages import ProcessingStage, WorkerMetadata
from curator_exec_core.tasks import Task

__all__ = ["RayDataExecutor", "RayDataOptions", "StageWorker"]

logger = logging.getLogger("curator_exec.ray_data")

# Ray Data warns when a pool has more actors than the blocks it received (a filter upstream
# emptied the stream, a short input): expected here, and not actionable by the user.
warnings.filterwarnings("ignore", message=r"The minimum number of concurrent actors for 'MapBatches\(StageWorker\)'",
                        category=UserWarning)

#: the one column of every block: pickled ``(counts, [Task, ...])`` chunks
COLUMN = "tasks"
#: auto block sizing: at least this many blocks per run (or 4 per worker of the widest stage)
MIN_BLOCKS = 16
#: auto block sizing: at most this many tasks per block
MAX_AUTO_TASKS_PER_BLOCK = 1000
_PROTOCOL = pickle.HIGHEST_PROTOCOL


@attrs.define(kw_only=True)
class RayDataOptions(ExecutorOptions):
    """Options of the ``ray_data`` executor (on top of those every executor has)."""

    runtime_env: dict | None = option(
        None, dict,
        "Ray runtime environment for the stage actors (passed to ray.init when this executor starts or "
        "connects to Ray, and to every map_batches actor pool).",
        allow_none=True,
    )
    include_dashboard: bool = ray_session.include_dashboard_option()
    stateless_as_tasks: bool = option(
        True, bool,
        "Map a stage that overrides none of setup, setup_on_node and teardown with Ray Data tasks "
        "(TaskPoolStrategy) instead of an actor pool: no actors to start per run (about 1 s) and nothing to "
        "tear down. False: every stage gets an actor pool.",
    )
    fuse_stages: bool = option(
        True, bool,
        "Let Ray Data fuse consecutive task-mapped stages with the same resources into one task per block (no "
        "hand-off between them) when the run starts with enough blocks to keep every worker busy (at least "
        f"{MIN_BLOCKS}, and 2 per worker of the widest stage). With fewer, or for a stage with an explicit size, "
        "stages stay apart, so a fan-out stage's output still spreads over the next stage's workers.",
    )
    preserve_order: bool = option(
        False, bool,
        "Keep the output in input order (DataContext.execution_options.preserve_order). Costs throughput "
        "when tasks take uneven time.",
    )
    tasks_per_block: int | None = option(
        None, int,
        "Tasks per Ray Data block (each block is one pickled chunk of tasks). None: automatic, "
        f"about {MIN_BLOCKS} blocks per run or 4 per worker of the widest stage, at most "
        f"{MAX_AUTO_TASKS_PER_BLOCK} tasks per block; a stage's large output is split the same way.",
        minimum=1, allow_none=True,
    )
    max_block_bytes: int = option(
        16 * 1024**2, int,
        "Split a stage's output into more blocks when a pickled chunk would exceed this many bytes.",
        minimum=1024,
    )
    max_workers_per_stage: int | None = option(
        None, int, "Cap on the actors of an automatically sized stage (the plan's workers).",
        minimum=1, allow_none=True,
    )
    reserved_cpus: float = option(0.0, float, "CPUs of the cluster the plan leaves free (for other work).", minimum=0)
    reserved_gpus: float = option(0.0, float, "GPUs of the cluster the plan leaves free.", minimum=0)
    max_tasks_in_flight_per_actor: int = option(
        2, int, "Blocks queued on one stage actor at a time (ActorPoolStrategy.max_tasks_in_flight_per_actor).",
        minimum=1,
    )
    backpressure: bool | None = option(
        None, bool,
        "Ray Data's backpressure policies (they bound the blocks queued between stages, and delay every task "
        "launch by about 0.2 s on a small machine). None: automatic, off when the whole pipeline fuses into "
        "one task map (no queue between stages to bound), on otherwise. True/False: always on/off.",
        allow_none=True,
    )
    ray_progress_bars: bool = option(
        False, bool,
        "Also show Ray Data's own per-operator progress bars (only when show_progress is True).",
    )
    teardown_timeout: float = option(
        300.0, float, "Seconds to wait for the stage actors' teardown after a run before killing them.",
        minimum=0,
    )
    data_context: dict = option(
        {}, dict,
        "Extra ray.data.DataContext attributes for this run only, e.g. {'execution_no_progress_timeout_s': 600}. "
        "Unknown attribute names are an error.",
    )


class RayDataExecutor(BaseExecutor):
    """Runs a pipeline on Ray Data's streaming executor, one actor pool per stage.

    ``RayDataExecutor(config=None, ignore_head_node=False, **options)``; see
    :class:`RayDataOptions` and ``docs/executors/ray_data.md``.
    """

    name = "ray_data"
    Options = RayDataOptions
    concurrent_stages = True

    def __init__(self, config: dict[str, Any] | None = None, ignore_head_node: bool = False, **options: Any) -> None:
        super().__init__(config, ignore_head_node, **options)
        self.options: RayDataOptions
        if self.options.data_context:
            _check_data_context_keys(self.options.data_context)
        self._lock = threading.Lock()
        self._runs: list[_RunActors] = []

    # -- phases ----------------------------------------------------------------------
    def _ensure_ray(self) -> ray_session.RaySession:
        session = ray_session.ensure_ray(self.options.runtime_env, include_dashboard=self.options.include_dashboard)
        if session.how == "started" and session.token not in _warmed:
            _warmed.add(session.token)
            _warm_workers()
        return session

    def capacity(self) -> Capacity:
        """The Ray cluster, node by node (a probe task per node; GPUs through NVML there).

        The probe result is reused while the cluster's nodes and their resources stay the same.
        """
        global _capacity_cache
        self._ensure_ray()
        key = (_nodes_signature(), self.ignore_head_node, os.environ.get(ray_session.NVML_MODULE_ENV))
        cached = _capacity_cache
        if cached is not None and cached[0] == key:
            return cached[1]
        capacity = ray_session.cluster_capacity(ignore_head_node=self.ignore_head_node)
        _capacity_cache = (key, capacity)
        return capacity

    def plan_options(self) -> dict[str, Any]:
        o = self.options
        return {"max_workers_per_stage": o.max_workers_per_stage, "reserved_cpus": o.reserved_cpus,
                "reserved_gpus": o.reserved_gpus}

    def execute(self, stages: list[ProcessingStage], initial_tasks: list[Task] | None = None) -> list[Task]:
        managed = self.managed_stages(stages, self.current_plan if _plan_matches(self.current_plan, stages) else None)
        tasks = prepare_initial_tasks(initial_tasks)
        if not tasks:
            return []
        self._ensure_ray()
        import ray
        from ray.data import ActorPoolStrategy, DataContext, TaskPoolStrategy

        o = self.options
        per_block = o.tasks_per_block or auto_tasks_per_block(len(tasks), managed)
        auto = o.tasks_per_block is None
        run = _RunActors.start()
        with self._lock:
            self._runs.append(run)
        remote_args = self._remote_args()
        n_stages = len(managed)
        outputs: list[Task] = []
        payloads = list(_chunks(tasks, None, per_block, o.max_block_bytes))
        widest = max(st.num_workers() or 1 for st in managed)
        may_fuse = o.fuse_stages and len(payloads) >= max(MIN_BLOCKS, 2 * widest)
        shapes = [self._task_map_shape(st, may_fuse) for st in managed]
        one_map = len(set(shapes)) == 1 and shapes[0] is not None  # every stage fuses into one task map
        backpressure = o.backpressure if o.backpressure is not None else not one_map
        ctx = self._data_context(run, backpressure)
        try:
            with DataContext.current(ctx):
                # from_items builds the blocks here (from_arrow would run a metadata task on a worker)
                ds = ray.data.from_items([{COLUMN: p} for p in payloads], override_num_blocks=len(payloads))
                for stage in managed:
                    workers = stage.num_workers() or 1
                    if stage.index == 0:  # more actors than initial blocks would idle
                        workers = min(workers, len(payloads))
                    plan = stage.plan
                    cpus = plan.resources.cpus if plan is not None else stage.resources.cpus
                    gpus = plan.resources.gpus if plan is not None else stage.resources.gpus
                    common = {"batch_size": max(1, math.ceil(stage.batch_size / per_block)),
                              "batch_format": "pyarrow", "zero_copy_batch": True, "num_cpus": cpus,
                              "num_gpus": gpus or None, **remote_args}
                    args = (stage, n_stages, per_block, auto, o.max_block_bytes)
                    if o.stateless_as_tasks and not stage.has_lifecycle:
                        # Up to workers x in-flight tasks at once (one per worker for an explicitly sized
                        # stage). Unless fusing is safe (enough initial blocks; no explicit size),
                        # ray_remote_args_fn keeps Ray Data from fusing this map with its neighbours:
                        # fused, a fan-out stage's whole output would run through the next stage inside
                        # one task, and each stage's size would be lost.
                        size = self._task_pool_size(stage, workers)
                        if stage.index == 0:
                            size = min(size, len(payloads))  # more would idle (and Ray Data warns)
                        if shapes[stage.index] is None:
                            common["ray_remote_args_fn"] = _no_extra_remote_args
                        with warnings.catch_warnings():  # ray_remote_args_fn: deprecated, kept until Ray 2.64
                            warnings.simplefilter("ignore")
                            ds = ds.map_batches(process_block_task, fn_args=args,
                                                compute=TaskPoolStrategy(size=size), **common)
                    else:
                        ds = ds.map_batches(
                            StageWorker, fn_constructor_args=args,
                            compute=ActorPoolStrategy(size=workers,
                                                      max_tasks_in_flight_per_actor=o.max_tasks_in_flight_per_actor),
                            **common)
                for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=1):
                    for payload in batch.column(COLUMN).to_pylist():
                        counts, chunk = pickle.loads(payload)
                        if counts:
                            self._report(counts, n_stages)
                        outputs.extend(chunk)
        except Exception as exc:
            # Ray wraps the stage's StageFailedError (RayTaskError(StageFailedError), with Ray's
            # traceback as its message): raise the core's own error, chained to Ray's.
            error = _plain_stage_error(exc)
            if error is not None and error is not exc:
                raise error from exc
            raise
        finally:
            self._finish_run(run)
        return outputs

    def teardown(self) -> None:
        """Tear down and kill what a run left behind (normally nothing: execute() cleans up itself)."""
        with self._lock:
            runs = list(self._runs)
        for run in runs:
            self._finish_run(run)

    # -- helpers ------------------------------------------------------------------
    def _task_pool_size(self, stage: ManagedStage, workers: int) -> int:
        """Tasks of a task-mapped stage at once: workers x in-flight, or exactly the workers if sized explicitly."""
        return workers if self.explicit_size(stage) else workers * self.options.max_tasks_in_flight_per_actor

    def _task_map_shape(self, stage: ManagedStage, may_fuse: bool) -> tuple | None:
        """What Ray Data compares before fusing two task maps; None if this stage must stay its own operator."""
        if not (self.options.stateless_as_tasks and may_fuse) or stage.has_lifecycle or self.explicit_size(stage):
            return None
        res = stage.plan.resources if stage.plan is not None else stage.resources
        workers = stage.num_workers() or 1
        return (res.cpus, res.gpus, self._task_pool_size(stage, workers))

    def _remote_args(self) -> dict[str, Any]:
        import ray

        args: dict[str, Any] = {}
        env = self.options.runtime_env
        if env:
            args["runtime_env"] = dict(env)
        if self.ignore_head_node:
            heads = [n["NodeID"] for n in ray_session.alive_nodes()
                     if ray_session.HEAD_RESOURCE in n.get("Resources", {})]
            if heads:
                key = getattr(ray._raylet, "RAY_NODE_ID_KEY", "ray.io/node-id")
                args["label_selector"] = {key: "!" + heads[0] if len(heads) == 1 else "!in(" + ", ".join(heads) + ")"}
        return args

    def _data_context(self, run: _RunActors, backpressure: bool = True) -> Any:
        from ray.data import DataContext

        from curator_exec_raydata._callback import KeepActorsAlive

        o = self.options
        with warnings.catch_warnings():  # copying touches deprecated attributes
            warnings.simplefilter("ignore", DeprecationWarning)
            ctx = DataContext.get_current().copy()
        bars = o.show_progress and o.ray_progress_bars
        ctx.enable_progress_bars = bars
        ctx.enable_operator_progress_bars = bars
        ctx.print_on_execution_start = bars
        ctx.enable_auto_log_stats = False
        ctx.execution_options.preserve_order = o.preserve_order
        # Every chunk a stage yields becomes its own block (the chunks are sized by us).
        ctx.target_max_block_size = 1
        # Failures are the core's business: the first error that reaches Ray Data ends the run.
        ctx.max_errored_blocks = 0
        if not backpressure:
            # Ray Data reads its policy list from this config key (see ray.data._internal.execution.
            # backpressure_policy); an empty list switches its backpressure off for this run only.
            ctx.set_config("backpressure_policies.enabled", [])
        ctx.actor_init_retry_on_errors = False
        ctx.custom_execution_callback_classes = [*ctx.custom_execution_callback_classes, KeepActorsAlive]
        ctx.set_config(_RUN_KEY, run.token)
        for key, value in o.data_context.items():
            setattr(ctx, key, value)
        return ctx

    def _report(self, counts: Sequence[int], n_stages: int) -> None:
        if self.progress is None:
            return
        for i in range(n_stages):
            t_in, t_out = counts[2 * i], counts[2 * i + 1]
            if t_in or t_out:
                self.progress.add(i, t_in, t_out)

    def _finish_run(self, run: _RunActors) -> None:
        with self._lock:
            if run not in self._runs:
                return
            self._runs.remove(run)
        problems = run.finish(self.options.teardown_timeout)
        for problem in problems:
            logger.error("ray_data: %s", problem)


_capacity_cache: tuple[Any, Capacity] | None = None


#: sessions (started by this process) whose worker pool was warmed
_warmed: set[Any] = set()


def _import_ray_data() -> None:
    import ray.data  # noqa: F401  (pyarrow, pandas come with it)

    import curator_exec_raydata.executor  # noqa: F401


def _warm_workers() -> None:
    """On a Ray this process just started: let its idle worker processes import Ray Data now.

    Fire and forget, one task per CPU; they run while the driver imports Ray Data and
    plans, instead of inside the first run's first tasks (about 1 s each here).
    """
    import ray

    try:
        fn = ray.remote(num_cpus=1, max_retries=0)(_import_ray_data)
        for _ in range(max(1, int(ray.cluster_resources().get("CPU", 1)))):
            fn.remote()
    except Exception as exc:  # only a speed-up
        logger.debug("ray_data: warming the workers failed: %r", exc)


def _nodes_signature() -> tuple:
    return tuple(sorted((n["NodeID"], tuple(sorted(n.get("Resources", {}).items())))
                        for n in ray_session.alive_nodes()))


def _plain_stage_error(exc: BaseException) -> StageFailedError | None:
    """The StageFailedError a stage raised, as the core made it (not Ray's wrapper class)."""
    from ray.exceptions import RayError

    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        cur = todo.pop(0)
        if cur is None or id(cur) in seen:
            continue
        seen.add(id(cur))
        if isinstance(cur, StageFailedError) and not isinstance(cur, RayError):
            return cur
        todo += [getattr(cur, "cause", None), cur.__cause__, cur.__context__]
    return None


def _plan_matches(plan: Any, stages: Sequence[ProcessingStage]) -> bool:
    return plan is not None and len(plan.stages) == len(stages)


def _check_data_context_keys(values: dict) -> None:
    import dataclasses

    from ray.data import DataContext

    known = {f.name for f in dataclasses.fields(DataContext)}
    unknown = sorted(str(k) for k in values if k not in known)
    if unknown:
        from curator_exec_core.errors import did_you_mean

        hints = [f"{k!r}" + (f" (did you mean {h!r}?)" if (h := did_you_mean(k, sorted(known))) else "") for k in unknown]
        raise ConfigError(f"option 'data_context': unknown DataContext attribute(s) {', '.join(hints)}")


def auto_tasks_per_block(n_tasks: int, stages: Sequence[ManagedStage]) -> int:
    """Tasks per block for ``n_tasks`` initial tasks: enough blocks to keep every actor busy."""
    widest = max([s.num_workers() or 1 for s in stages] or [1])
    target_blocks = max(MIN_BLOCKS, 4 * widest)
    return max(1, min(MAX_AUTO_TASKS_PER_BLOCK, math.ceil(n_tasks / target_blocks)))


# -- chunks of tasks ------------------------------------------------------------------------


def _table(payloads: list[bytes]) -> Any:
    import pyarrow as pa

    return pa.Table.from_arrays([pa.array(payloads, type=pa.large_binary())], names=[COLUMN])


def _fit(counts: list[int] | None, part: list[Task], max_bytes: int) -> Iterator[bytes]:
    data = pickle.dumps((counts, part), protocol=_PROTOCOL)
    if len(data) <= max_bytes or len(part) <= 1:
        yield data
        return
    pieces = min(len(part), math.ceil(len(data) / max_bytes))
    size = math.ceil(len(part) / pieces)
    for j, start in enumerate(range(0, len(part), size)):
        yield from _fit(counts if j == 0 else None, part[start:start + size], max_bytes)


def _chunks(tasks: list[Task], counts: list[int] | None, per_block: int, max_bytes: int) -> Iterator[bytes]:
    """Pickled ``(counts, tasks)`` chunks; ``counts`` travel with the first chunk only."""
    if not tasks:
        if counts and any(counts):
            yield pickle.dumps((counts, []), protocol=_PROTOCOL)
        return
    for j, start in enumerate(range(0, len(tasks), per_block)):
        yield from _fit(counts if j == 0 else None, tasks[start:start + per_block], max_bytes)


# -- the actor side -------------------------------------------------------------------------

#: in each actor process: the StageWorkers living there (weakly held, so ``__del__`` can run)
_LIVE: weakref.WeakSet[StageWorker] = weakref.WeakSet()
_atexit_registered = False


def process_block(stage: ManagedStage, n_stages: int, per_block: int, auto: bool, max_bytes: int,
                  batch: Any) -> Iterator[Any]:
    """One Ray Data batch (rows of pickled chunks) through ``stage``; yields the output as one-chunk blocks."""
    counts = [0] * (2 * n_stages)
    tasks: list[Task] = []
    for payload in batch.column(COLUMN).to_pylist():
        c, chunk = pickle.loads(payload)
        if c:
            counts = [a + b for a, b in zip(counts, c, strict=True)]
        tasks.extend(chunk)
    out = stage.process_batch(tasks) if tasks else []
    i = stage.index
    counts[2 * i] += len(tasks)
    counts[2 * i + 1] += len(out)
    size = per_block
    if auto:  # a large output (fan-out from one small chunk) still spreads over enough blocks
        size = max(size, min(MAX_AUTO_TASKS_PER_BLOCK, math.ceil(len(out) / MIN_BLOCKS)))
    for payload in _chunks(out, counts, size, max_bytes):
        yield _table([payload])


def process_block_task(batch: Any, stage: ManagedStage, n_stages: int, per_block: int, auto: bool,
                       max_bytes: int) -> Iterator[Any]:
    """The Ray Data *task* function of a stage without lifecycle methods (see ``stateless_as_tasks``)."""
    if not stage.worker_id:
        import ray

        stage.worker_id = f"{ray.get_runtime_context().get_node_id()[:12]}:{os.getpid()}"  # the process
    yield from process_block(stage, n_stages, per_block, auto, max_bytes, batch)


def _no_extra_remote_args() -> dict[str, Any]:
    return {}


class StageWorker:
    """Ray Data callable class: one per actor, holding one set-up ManagedStage."""

    def __init__(self, stage: ManagedStage, n_stages: int, per_block: int, auto: bool, max_bytes: int) -> None:
        import ray

        global _atexit_registered
        rc = ray.get_runtime_context()
        actor_id = rc.get_actor_id() or uuid.uuid4().hex
        self.stage = stage
        self.n_stages = n_stages
        self.per_block = per_block
        self.auto = auto
        self.max_bytes = max_bytes
        self.closed = False
        _LIVE.add(self)
        if not _atexit_registered:
            atexit.register(_teardown_in_actor, None, "")
            _atexit_registered = True
        stage.setup(WorkerMetadata(worker_id=f"{stage.name}:{actor_id}", node_id=rc.get_node_id()))

    def __call__(self, batch: Any) -> Iterator[Any]:
        if self.closed:
            raise RuntimeError(f"stage {self.stage.name!r}: this actor was already torn down")
        return process_block(self.stage, self.n_stages, self.per_block, self.auto, self.max_bytes, batch)

    def teardown(self) -> str | None:
        """The stage's teardown (once); a failure comes back as text."""
        if self.closed:
            return None
        self.closed = True
        try:
            self.stage.teardown()
        except Exception:
            import traceback

            return f"teardown of stage {self.stage.name!r} failed:\n" + traceback.format_exc()
        return None

    def __del__(self) -> None:  # Ray Data's graceful actor exit drops the UDF: last-resort teardown
        problem = self.teardown()
        if problem:
            logger.error("ray_data: %s", problem)


def _teardown_in_actor(_actor_instance: Any, run_id: str) -> list[str]:
    """In a stage actor (through ``__ray_call__``, or atexit): tear down its workers of ``run_id``."""
    problems = []
    for worker in list(_LIVE):
        if not run_id or worker.stage.run_id == run_id:
            problem = worker.teardown()
            if problem:
                problems.append(problem)
    return problems


# -- the driver side of a run's actors ---------------------------------------------------

_RUN_KEY = "curator_exec.ray_data.run"
#: token -> the run's actors, for the execution callback (driver process)
_RUNS: dict[str, _RunActors] = {}


class _RunActors:
    """The stage actors of one run: their handles, kept alive until the final teardown."""

    def __init__(self) -> None:
        self.token = uuid.uuid4().hex
        self.keep: dict[str, Any] = {}  # actor id -> Ray Data's (owning) handle
        self.lock = threading.Lock()
        self.finished = False
        self.warned = False

    @classmethod
    def start(cls) -> _RunActors:
        run = cls()
        _RUNS[run.token] = run
        return run

    def hold(self, executor: Any) -> None:
        """Keep the handles of the executor's actor pools (Ray Data internals, read defensively)."""
        try:
            handles = []
            for op in executor._topology:
                for pool in op.get_autoscaling_actor_pools():
                    handles += list(pool._running_actors.keys()) + list(pool._pending_actors.values())
        except Exception as exc:  # Ray Data changed: fall back on the actors' own exit path
            if not self.warned:
                self.warned = True
                logger.warning("ray_data: cannot reach Ray Data's actor pools (%r); stage teardown then relies "
                               "on the actors' exit", exc)
            return
        with self.lock:
            if not self.finished:
                for h in handles:
                    self.keep.setdefault(h._actor_id.hex(), h)

    def finish(self, timeout: float) -> list[str]:
        """Teardown in every actor of the run, then kill them. Returns the problems seen."""
        import ray

        _RUNS.pop(self.token, None)
        with self.lock:
            self.finished = True
            handles, self.keep = list(self.keep.values()), {}
        problems: list[str] = []
        calls = [h.__ray_call__.remote(_teardown_in_actor, "") for h in handles]
        if calls:
            ready, pending = ray.wait(calls, num_returns=len(calls), timeout=timeout)
            for ref in ready:
                try:
                    problems += ray.get(ref)
                except ray.exceptions.RayActorError:
                    pass  # died (killed, or its setup failed): nothing left to tear down
                except Exception as exc:
                    problems.append(f"teardown call failed: {exc!r}")
            if pending:
                problems.append(f"{len(pending)} stage actor(s) did not finish teardown within {timeout:g}s; "
                                "killed")
        for h in handles:
            try:
                ray.kill(h, no_restart=True)
            except Exception:
                pass
        return problems

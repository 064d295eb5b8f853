"""The ``ray_data`` executor: a pipeline as one Ray Data streaming dataset.

Blocks carry pickled chunks of tasks; a stage with lifecycle methods is an actor pool
(``map_batches`` over :class:`StageWorker`), a stateless one a task map. The shared Ray
machinery is :mod:`curator_exec_ray`'s; the mapping is in ``docs/executors/ray_data.md``.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import uuid
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import attrs

from curator_exec_core.config import option
from curator_exec_core.errors import ConfigError, did_you_mean
from curator_exec_core.runner import ManagedStage
from curator_exec_core.stages import WorkerMetadata
from curator_exec_core.stats import StageCounts, add_counts
from curator_exec_core.tasks import Task
from curator_exec_ray import (
    RayExecutorBase,
    RayRun,
    RaySession,
    RayTaskOptions,
    TaskChunk,
    auto_chunk_size,
    engine_logs,
    register,
    remote,
    stop_workers,
    teardown_live,
    warm_up,
)
from curator_exec_ray.chunking import ARROW_COLUMN, arrow_table, chunks_of_table, encode_chunks
from curator_exec_ray.placement import node_selector

__all__ = ["RayDataExecutor", "RayDataOptions", "StageWorker"]

logger = logging.getLogger("curator_exec.ray_data")

# Ray Data warns when a pool has more actors than the blocks it received (a filter upstream
# emptied the stream, a short input): expected here, and not actionable by the user.
warnings.filterwarnings("ignore", message=r"The minimum number of concurrent actors for 'MapBatches\(StageWorker\)'",
                        category=UserWarning)

#: a block is a chunk table (:func:`curator_exec_ray.chunking.arrow_table`, the Arrow form of ``TaskChunk``):
#: one column, each row a pickled ``(counts, [Task, ...])`` chunk
COLUMN = ARROW_COLUMN
#: auto block sizing: at least this many blocks per run, at most this many tasks per block
MIN_BLOCKS = 16
MAX_AUTO_TASKS_PER_BLOCK = 1000


@attrs.define(kw_only=True)
class RayDataOptions(RayTaskOptions):
    """Options of the ``ray_data`` executor (on top of those every Ray executor has)."""

    fuse_stages: bool = option(
        True, bool, "Let Ray Data fuse consecutive task-mapped stages with the same resources into one task per "
        f"block when the run starts with enough blocks (at least {MIN_BLOCKS}, and 2 per worker of the widest "
        "stage). Otherwise, or for a stage with an explicit size, stages stay apart.")
    preserve_order: bool = option(
        False, bool, "Keep the output in input order (DataContext.execution_options.preserve_order). Costs "
        "throughput when tasks take uneven time.")
    tasks_per_block: int | None = option(
        None, int, f"Tasks per Ray Data block (one pickled chunk). None: automatic, about {MIN_BLOCKS} blocks per "
        f"run or 4 per worker of the widest stage, at most {MAX_AUTO_TASKS_PER_BLOCK} tasks.",
        minimum=1, allow_none=True)
    max_block_bytes: int = option(
        16 * 1024**2, int, "Split a stage's output into more blocks when a pickled chunk would exceed this many "
        "bytes.", minimum=1024)
    max_tasks_in_flight_per_actor: int = option(
        2, int, "Blocks queued on one stage actor at a time (ActorPoolStrategy.max_tasks_in_flight_per_actor).",
        minimum=1)
    backpressure: bool | None = option(
        None, bool, "Ray Data's backpressure policies (they bound the blocks queued between stages, and delay "
        "every task launch by about 0.2 s here). None: off when the whole pipeline fuses into one task map, "
        "on otherwise.", allow_none=True)
    ray_progress_bars: bool = option(
        False, bool, "Also show Ray Data's own per-operator progress bars (only when show_progress is True).")
    data_context: dict = option(
        {}, dict, "Extra ray.data.DataContext attributes for this run only, e.g. "
        "{'execution_no_progress_timeout_s': 600}. Unknown attribute names are an error.")


class RayDataExecutor(RayExecutorBase):
    """Runs a pipeline on Ray Data's streaming executor; see :class:`RayDataOptions`."""

    name = "ray_data"
    Options = RayDataOptions
    pins_workers = False  # Ray Data places its pools' workers itself

    def __init__(self, config: dict[str, Any] | None = None, ignore_head_node: bool = False, **options: Any) -> None:
        super().__init__(config, ignore_head_node, **options)
        self.options: RayDataOptions
        if self.options.data_context:
            _check_data_context_keys(self.options.data_context)

    def ensure_ray(self) -> RaySession:
        session = super().ensure_ray()
        warm_up(session, "ray.data", "curator_exec_raydata.executor")  # imports, off the first run
        return session

    def execute_chunks(self, stages: list[ManagedStage], chunks: list[TaskChunk], to_chunks: bool) -> Any:
        """The map stages on ``chunks`` (tasks in the driver, or in the object store): the outputs in
        the driver, or (``to_chunks``) as chunks left in the object store."""
        self.ensure_ray()
        from ray.data import DataContext

        from curator_exec_raydata import _compat

        _compat.check()
        engine_logs.divert(self.options.engine_logs)  # importing ray.data set up its console handler
        _release_dead_requests()
        o, ray_run = self.options, self.ray_run(stages)
        widest = max(st.num_workers() or 1 for st in stages)
        per_block = o.tasks_per_block or auto_chunk_size(sum(c.n for c in chunks), widest,
                                                         max_size=MAX_AUTO_TASKS_PER_BLOCK)
        run = _RunActors(stages[0].run_id, [st.index for st in stages])
        ray_run.run.defer(lambda error: run.finish(o.teardown_timeout))
        local = [t for c in chunks if not c.in_store for t in c.tasks or ()]
        payloads = list(encode_chunks(local, None, per_block, o.max_block_bytes)) + [None] * sum(c.in_store for c in chunks)
        may_fuse = o.fuse_stages and len(payloads) >= max(MIN_BLOCKS, 2 * widest)
        shapes = [self._task_map_shape(st, may_fuse) for st in stages]
        one_map = len(set(shapes)) == 1 and shapes[0] is not None  # every stage fuses into one task map
        ctx = self._data_context(run, o.backpressure if o.backpressure is not None else not one_map)
        try:
            with DataContext.current(ctx):
                ds = self._source(chunks, payloads, per_block)
                for pos, stage in enumerate(stages):
                    ds = self._map(ds, ray_run, stage, pos, len(stages), per_block, len(payloads), shapes[pos])
                return self._collect(ds, ray_run, to_chunks)
        finally:
            run.finish(o.teardown_timeout)

    def _source(self, chunks: list[TaskChunk], payloads: list[bytes | None], per_block: int) -> Any:
        """The dataset the run starts from: blocks built here (``from_items``: ``from_arrow`` would run
        a metadata task on a worker), or chunks in the object store turned into blocks where they are."""
        import ray

        if any(not c.in_store for c in chunks):
            return ray.data.from_items([{COLUMN: p} for p in payloads if p], override_num_blocks=len(payloads))
        return ray.data.from_arrow_refs([_one_cpu(_block_of).remote(c.ref, per_block, self.options.max_block_bytes)
                                         for c in chunks])

    def _map(self, ds: Any, ray_run: RayRun, stage: ManagedStage, pos: int, n_stages: int, per_block: int,
             n_blocks: int, shape: tuple | None) -> Any:
        """``ds`` through one stage: a task map (no lifecycle methods) or an actor pool."""
        from ray.data import ActorPoolStrategy, TaskPoolStrategy

        o = self.options
        workers_ = stage.num_workers() or 1
        if pos == 0:  # more workers than initial blocks would idle
            workers_ = min(workers_, n_blocks)
        common = {"batch_size": max(1, math.ceil(stage.batch_size / per_block)),
                  "batch_format": "pyarrow", "zero_copy_batch": True, "num_cpus": stage.resources.cpus,
                  "num_gpus": stage.resources.gpus or None, **self._remote_args(ray_run, stage)}
        args = (stage, pos, n_stages, per_block, o.tasks_per_block is None, o.max_block_bytes)
        if not (o.stateless_as_tasks and not stage.has_lifecycle):
            return ds.map_batches(StageWorker, fn_constructor_args=args, compute=ActorPoolStrategy(
                size=workers_, max_tasks_in_flight_per_actor=o.max_tasks_in_flight_per_actor), **common)
        size = workers_ if self.explicit_size(stage) else workers_ * o.max_tasks_in_flight_per_actor
        if pos == 0:
            size = min(size, n_blocks)  # more would idle (and Ray Data warns)
        if shape is None:
            # distinct remote args keep Ray Data from fusing this map with its neighbours:
            # fused, a fan-out's whole output would run through the next stage in one task
            common["ray_remote_args_fn"] = _no_extra_remote_args
        with warnings.catch_warnings():  # ray_remote_args_fn: deprecated, kept until Ray 2.64
            warnings.simplefilter("ignore")
            return ds.map_batches(process_block_task, fn_args=args, compute=TaskPoolStrategy(size=size), **common)

    def _collect(self, ds: Any, ray_run: RayRun, to_chunks: bool) -> list[Any]:
        """The outputs in the driver, or (``to_chunks``) left in the object store as chunks; the counts
        every block carries go to the run's stats."""
        import ray

        outputs: list[Any] = []
        if to_chunks:  # the blocks stay in the object store; their counts come to the driver
            done = [_one_cpu(_tasks_of, num_returns=3).remote(b) for b in ds.to_arrow_refs()]
            for c, ref, n in done:
                ray_run.report_all(ray.get(c))
                count = ray.get(n)
                if count:
                    outputs.append(TaskChunk(ref=ref, n=count))
            return outputs
        for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=1):
            for chunk in chunks_of_table(batch):
                ray_run.report_all(chunk.counts)
                outputs.extend(chunk.resolve())
        return outputs

    def _task_map_shape(self, stage: ManagedStage, may_fuse: bool) -> tuple | None:
        """What Ray Data compares before fusing two task maps; None if this stage must stay its own operator."""
        if not (self.options.stateless_as_tasks and may_fuse) or stage.has_lifecycle or self.explicit_size(stage):
            return None
        workers_ = stage.num_workers() or 1
        return (stage.resources.cpus, stage.resources.gpus, workers_ * self.options.max_tasks_in_flight_per_actor)

    def _remote_args(self, ray_run: RayRun, stage: ManagedStage) -> dict[str, Any]:
        """runtime_env, and where the schedule lets the stage's workers run (Ray Data places them)."""
        args: dict[str, Any] = ray_run.remote_env()
        only, never = ray_run.allowed_nodes(stage)
        if selector := node_selector(only, never):
            args["label_selector"] = selector
        return args

    def _data_context(self, run: _RunActors, backpressure: bool) -> Any:
        from ray.data import DataContext

        from curator_exec_raydata import _compat

        o = self.options
        with warnings.catch_warnings():  # copying touches deprecated attributes
            warnings.simplefilter("ignore", DeprecationWarning)
            ctx = DataContext.get_current().copy()
        bars = o.show_progress and o.ray_progress_bars
        ctx.enable_progress_bars = ctx.enable_operator_progress_bars = ctx.print_on_execution_start = bars
        ctx.enable_auto_log_stats = False
        ctx.execution_options.preserve_order = o.preserve_order
        ctx.target_max_block_size = 1  # every chunk a stage yields becomes its own block (we size them)
        ctx.max_errored_blocks = 0  # failures are the core's business: the first error ends the run
        if not backpressure:
            _compat.disable_backpressure(ctx)
        ctx.actor_init_retry_on_errors = False
        ctx.custom_execution_callback_classes = [*ctx.custom_execution_callback_classes, _compat.KeepActorsAlive]
        ctx.set_config(_compat.RUN_KEY, run.token)
        _compat.RUNS[run.token] = run
        for key, value in o.data_context.items():
            setattr(ctx, key, value)
        return ctx

def _release_dead_requests() -> None:
    """Cancel what the AutoscalingCoordinator still reserves for executions of our drivers that died
    (killed mid-run, they never cancelled): the run that follows gets the whole cluster."""
    from curator_exec_raydata import _compat

    try:
        released = _compat.release_dead_requests()
    except Exception as exc:
        logger.debug("cannot release dead drivers' Ray Data requests: %r", exc)
        return
    if released:
        logger.info("ray_data: released the resource requests of %d execution(s) whose driver died: %s",
                    len(released), ", ".join(released))


def _check_data_context_keys(values: dict) -> None:
    import dataclasses

    from ray.data import DataContext

    known = {f.name for f in dataclasses.fields(DataContext)}
    unknown = sorted(str(k) for k in values if k not in known)
    if unknown:
        hints = [f"{k!r}" + (f" (did you mean {h!r}?)" if (h := did_you_mean(k, sorted(known))) else "") for k in unknown]
        raise ConfigError(f"option 'data_context': unknown DataContext attribute(s) {', '.join(hints)}")


# -- the worker side ------------------------------------------------------------------------


def process_block(stage: ManagedStage, pos: int, n_stages: int, per_block: int, auto: bool, max_bytes: int,
                  batch: Any) -> Iterator[Any]:
    """One Ray Data batch (rows of pickled chunks) through ``stage`` (at ``pos`` of ``n_stages``); yields
    the output as one-chunk blocks."""
    counts: StageCounts = {}  # the counts of this chunk's history not reported yet, per stage index
    tasks: list[Task] = []
    for chunk in chunks_of_table(batch):
        for index, n in (chunk.counts or {}).items():
            add_counts(counts, index, n)
        tasks.extend(chunk.resolve())
    out: list[Task] = []
    if tasks:
        out, done = stage.process_counted(tasks)
        add_counts(counts, stage.index, done)
    size = per_block
    if auto:  # a large output (fan-out from one small chunk) still spreads over enough blocks
        size = max(size, min(MAX_AUTO_TASKS_PER_BLOCK, math.ceil(len(out) / MIN_BLOCKS)))
    for row in encode_chunks(out, counts, size, max_bytes):
        yield arrow_table([row])


def process_block_task(batch: Any, stage: ManagedStage, pos: int, n_stages: int, per_block: int, auto: bool,
                       max_bytes: int) -> Iterator[Any]:
    """The Ray Data *task* function of a stage without lifecycle methods (see ``stateless_as_tasks``)."""
    if not stage.worker_id:
        import ray

        stage.worker_id = f"{ray.get_runtime_context().get_node_id()[:12]}:{os.getpid()}"  # the process
    yield from process_block(stage, pos, n_stages, per_block, auto, max_bytes, batch)


def _no_extra_remote_args() -> dict[str, Any]:
    return {}


def _one_cpu(fn: Any, **options: Any) -> Any:
    """``fn`` as a task of one CPU: with none, Ray would start a worker process for every block at once."""
    return remote(fn).options(num_cpus=1, **options)


def _block_of(tasks: list[Task], per_block: int, max_bytes: int) -> Any:
    """A chunk of tasks in the object store as a block of this executor's format."""
    return arrow_table(list(encode_chunks(tasks, None, per_block, max_bytes)))


def _tasks_of(block: Any) -> tuple[StageCounts, list[Task], int]:
    """An output block back as (summed counts, its tasks, how many)."""
    counts: StageCounts = {}
    tasks: list[Task] = []
    for chunk in chunks_of_table(block):
        for index, n in (chunk.counts or {}).items():
            add_counts(counts, index, n)
        tasks.extend(chunk.resolve())
    return counts, tasks, len(tasks)


class StageWorker:
    """Ray Data callable class: one per actor, holding one set-up ManagedStage."""

    def __init__(self, stage: ManagedStage, pos: int, n_stages: int, per_block: int, auto: bool,
                 max_bytes: int) -> None:
        import ray

        rc = ray.get_runtime_context()
        self.stage = stage
        self.args = (pos, n_stages, per_block, auto, max_bytes)
        register(stage)
        stage.setup(WorkerMetadata(worker_id=f"{stage.name}:{rc.get_actor_id() or uuid.uuid4().hex}",
                                   node_id=rc.get_node_id()))

    def __call__(self, batch: Any) -> Iterator[Any]:
        if not self.stage.is_set_up:
            raise RuntimeError(f"stage {self.stage.name!r}: this actor was already torn down")
        return process_block(self.stage, *self.args, batch)

    def __del__(self) -> None:  # Ray Data's graceful actor exit drops the UDF: last-resort teardown
        for problem in teardown_live(None, self.stage.run_id, [self.stage.index]):
            logger.error("ray_data: %s", problem)


class _RunActors:
    """The stage actors of one run: their handles, kept alive until the final teardown."""

    def __init__(self, run_id: str, indices: list[int]) -> None:
        self.run_id, self.indices = run_id, indices
        self.token = uuid.uuid4().hex
        self.keep: dict[str, Any] = {}  # actor id -> Ray Data's (owning) handle
        self.requests: list[str] = []  # AutoscalingCoordinator requesters of this run's executions
        self.lock = threading.Lock()
        self.finished = False

    def track_request(self, requester: str) -> None:
        """Write down an execution's resource request, so that the next run releases it if this driver dies."""
        from curator_exec_raydata import _compat

        try:
            _compat.remember_request(requester)
        except Exception as exc:
            logger.debug("cannot record Ray Data's request %s: %r", requester, exc)
            return
        with self.lock:
            self.requests.append(requester)

    def hold(self, handles: Sequence[Any]) -> None:
        from curator_exec_raydata import _compat

        with self.lock:
            if not self.finished:
                for h in handles:
                    self.keep.setdefault(_compat.actor_key(h), h)

    def finish(self, timeout: float) -> None:
        """Teardown in every actor of the run, then kill them (problems are logged)."""
        from curator_exec_raydata import _compat

        _compat.RUNS.pop(self.token, None)
        with self.lock:
            self.finished = True
            handles, self.keep = list(self.keep.values()), {}
            requests, self.requests = self.requests, []
        stop_workers(handles, self.run_id, timeout, log=logger, indices=self.indices)
        for requester in requests:  # Ray Data cancelled them itself when its execution ended
            try:
                _compat.forget_request(requester)
            except Exception as exc:
                logger.debug("cannot forget Ray Data's request %s: %r", requester, exc)

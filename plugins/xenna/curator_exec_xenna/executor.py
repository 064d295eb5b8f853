"""The ``xenna`` executor: curator-exec pipelines on Cosmos-Xenna (0.3.x on Python 3.11, 0.5.x on 3.12).

On top of the core and :mod:`curator_exec_ray`: NeMo Curator's ``XennaExecutor`` options, capacity
as Xenna allocates it, Xenna's environment kept out of the driver, and fixes for Xenna's lifecycle
gaps (teardown once per worker, no worker left after a run). See ``docs/executors/xenna.md``.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from importlib.metadata import version
from typing import Any

import attrs

from curator_exec_core.capacity import Capacity
from curator_exec_core.config import build_options, option
from curator_exec_core.errors import ConfigError, PlanError, StageFailedError
from curator_exec_core.planning import ExecutionPlan
from curator_exec_core.runner import ManagedStage
from curator_exec_core.stages import ProcessingStage
from curator_exec_core.tasks import Task
from curator_exec_ray import (
    Coordinator,
    ProgressPoller,
    RayExecutorBase,
    RayExecutorOptions,
    RayRun,
    RaySession,
    TaskChunk,
    alive_nodes,
    auto_chunk_size,
    cluster_capacity,
    current_session,
    preserved_env,
    reaper,
    stop_workers,
    teardown_workers,
)

__all__ = ["XennaExecutor", "XennaOptions", "XennaStageOptions", "XENNA_START_ENV"]

logger = logging.getLogger("curator_exec.xenna")

#: environment the Ray processes need when *we* start Ray (set only around ``ray.init``)
XENNA_START_ENV: dict[str, str] = {
    # Xenna's monitor lists actors with limit 40000; the dashboard reads its own limit when it starts
    "RAY_MAX_LIMIT_FROM_API_SERVER": "40000",
    "RAY_MAX_LIMIT_FROM_DATA_SOURCE": "40000",
    # Xenna assigns GPUs itself and sets CUDA_VISIBLE_DEVICES per worker
    "RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES": "1",
}
#: variables Xenna sets process-wide (on import and in ``run_pipeline``); restored every time
_XENNA_TOUCHED_ENV = ("RAY_ADDRESS", *XENNA_START_ENV, "RAY_ENABLE_UV_RUN_RUNTIME_ENV")
_XENNA_ACTOR_CLASSES = ("StageWorker", "NodeResourceMonitor")
_RUN_LOCK = threading.RLock()  # one Xenna pipeline at a time per process (Xenna's patches are process-wide)


@attrs.define(kw_only=True)
class XennaOptions(RayExecutorOptions):
    """Options of the ``xenna`` executor (NeMo Curator's config keys, plus every Ray executor's)."""

    aliases = {"cleanup_timeout_s": "teardown_timeout"}

    execution_mode: str = option(
        "streaming", str, "'streaming': all stages at once, autoscaled by Xenna; 'batch': each stage runs to "
        "completion before the next.", choices=("streaming", "batch"))
    logging_interval: float = option(60.0, float, "Seconds between Xenna's status tables.", minimum=1)
    cpu_allocation_percentage: float = option(
        0.95, float, "Share of each node's Ray CPUs Xenna may allocate; Xenna floors it per node (2 CPUs x 0.95 "
        "-> 1 CPU), and capacity() and the plan use the same numbers. In (0, 1].")
    autoscale_interval_s: float = option(180.0, float, "Streaming: seconds between autoscaler runs.", minimum=1)
    chunk_size: int | None = option(
        None, int, "Tasks per Xenna item (one ray.put and one Xenna task per chunk). None: from the number of "
        "input tasks and workers, 16 to 256. Stages still see their own batch_size.", minimum=1, allow_none=True)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        if not 0 < self.cpu_allocation_percentage <= 1:
            raise ConfigError(f"option 'cpu_allocation_percentage' must be in (0, 1], got "
                              f"{self.cpu_allocation_percentage!r}")


@attrs.frozen(kw_only=True)
class XennaStageOptions:
    """Per-stage Xenna settings, ``stage.backend_options = {"xenna": {...}}`` (StageSpec fields; not
    ``num_workers``, which ``num_workers()`` pins, nor failures and retries, which are the executor's)."""

    num_workers_per_node: float | None = option(None, float, "Workers per node (> 0).", allow_none=True)
    slots_per_actor: int | None = option(None, int, "Tasks queued per worker.", minimum=1, allow_none=True)
    over_provision_factor: float | None = option(None, float, "Autoscaler headroom.", minimum=0, allow_none=True)
    worker_max_lifetime_m: int | None = option(None, int, "Worker lifetime (min).", minimum=0, allow_none=True)
    worker_restart_interval_m: int | None = option(None, int, "Restart interval (min).", minimum=0, allow_none=True)
    num_setup_attempts_python: int | None = option(None, int, "Setup attempts.", minimum=1, allow_none=True)
    max_setup_failure_percentage: float | None = option(None, float, "0-100.", minimum=0, allow_none=True)

    def __attrs_post_init__(self) -> None:
        if self.num_workers_per_node is not None and self.num_workers_per_node <= 0:
            raise ConfigError(f"option 'num_workers_per_node' must be > 0, got {self.num_workers_per_node!r}")
        if (self.max_setup_failure_percentage or 0) > 100:
            raise ConfigError("option 'max_setup_failure_percentage' must be <= 100")

    @classmethod
    def from_stage(cls, stage: ProcessingStage) -> XennaStageOptions:
        raw = (getattr(stage, "backend_options", None) or {}).get("xenna", {}) or {}
        if not isinstance(raw, Mapping):
            raise ConfigError(f"stage {stage.name!r}: backend_options['xenna'] must be a dict, got {raw!r}")
        try:
            opts = build_options(cls, raw, "xenna")
        except ConfigError as exc:
            raise ConfigError(f"stage {stage.name!r}: backend_options['xenna']: {exc}") from None
        if opts.num_workers_per_node is not None and stage.num_workers() is not None:
            raise ConfigError(f"stage {stage.name!r}: give num_workers() or backend_options['xenna']"
                              "['num_workers_per_node'], not both (Xenna accepts one of them)")
        return opts

    def spec_fields(self) -> dict[str, Any]:
        return {k: v for k, v in attrs.asdict(self).items() if v is not None}


def _import_xenna() -> tuple[Any, Any]:
    """``cosmos_xenna.pipelines.v1`` and our adapter module (importing Xenna sets env vars; undo that)."""
    with preserved_env(_XENNA_TOUCHED_ENV):
        from cosmos_xenna.pipelines import v1 as xenna

        from curator_exec_xenna import _stage
    return xenna, _stage


class XennaExecutor(RayExecutorBase):
    """Runs a pipeline on Cosmos-Xenna over Ray, streaming or batch; see :class:`XennaOptions`."""

    name = "xenna"
    Options = XennaOptions
    needs_dashboard = True
    start_env = XENNA_START_ENV
    pins_workers = False  # Xenna creates and places its workers itself

    def __init__(self, config: dict[str, Any] | None = None, ignore_head_node: bool = False, **options: Any) -> None:
        super().__init__(config, ignore_head_node, **options)
        self.options: XennaOptions
        # streaming: stages share the cluster; batch: each stage may use all of it in turn
        self.concurrent_stages = self.options.execution_mode == "streaming"

    def ensure_ray(self) -> RaySession:
        session = super().ensure_ray()
        if self.options.runtime_env and session.how == "existing":
            raise ConfigError("executor 'xenna': runtime_env cannot reach Xenna's workers on a Ray that was "
                              "initialised before the executor (Xenna creates its actors with none of their own); "
                              "give it to your ray.init() instead")
        return session

    def capacity(self) -> Capacity:
        """Per node, what Xenna will allocate: ``floor(Ray CPUs x cpu_allocation_percentage)`` and NVML GPUs."""
        raw, pct = super().capacity(), self.options.cpu_allocation_percentage
        return Capacity(nodes=[attrs.evolve(n, cpus=float(math.floor(n.cpus * pct + 1e-9))) for n in raw.nodes])

    def plan(self, stages: Sequence[ProcessingStage], capacity: Capacity) -> ExecutionPlan:
        for stage in stages:  # per-stage Xenna options are checked before anything starts
            XennaStageOptions.from_stage(stage)
        # what Ray has per node, to explain Xenna's flooring (cached: the capacity phase just probed it);
        # planning without a Ray connection (a given capacity) has nothing to explain
        pct = self.options.cpu_allocation_percentage
        raw = cluster_capacity(ignore_head_node=self.ignore_head_node) if current_session() is not None else None
        note = ""
        if raw is not None and len(raw.nodes) == len(capacity.nodes) and raw.total_cpus > capacity.total_cpus:
            note = (" Xenna allocates floor(Ray CPUs x cpu_allocation_percentage) per node: "
                    + ", ".join(f"{r.cpus:g} x {pct:g} -> {c.cpus:g}" for r, c in zip(raw.nodes, capacity.nodes,
                                                                                       strict=True))
                    + ". Raise cpu_allocation_percentage (up to 1.0) to give Xenna more CPUs.")
        if capacity.nodes and capacity.total_cpus <= 0:
            raise PlanError(f"executor 'xenna' has no CPU to allocate with cpu_allocation_percentage={pct:g}." + note)
        try:
            plan = super().plan(stages, capacity)
        except PlanError as exc:
            if note and ("CPU" in str(exc) or "cpus=" in str(exc)):
                raise PlanError(f"{exc}{note}") from None
            raise
        notes = list(plan.notes)
        auto = [sp.name for sp, s in zip(plan.stages, stages, strict=True)
                if s.num_workers() is None and self.options.max_workers_per_stage is None
                and XennaStageOptions.from_stage(s).num_workers_per_node is None]
        if self.concurrent_stages and auto:
            notes.append("streaming: Xenna's autoscaler sizes " + ", ".join(repr(a) for a in auto)
                         + " (workers shown are the minimum it starts from)")
        if note:
            notes.append(note.strip())
        return attrs.evolve(plan, notes=notes)

    def _chunk_size(self, n_tasks: int, managed: Sequence[ManagedStage]) -> int:
        widest = max((m.num_workers() or 1) for m in managed)
        return self.options.chunk_size or auto_chunk_size(n_tasks, widest, min_size=16)

    def build_pipeline_spec(self, managed: Sequence[ManagedStage], inputs: Sequence[TaskChunk | Task], chunk: int,
                            coordinator: str = "", sink: bool = False, call: str = "") -> Any:
        """The ``PipelineSpec`` this executor hands to ``cosmos_xenna.pipelines.v1.run_pipeline``."""
        xenna, xs = _import_xenna()
        opts = self.options
        specs = []
        for m in managed:
            sopts = XennaStageOptions.from_stage(m.stage)
            pinned = m.stage.num_workers()
            if pinned is None and opts.max_workers_per_stage is not None and sopts.num_workers_per_node is None:
                pinned = m.num_workers()
            adapter = xs.stage_adapter(m, cpus=m.resources.cpus, gpus=m.resources.gpus, chunk_size=chunk,
                                      coordinator=coordinator, segment=call or managed[0].index,
                                      sink=sink and m is managed[-1])
            specs.append(xenna.StageSpec(adapter, num_workers=pinned, **sopts.spec_fields()))
        mode = xenna.ExecutionMode.STREAMING if opts.execution_mode == "streaming" else xenna.ExecutionMode.BATCH
        config = xenna.PipelineConfig(
            execution_mode=mode, logging_interval_s=opts.logging_interval,
            cpu_allocation_percentage=opts.cpu_allocation_percentage,
            # failures are the core's (FailedTask records or StageFailedError): Xenna neither retries nor drops
            ignore_failures=False, num_run_attempts_python=1, return_last_stage_outputs=True,
            mode_specific=xenna.StreamingSpecificSpec(autoscale_interval_s=opts.autoscale_interval_s))
        # chunks in the object store are Xenna items as they are; tasks in the driver are cut to ``chunk``
        stored = [c for c in inputs if isinstance(c, TaskChunk) and c.in_store]
        tasks = [t for c in inputs if not (isinstance(c, TaskChunk) and c.in_store)
                 for t in (c.resolve() if isinstance(c, TaskChunk) else [c])]
        items = stored + xs.chunks(tasks, chunk)
        return xenna.PipelineSpec(input_data=items, stages=specs, config=config)

    def execute_chunks(self, stages: list[ManagedStage], chunks: list[TaskChunk], to_chunks: bool) -> Any:
        """The stages on Xenna, from tasks or chunks in the object store; the outputs in the driver, or
        (``to_chunks``) left in the object store, owned by the coordinator actor (Xenna kills its workers).
        Xenna creates the workers, so their counts come through the coordinator (:class:`ProgressPoller`)."""
        session = self.ensure_ray()
        xenna, xs = _import_xenna()
        from curator_exec_xenna import _compat

        _compat.check()
        ray_run = self.ray_run(stages)
        run_id = ray_run.id
        chunk = self._chunk_size(sum(c.n for c in chunks), stages)
        coordinator = Coordinator.for_this_process()
        # one coordinator token per execute call: a run calls it once per segment, or per window of the source
        call = f"{stages[0].index}-{uuid.uuid4().hex[:8]}"
        spec = self.build_pipeline_spec(stages, chunks, chunk, coordinator.name, sink=to_chunks, call=call)
        limit = _compat.accepted_state_limit(session.address, lambda n: reaper.list_job_actors(
            limit=n, filters=[("class_name", "=", "__curator_exec_probe__")]))
        ray_run.run.info.update({"chunk_size": chunk, "xenna_version": version("cosmos-xenna"), "state_limit": limit,
                                 "ray_address": session.address,
                                 "pinned_workers": [s.num_workers for s in spec.stages]})
        before = {a.actor_id for a in reaper.list_job_actors()}
        started, timeout = time.time(), self.options.teardown_timeout
        token, indices = f"{run_id}:{call}", [s.index for s in stages]  # this execute call of the run

        def before_kill(actor: Any) -> None:
            teardown_workers([actor], run_id, timeout, log=logger, indices=indices)

        try:
            with _RUN_LOCK, preserved_env(_XENNA_TOUCHED_ENV), \
                    _compat.patched(limit, before_kill, self._hidden_nodes(ray_run, stages)), _compat.quiet_logs():
                os.environ["RAY_ADDRESS"] = session.address  # Xenna's ray.init must attach to our cluster
                try:
                    with ProgressPoller(ray_run, coordinator, token, indices):
                        try:
                            result = xenna.run_pipeline(spec)
                        except Exception as exc:
                            _raise_if_timed_out(stages, exc)
                            raise
                finally:  # after a failure Xenna leaves its workers running: tear down and kill them
                    stop_workers(coordinator.close(token, timeout), run_id, timeout, log=logger, indices=indices)
            if to_chunks:
                return [TaskChunk(ref=item.ref, n=item.n) for item in result or []]
            return [t for item in result or [] for t in item.resolve()]
        finally:
            coordinator.forget(token)
            ray_run.run.info["reaped"] = reaper.reap_run_actors(before, started, _XENNA_ACTOR_CLASSES, timeout)

    def _hidden_nodes(self, ray_run: RayRun, stages: Sequence[ManagedStage]) -> set[str]:
        """The nodes Xenna must not see: those the schedule excludes and, for stages pinned to some
        nodes, all others. Xenna places every stage on one set of nodes, so stages pinned to different
        sets are refused."""
        hidden: set[str] = set()
        pinned: set[frozenset[str]] = set()
        for stage in stages:
            only, never = ray_run.allowed_nodes(stage)
            hidden |= never
            if only:
                pinned.add(only)
        if len(pinned) > 1:
            raise PlanError("executor 'xenna' places every stage of a pipeline on one set of nodes, but the schedule "
                            f"pins stages to different ones ({sorted(sorted(p) for p in pinned)}); pin them alike")
        if pinned:
            (only,) = pinned
            hidden |= {n["NodeID"] for n in alive_nodes()} - only
        return hidden


def _raise_if_timed_out(stages: Sequence[ManagedStage], error: BaseException) -> None:
    """Xenna fails a run whose worker died. If a worker of ours ended itself because a call ran past
    ``task_timeout`` and did not stop, say that (stage, task, limit) instead of Ray's actor death."""
    for stage in stages:
        for task_id in sorted(stage.ended_by_timeout()):
            raise StageFailedError(
                stage.name, task_id, f"TaskTimeoutError: the call ran longer than task_timeout={stage.task_timeout:g}s "
                "and did not stop (stuck outside Python), so its worker was ended", retryable=False,
                advice="Xenna fails a run whose worker dies, so on xenna such a task aborts the run even with "
                       "ignore_failures=True: make the stage return (or raise) in time, or raise task_timeout.",
            ) from error

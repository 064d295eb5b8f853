"""The ``xenna`` executor: curator-exec pipelines on Cosmos-Xenna (0.3.x on Python 3.11, 0.5.x on 3.12).

What this module adds on top of the core (everything else, ids, retries, failure
records, once-per-node setup, planning, progress, is the core's):

* options: the NeMo Curator ``XennaExecutor`` config keys plus
  ``max_workers_per_stage``, ``chunk_size`` and per-stage Xenna settings in
  ``stage.backend_options["xenna"]`` (validated, unknown keys are errors);
* capacity as Xenna sees it: per node ``floor(Ray CPUs x cpu_allocation_percentage)``
  and the node's NVML GPUs (the core's per-node probe), so the plan fits exactly
  what Xenna will accept, or fails with a :class:`PlanError` naming the option to
  change before Xenna starts;
* the Ray session: reuse a running Ray, or start one with the dashboard (Xenna's
  monitor needs the state API) and ``RAY_MAX_LIMIT_FROM_*=40000`` set only for the
  start; ``RAY_ADDRESS`` pinned, and the variables Xenna sets restored, only while
  ``run_pipeline`` runs; never shut down a cluster we did not start;
* lifecycle fixes for Xenna's gaps: ``teardown`` once per worker (``destroy()``
  on 0.5; on 0.3 a call into each worker right before Xenna kills it), teardown
  and kill of the workers after a failed run, and no ``ray::StageWorker`` /
  ``ray::NodeResourceMonitor`` process left behind after a run.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import attrs

from curator_exec_core.capacity import Capacity
from curator_exec_core.config import ExecutorOptions, option
from curator_exec_core.errors import ConfigError, PlanError, did_you_mean
from curator_exec_core.executor import BaseExecutor, prepare_initial_tasks
from curator_exec_core.planning import ExecutionPlan
from curator_exec_core.runner import ManagedStage
from curator_exec_core.stages import ProcessingStage
from curator_exec_core.tasks import Task

__all__ = ["XennaExecutor", "XennaOptions", "XennaStageOptions", "XENNA_START_ENV"]

logger = logging.getLogger("curator_exec.xenna")

#: environment the Ray processes need when *we* start Ray (set only around ``ray.init``)
XENNA_START_ENV: dict[str, str] = {
    # Xenna's monitor lists actors with limit=RAY_MAX_LIMIT_FROM_API_SERVER (40000); the
    # dashboard refuses limits above its own setting, read when it starts.
    "RAY_MAX_LIMIT_FROM_API_SERVER": "40000",
    "RAY_MAX_LIMIT_FROM_DATA_SOURCE": "40000",
    # Xenna assigns GPUs itself and sets CUDA_VISIBLE_DEVICES per worker.
    "RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES": "1",
}
#: variables Xenna sets process-wide in ``run_pipeline``; restored after every run
_XENNA_TOUCHED_ENV = (
    "RAY_ADDRESS",
    "RAY_MAX_LIMIT_FROM_API_SERVER",
    "RAY_MAX_LIMIT_FROM_DATA_SOURCE",
    "RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES",
    "RAY_ENABLE_UV_RUN_RUNTIME_ENV",
)
_XENNA_ACTOR_CLASSES = ("StageWorker", "NodeResourceMonitor")
_RUN_LOCK = threading.RLock()  # one Xenna pipeline at a time per process (Xenna patches are process-wide)


def _fraction(_inst: Any, attribute: attrs.Attribute, value: float) -> None:
    if not 0 < value <= 1:
        raise ConfigError(f"option {attribute.name!r} must be in (0, 1], got {value!r}")


@attrs.define(kw_only=True)
class XennaOptions(ExecutorOptions):
    """Options of the ``xenna`` executor (NeMo Curator's config keys, plus ours)."""

    execution_mode: str = option(
        "streaming", str,
        "'streaming': all stages run at once, autoscaled by Xenna (ExecutionMode.STREAMING); "
        "'batch': each stage runs to completion before the next (ExecutionMode.BATCH).",
        choices=("streaming", "batch"))
    logging_interval: float = option(
        60.0, float, "Seconds between Xenna's status tables (PipelineConfig.logging_interval_s).", minimum=1)
    cpu_allocation_percentage: float = option(
        0.95, float,
        "Share of each node's Ray CPUs Xenna may allocate (PipelineConfig.cpu_allocation_percentage). Xenna "
        "floors it per node: 2 CPUs x 0.95 -> 1 CPU; capacity() and the plan use the same numbers.")
    autoscale_interval_s: float = option(
        180.0, float,
        "Streaming mode: seconds between Xenna autoscaler runs (StreamingSpecificSpec.autoscale_interval_s).",
        minimum=1)
    max_workers_per_stage: int | None = option(
        None, int,
        "Cap on the workers of each auto-sized stage. Xenna has no per-stage maximum, so a capped stage gets "
        "the planned number of workers pinned (StageSpec.num_workers) instead of being autoscaled.",
        minimum=1, allow_none=True)
    chunk_size: int | None = option(
        None, int,
        "Tasks per Xenna item (one ray.put and one Xenna task per chunk). None: chosen from the number of "
        "input tasks and workers, between 16 and 256. Stages still see their own batch_size.",
        minimum=1, allow_none=True)
    cleanup_timeout_s: float = option(
        60.0, float, "Seconds to wait for worker teardown and for leftover Xenna processes to exit.", minimum=1)

    def __attrs_post_init__(self) -> None:
        _fraction(self, attrs.fields(type(self)).cpu_allocation_percentage, self.cpu_allocation_percentage)


@attrs.frozen(kw_only=True)
class XennaStageOptions:
    """Per-stage Xenna settings: ``stage.backend_options = {"xenna": {...}}`` (StageSpec fields).

    ``num_workers`` is not here: a stage's ``num_workers()`` pins it. Failures and
    retries are the executor's ``ignore_failures`` / ``max_retries`` for every stage.
    """

    num_workers_per_node: float | None = None
    slots_per_actor: int | None = None
    over_provision_factor: float | None = None
    worker_max_lifetime_m: int | None = None
    worker_restart_interval_m: int | None = None
    num_setup_attempts_python: int | None = None
    max_setup_failure_percentage: float | None = None

    @classmethod
    def from_stage(cls, stage: ProcessingStage) -> XennaStageOptions:
        raw = (getattr(stage, "backend_options", None) or {}).get("xenna", {}) or {}
        if not isinstance(raw, Mapping):
            raise ConfigError(f"stage {stage.name!r}: backend_options['xenna'] must be a dict, got {raw!r}")
        known = [f.name for f in attrs.fields(cls) if f.init]
        bad = [k for k in raw if k not in known]
        if bad:
            hints = [f"{k!r}" + (f" (did you mean {h!r}?)" if (h := did_you_mean(str(k), known)) else "") for k in bad]
            raise ConfigError(
                f"stage {stage.name!r}: unknown backend_options['xenna'] key(s) {', '.join(hints)}. "
                f"Valid keys: {', '.join(known)}.")
        checks: dict[str, tuple[tuple[type, ...], float, bool]] = {
            "num_workers_per_node": ((int, float), 0.0, True),  # > 0
            "slots_per_actor": ((int,), 1, False),
            "over_provision_factor": ((int, float), 0.0, True),
            "worker_max_lifetime_m": ((int,), 0, False),
            "worker_restart_interval_m": ((int,), 0, False),
            "num_setup_attempts_python": ((int,), 1, False),
            "max_setup_failure_percentage": ((int, float), 0, False),
        }
        for key, value in raw.items():
            kinds, low, strict = checks[key]
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, kinds) or value < low or (strict and value == low):
                sign = ">" if strict else ">="
                raise ConfigError(
                    f"stage {stage.name!r}: backend_options['xenna'][{key!r}] must be a "
                    f"{' or '.join(k.__name__ for k in kinds)} {sign} {low:g}, got {value!r}")
        if raw.get("max_setup_failure_percentage") is not None and raw["max_setup_failure_percentage"] > 100:
            raise ConfigError(f"stage {stage.name!r}: max_setup_failure_percentage must be <= 100")
        if raw.get("num_workers_per_node") is not None and stage.num_workers() is not None:
            raise ConfigError(
                f"stage {stage.name!r}: give num_workers() or backend_options['xenna']['num_workers_per_node'], "
                "not both (Xenna accepts one of them)")
        return cls(**raw)

    def spec_fields(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in attrs.fields(type(self))
                if f.init and getattr(self, f.name) is not None}


def _restore_env(saved: Mapping[str, str | None]) -> None:
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@contextlib.contextmanager
def _preserved_env(keys: Sequence[str] = _XENNA_TOUCHED_ENV) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in keys}
    try:
        yield
    finally:
        _restore_env(saved)


def _import_xenna() -> tuple[Any, Any]:
    """``cosmos_xenna.pipelines.v1`` and our adapter module (importing Xenna sets env vars; undo that)."""
    with _preserved_env():
        from cosmos_xenna.pipelines import v1 as xenna

        from curator_exec_xenna import _stage
    return xenna, _stage


def xenna_version() -> str:
    from importlib.metadata import version

    return version("cosmos-xenna")


class XennaExecutor(BaseExecutor):
    """Runs a pipeline on Cosmos-Xenna over Ray, streaming or batch.

    ``XennaExecutor(config={"execution_mode": "batch", ...}, ignore_head_node=False, **options)``.
    See :class:`XennaOptions` for the options and ``docs/executors/xenna.md`` for the mapping.
    """

    name = "xenna"
    Options = XennaOptions
    concurrent_stages = True

    def __init__(self, config: dict[str, Any] | None = None, ignore_head_node: bool = False, **options: Any) -> None:
        super().__init__(config, ignore_head_node, **options)
        self.options: XennaOptions
        # streaming: stages share the cluster; batch: each stage may use all of it in turn
        self.concurrent_stages = self.options.execution_mode == "streaming"
        self._session: Any = None
        self._ray_capacity: Capacity | None = None
        self.last_run_info: dict[str, Any] = {}

    # -- Ray session and capacity --------------------------------------------------
    def _connect(self) -> Any:
        from curator_exec_core.ray_session import ensure_ray

        self._session = ensure_ray(start_env=XENNA_START_ENV, include_dashboard=True)
        return self._session

    def capacity(self) -> Capacity:
        """Per node, what Xenna will allocate: ``floor(Ray CPUs x cpu_allocation_percentage)`` and NVML GPUs."""
        from curator_exec_core.ray_session import cluster_capacity

        self._connect()
        raw = cluster_capacity(ignore_head_node=self.ignore_head_node)
        self._ray_capacity = raw
        pct = self.options.cpu_allocation_percentage
        return Capacity(nodes=[attrs.evolve(n, cpus=float(math.floor(n.cpus * pct + 1e-9))) for n in raw.nodes])

    def plan_options(self) -> dict[str, Any]:
        return {"max_workers_per_stage": self.options.max_workers_per_stage}

    def plan(self, stages: Sequence[ProcessingStage], capacity: Capacity) -> ExecutionPlan:
        for stage in stages:  # per-stage Xenna options are checked before anything starts
            XennaStageOptions.from_stage(stage)
        pct = self.options.cpu_allocation_percentage
        raw = self._ray_capacity
        floor_note = ""
        if raw is not None and len(raw.nodes) == len(capacity.nodes) and raw.total_cpus > capacity.total_cpus:
            floor_note = (
                " Xenna allocates floor(Ray CPUs x cpu_allocation_percentage) per node: "
                + ", ".join(f"{r.cpus:g} x {pct:g} -> {c.cpus:g}" for r, c in zip(raw.nodes, capacity.nodes, strict=True))
                + ". Raise cpu_allocation_percentage (up to 1.0) to give Xenna more CPUs.")
        if capacity.nodes and capacity.total_cpus <= 0:
            raise PlanError(
                f"executor 'xenna' has no CPU to allocate with cpu_allocation_percentage={pct:g}." + floor_note)
        try:
            plan = super().plan(stages, capacity)
        except PlanError as exc:
            if floor_note and ("CPU" in str(exc) or "cpus=" in str(exc)):
                raise PlanError(f"{exc}{floor_note}") from None
            raise
        notes = list(plan.notes)
        if self.concurrent_stages:
            auto = [sp.name for sp, s in zip(plan.stages, stages, strict=True)
                    if s.num_workers() is None and self.options.max_workers_per_stage is None
                    and XennaStageOptions.from_stage(s).num_workers_per_node is None]
            if auto:
                notes.append("streaming: Xenna's autoscaler sizes " + ", ".join(repr(a) for a in auto)
                             + " (workers shown are the minimum it starts from)")
        if floor_note and raw is not None:
            notes.append(floor_note.strip())
        return attrs.evolve(plan, notes=notes)

    # -- execution -------------------------------------------------------------------
    def _chunk_size(self, n_tasks: int, managed: Sequence[ManagedStage]) -> int:
        if self.options.chunk_size is not None:
            return self.options.chunk_size
        workers = max((m.num_workers() or 1) for m in managed)
        return max(16, min(256, math.ceil(n_tasks / (16 * workers))))

    def build_pipeline_spec(self, managed: Sequence[ManagedStage], tasks: list[Task], chunk: int,
                            coordinator: str = "") -> Any:
        """The ``PipelineSpec`` this executor hands to ``cosmos_xenna.pipelines.v1.run_pipeline``."""
        xenna, xs = _import_xenna()
        opts = self.options
        stage_specs = []
        for m in managed:
            sopts = XennaStageOptions.from_stage(m.stage)
            res = m.resources
            pinned = m.stage.num_workers()
            if pinned is None and opts.max_workers_per_stage is not None and sopts.num_workers_per_node is None:
                pinned = m.num_workers()
            adapter = xs.CuratorStage(m, cpus=res.cpus, gpus=res.gpus, chunk_size=chunk, coordinator=coordinator)
            stage_specs.append(xenna.StageSpec(adapter, num_workers=pinned, **sopts.spec_fields()))

        mode = xenna.ExecutionMode.STREAMING if opts.execution_mode == "streaming" else xenna.ExecutionMode.BATCH
        config = xenna.PipelineConfig(
            execution_mode=mode,
            logging_interval_s=opts.logging_interval,
            cpu_allocation_percentage=opts.cpu_allocation_percentage,
            # failures are the core's: a failed task is a FailedTask record (ignore_failures) or a
            # StageFailedError (abort); Xenna must neither retry nor drop anything itself
            ignore_failures=False,
            num_run_attempts_python=1,
            return_last_stage_outputs=True,
            mode_specific=xenna.StreamingSpecificSpec(autoscale_interval_s=opts.autoscale_interval_s),
        )
        spec = xenna.PipelineSpec(input_data=xs.split(tasks, chunk), stages=stage_specs, config=config)
        return spec

    def execute(self, stages: list[ProcessingStage], initial_tasks: list[Task] | None = None) -> list[Task]:
        managed = self.managed_stages(stages)
        tasks = prepare_initial_tasks(initial_tasks)
        if not tasks:
            return []
        session = self._connect()
        import ray

        xenna, xs = _import_xenna()
        opts = self.options
        run_id = managed[0].run_id
        chunk = self._chunk_size(len(tasks), managed)
        coordinator, coord_name = _coordinator(ray, xs)
        coordinator.open.remote(run_id, len(managed))  # order does not matter: runs are created on first use

        spec = self.build_pipeline_spec(managed, tasks, chunk, coord_name)
        stage_specs = spec.stages
        self.last_run_info = {"chunk_size": chunk, "xenna_version": xenna_version(), "ray_address": session.address,
                              "pinned_workers": [s.num_workers for s in stage_specs]}

        t0 = time.perf_counter()
        before = _xenna_actors(ray)
        started = time.time()
        timings = self.last_run_info["timings"] = {"list_before": time.perf_counter() - t0}
        poller = _ProgressPoller(self, coordinator, run_id, len(managed))
        outputs: list[Task] = []
        try:
            t0 = time.perf_counter()
            with _RUN_LOCK, self._xenna_context(session, ray, run_id):
                timings["context"] = time.perf_counter() - t0
                poller.start()
                try:
                    t0 = time.perf_counter()
                    result = xenna.run_pipeline(spec)
                finally:
                    timings["run_pipeline"] = time.perf_counter() - t0
                    t0 = time.perf_counter()
                    poller.stop()
                    self._teardown_workers(ray, coordinator, run_id)
                    timings["teardown"] = time.perf_counter() - t0
            for item in result or []:
                outputs.extend(item.tasks)
        finally:
            with contextlib.suppress(Exception):
                coordinator.forget.remote(run_id)
            t0 = time.perf_counter()
            self.last_run_info["reaped"] = _reap_leftovers(ray, before, started, opts.cleanup_timeout_s)
            timings["reap"] = time.perf_counter() - t0
        return outputs

    @contextlib.contextmanager
    def _xenna_context(self, session: Any, ray: Any, run_id: str) -> Iterator[None]:
        """Only while ``run_pipeline`` runs: RAY_ADDRESS pinned, the state-API limit Xenna will use
        accepted by the cluster, teardown before Xenna 0.3 kills a worker, ``ignore_head_node``
        applied to Xenna's cluster view. Everything is restored afterwards."""
        from cosmos_xenna.pipelines.private import monitoring
        from cosmos_xenna.ray_utils import actor_pool, cluster

        saved_env = {k: os.environ.get(k) for k in _XENNA_TOUCHED_ENV}
        saved_limit = cluster.API_LIMIT
        saved_kill = actor_pool._kill_actor_and_reap
        saved_resources = cluster.make_cluster_resources_from_ray_nodes
        monitor_cls = getattr(monitoring, "RayResourceMonitor", None)
        saved_monitor_init = getattr(monitor_cls, "__init__", None)
        monitors: list[Any] = []
        os.environ["RAY_ADDRESS"] = session.address
        try:
            cluster.API_LIMIT = _accepted_state_limit(int(saved_limit))
            # Tear down right before Xenna kills a worker: 0.3 has no destroy(), and 0.5 may kill the
            # actor before its destroy() has finished (seen in batch mode). Teardown is idempotent.

            def kill_with_teardown(actor_ref: Any, *args: Any, **kwargs: Any) -> Any:
                _call_teardown(ray, [actor_ref], run_id, self.options.cleanup_timeout_s)
                return saved_kill(actor_ref, *args, **kwargs)

            actor_pool._kill_actor_and_reap = kill_with_teardown
            if monitor_cls is not None and not hasattr(monitor_cls, "stop"):
                # Xenna < 0.5 never stops its per-node NodeResourceMonitor actors: remember them
                # and kill them when the run ends (their processes would otherwise hang around).
                def init_and_remember(this: Any, *args: Any, **kwargs: Any) -> None:
                    saved_monitor_init(this, *args, **kwargs)
                    monitors.append(this)

                monitor_cls.__init__ = init_and_remember
            if self.ignore_head_node:
                head_ids = {n.node_id for n in (self._ray_capacity.nodes if self._ray_capacity else ())
                            if n.is_head}
                if not head_ids:
                    from curator_exec_core.ray_session import HEAD_RESOURCE, alive_nodes

                    head_ids = {n["NodeID"] for n in alive_nodes() if HEAD_RESOURCE in n.get("Resources", {})}

                def without_head(*args: Any, **kwargs: Any) -> Any:
                    res = saved_resources(*args, **kwargs)
                    return type(res)(nodes={k: v for k, v in res.nodes.items() if k not in head_ids})

                cluster.make_cluster_resources_from_ray_nodes = without_head
            yield
        finally:
            if monitor_cls is not None and saved_monitor_init is not None:
                monitor_cls.__init__ = saved_monitor_init
            for monitor in monitors:
                for handle in getattr(monitor, "_monitors", ()):
                    with contextlib.suppress(Exception):
                        ray.kill(handle)
            cluster.API_LIMIT = saved_limit
            actor_pool._kill_actor_and_reap = saved_kill
            cluster.make_cluster_resources_from_ray_nodes = saved_resources
            _restore_env(saved_env)

    def _teardown_workers(self, ray: Any, coordinator: Any, run_id: str) -> None:
        """Tear down and kill every worker of this run that is still alive (after a failure, Xenna
        leaves them running; after success they are gone and this does nothing)."""
        try:
            workers = ray.get(coordinator.close.remote(run_id), timeout=self.options.cleanup_timeout_s)
        except Exception as exc:  # pragma: no cover - coordinator lost
            logger.warning("xenna: could not list the run's workers: %s", exc)
            return
        handles = [w[4][0] for w in workers if w[4] and w[4][0] is not None]
        if not handles:
            return
        _call_teardown(ray, handles, run_id, self.options.cleanup_timeout_s)
        for handle in handles:
            with contextlib.suppress(Exception):
                ray.kill(handle)

    def teardown(self) -> None:
        """Nothing held between runs: the Ray session stays up (never shut down if not ours)."""


# -- helpers (driver side) ----------------------------------------------------------------


_COORDINATORS: dict[tuple[str, int], tuple[Any, str]] = {}


def _coordinator(ray: Any, xs: Any) -> tuple[Any, str]:
    """This process's :class:`RunCoordinator` on the current cluster (created once, reused by later runs)."""
    key = (ray.get_runtime_context().gcs_address, os.getpid())
    cached = _COORDINATORS.get(key)
    if cached is not None:
        try:
            ray.get(cached[0].ping.remote(), timeout=30)
            return cached
        except Exception:
            _COORDINATORS.pop(key, None)
    import uuid

    name = f"coordinator-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    handle = ray.remote(num_cpus=0)(xs.RunCoordinator).options(
        name=name, namespace=xs.COORDINATOR_NAMESPACE, lifetime=None).remote()
    _COORDINATORS[key] = (handle, name)
    return handle, name


class _ProgressPoller:
    """Feeds the driver's progress reporter from the run's coordinator actor."""

    def __init__(self, executor: XennaExecutor, coordinator: Any, run_id: str, n: int) -> None:
        self.executor = executor
        self.coordinator = coordinator
        self.run_id = run_id
        self.seen_in = [0] * n
        self.seen_out = [0] * n
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.interval = min(max(executor.options.progress_interval, 0.5), 2.0)

    def start(self) -> None:
        if self.executor.options.show_progress:
            self._thread = threading.Thread(target=self._loop, name="xenna-progress", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.poll()

    def poll(self, timeout: float = 10.0) -> None:
        import ray

        try:
            tasks_in, tasks_out = ray.get(self.coordinator.counts.remote(self.run_id), timeout=timeout)
        except Exception:
            return
        progress = self.executor.progress
        for i, (a, b) in enumerate(zip(tasks_in, tasks_out, strict=False)):
            da, db = a - self.seen_in[i], b - self.seen_out[i]
            if da or db:
                self.seen_in[i], self.seen_out[i] = a, b
                if progress is not None:
                    progress.add(i, da, db)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=15)
        # the workers' last counts are fire-and-forget calls: give them a moment to land
        time.sleep(0.05)
        self.poll(timeout=30.0)


def _call_teardown(ray: Any, handles: Sequence[Any], run_id: str, timeout: float) -> None:
    from curator_exec_xenna._stage import teardown_in_worker

    refs = []
    for handle in handles:
        try:
            refs.append(handle.__ray_call__.remote(teardown_in_worker, run_id))
        except Exception:
            continue
    if not refs:
        return
    t0 = time.perf_counter()
    done, _pending = ray.wait(refs, num_returns=len(refs), timeout=timeout)
    logger.debug("xenna: teardown of %d worker(s): %d answered in %.2fs", len(refs), len(done),
                 time.perf_counter() - t0)
    for ref in done:
        try:
            ray.get(ref)
        except Exception as exc:  # a dead actor has nothing to tear down
            logger.debug("xenna: teardown call failed: %s", exc)


def _list_state(**kwargs: Any) -> list[Any]:
    import ray
    from ray.util.state import list_actors

    # never rely on auto-discovery: other Ray clusters may run on this host
    address = ray.get_runtime_context().gcs_address if ray.is_initialized() else os.environ.get("RAY_ADDRESS")
    return list(list_actors(**({"address": address} if address else {}), **kwargs))


_LIMITS: dict[tuple[str, int], int] = {}


def _accepted_state_limit(wanted: int) -> int:
    """The largest ``list_actors`` limit the cluster's dashboard accepts (Xenna asks for 40000)."""
    import ray

    key = (ray.get_runtime_context().gcs_address, wanted)
    if key not in _LIMITS:
        _LIMITS[key] = _probe_state_limit(wanted)
    return _LIMITS[key]


def _probe_state_limit(wanted: int) -> int:
    try:
        _list_state(limit=wanted, filters=[("class_name", "=", "__curator_exec_probe__")], raise_on_missing_output=False)
        return wanted
    except Exception as exc:
        text = str(exc)
        if "exceeds" in text and "limit" in text:
            import re

            found = re.findall(r"supported limit (\d+)", text)
            return int(found[0]) if found else 10000
        raise RuntimeError(
            "the xenna executor needs the Ray dashboard (state API) of the cluster it runs on, and it is not "
            f"reachable ({type(exc).__name__}: {exc}). Start Ray with include_dashboard=True (the default when "
            "curator-exec starts Ray)."
        ) from exc


def _xenna_actors(ray: Any) -> dict[str, Any]:
    """This job's Xenna actors (StageWorker, NodeResourceMonitor) by actor id."""
    job = ray.get_runtime_context().get_job_id()
    try:
        actors = _list_state(filters=[("job_id", "=", job)], limit=10000, raise_on_missing_output=False)
    except Exception as exc:
        logger.debug("xenna: list_actors failed: %s", exc)
        return {}
    return {a.actor_id: a for a in actors if a.class_name in _XENNA_ACTOR_CLASSES}


def _reap_on_node(pids: list[int], since: float, wait_s: float) -> list[int]:
    """Runs on a node: SIGKILL the listed ``ray::`` processes started after ``since``; returns the killed."""
    import signal

    import psutil

    killed = []
    for pid in pids:
        try:
            p = psutil.Process(pid)
            if p.create_time() < since - 5 or not " ".join(p.cmdline()).startswith("ray::"):
                continue
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        except (psutil.NoSuchProcess, ProcessLookupError, psutil.AccessDenied):
            continue
    deadline = time.monotonic() + wait_s
    while killed and time.monotonic() < deadline and any(psutil.pid_exists(p) for p in killed):
        time.sleep(0.05)
    return killed


def _reap_leftovers(ray: Any, before: Mapping[str, Any], since: float, timeout: float) -> int:
    """Kill the processes of this run's Xenna actors that are still around (Xenna 0.2/0.3 leave
    ``ray::NodeResourceMonitor`` / ``ray::StageWorker`` behind). Returns how many were killed."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    new = [a for aid, a in _xenna_actors(ray).items() if aid not in before and getattr(a, "pid", None)]
    by_node: dict[str, list[int]] = {}
    for a in new:
        by_node.setdefault(a.node_id, []).append(int(a.pid))
    if not by_node:
        return 0
    reap = ray.remote(num_cpus=0, max_retries=0)(_reap_on_node)
    refs = [reap.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node, soft=False)).remote(
        pids, since, 10.0) for node, pids in by_node.items()]
    killed = 0
    try:
        for result in ray.get(refs, timeout=timeout):
            killed += len(result)
    except Exception as exc:
        logger.warning("xenna: could not reap leftover Xenna processes: %s", exc)
    if killed:
        logger.debug("xenna: killed %d leftover Xenna worker process(es)", killed)
    return killed

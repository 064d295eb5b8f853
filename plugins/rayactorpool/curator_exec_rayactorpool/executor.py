"""The ``ray_actor_pool`` executor: every stage runs on its own pool of Ray actors, all at once.

How a run maps onto Ray:

* **Session**: :func:`curator_exec_core.ray_session.ensure_ray` reuses a running
  Ray (``ray.init`` already called, ``RAY_ADDRESS``, ``ray start``) or starts a
  local one; the executor never shuts down a cluster. ``runtime_env`` goes to
  ``ray.init`` when Ray is started here and to every actor in any case.
* **Plan**: the core planner sizes every stage against the per-node capacity
  (:func:`~curator_exec_core.ray_session.cluster_capacity`, a probe on each node),
  minus ``reserved_cpus``/``reserved_gpus``, with at most ``pool_size`` actors
  per stage. An impossible request fails there, before any actor starts.
* **Actors**: ``workers`` actors per stage, each asking Ray for the planned
  ``num_cpus``/``num_gpus``; with ``ignore_head_node`` each actor is pinned to a
  non-head node (``NodeAffinitySchedulingStrategy``). An actor runs the stage's
  ``setup`` (and ``setup_on_node`` once per node) when it starts and its
  ``teardown`` when the run ends, also after a failure; then it is killed.
* **Stages without lifecycle methods run as tasks** (``stateless_as_tasks``, on by
  default): a stage that overrides none of ``setup``, ``setup_on_node`` and
  ``teardown`` keeps no per-worker state, so it needs no actor of its own. Its
  chunks go out as Ray tasks with the same resources, node pins, chunking and
  backpressure; Ray runs them on its pooled worker processes, which outlive the
  run (they are Ray's, not ours), so a second run starts nothing. The stage is
  fetched once per worker process and run. Up to ``workers x max_in_flight``
  calls of such a stage are out at once (one per worker when ``pool_size`` or the
  stage's ``num_workers()`` fixes its size), and Ray runs as many of them as
  the free CPUs allow, so a stage may use CPUs the other stages leave idle.
* **Streaming**: a driver loop keeps every actor busy with up to
  ``max_in_flight`` calls. A call carries a *chunk* of tasks (``chunk_size``, or
  sized automatically to about 200 ms of work, at most 256 tasks), so the ~0.5 ms
  cost of an actor call is amortised; the stage still sees its own
  ``batch_size``. A finished chunk's outputs stay in Ray's object store and are
  handed to the next stage's actors as object refs; the driver only reads small
  counts, and only the last stage's outputs come back to it. A stage may not run
  further ahead of the next one than that stage can absorb (backpressure), so
  intermediates never pile up.
* **Failures**: a stage that raises follows the core's semantics (abort naming
  stage and task, or ``FailedTask`` records with ``ignore_failures``). An actor
  that dies is replaced (up to ``max_actor_restarts`` times per stage) and the
  chunks it held are run again on the stage's actors: the output has nothing lost
  and nothing twice.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from typing import Any

import attrs

from curator_exec_core import BaseExecutor, Capacity, ExecutorOptions, Task, option
from curator_exec_core.errors import CuratorExecError
from curator_exec_core.executor import prepare_initial_tasks
from curator_exec_core.ray_session import include_dashboard_option
from curator_exec_core.runner import ManagedStage

__all__ = ["RayActorPoolExecutor", "RayActorPoolOptions", "ActorPoolError"]

logger = logging.getLogger("curator_exec.ray_actor_pool")

#: automatic chunk sizing: aim for this much stage time per actor call ...
TARGET_CHUNK_SECONDS = 0.2
#: ... starting from this many tasks before anything was measured, and never above
FIRST_CHUNK = 4
MAX_CHUNK = 256
#: at most this many output pieces per call (more pieces spread fan-out over more actors)
MAX_PIECES = 16
#: at most this many queued pieces merged into one call
MAX_MERGE = 64


class ActorPoolError(CuratorExecError, RuntimeError):
    """The actor pool could not go on (actors keep dying, or never start)."""


@attrs.define(kw_only=True)
class RayActorPoolOptions(ExecutorOptions):
    """Options of the ``ray_actor_pool`` executor (plus those of every executor)."""

    pool_size: int | None = option(
        None, int, "The most actors per stage (None: as many as the plan gives the stage).",
        minimum=1, allow_none=True)
    reserved_cpus: float = option(0.0, float, "CPUs held back from planning (left free for other work).", minimum=0)
    reserved_gpus: float = option(0.0, float, "GPUs held back from planning.", minimum=0)
    runtime_env: dict | None = option(
        None, dict,
        "Ray runtime_env for the actors (env_vars, pip, working_dir, ...); also given to ray.init when this "
        "executor starts Ray.", allow_none=True)
    include_dashboard: bool = include_dashboard_option()
    chunk_size: int | None = option(
        None, int,
        "Tasks per actor call (None: automatic, about 200 ms of stage work per call, at most 256 tasks). "
        "The stage is still called with its own batch_size.", minimum=1, allow_none=True)
    max_in_flight: int = option(
        2, int, "Calls (chunks) queued or running per actor; bounds how far a stage runs ahead of the next.",
        minimum=1)
    max_actor_restarts: int = option(
        3, int, "Actors of one stage that may die (and be replaced) in a run before the run fails.", minimum=0)
    actor_start_timeout: float = option(
        300.0, float, "Seconds a stage may wait for its first actor to start before the run fails "
        "(instead of hanging when Ray cannot place it).", minimum=0)
    teardown_timeout: float = option(
        60.0, float, "Seconds to wait for the actors' teardown at the end of a run before they are killed anyway.",
        minimum=0)
    stateless_as_tasks: bool = option(
        True, bool,
        "Run a stage that overrides none of setup, setup_on_node and teardown as chunked Ray tasks on Ray's "
        "pooled worker processes instead of on actors of its own: same plan, same chunks and backpressure, "
        "but no actor to start (about 0.7 s a run) and nothing to tear down. False: every stage gets actors.")
    reuse_actors: bool = option(
        False, bool,
        "Keep this executor's actors alive between its runs, so a second run skips starting actors (about 1 s). "
        "Stages are still torn down at the end of every run and set up at the start of the next. Idle actors "
        "are killed by executor.close(), after a failed run, or when the driver exits. False: no actor "
        "outlives a run.")


class _Actor:
    """An actor of a stage's pool, or (``handle`` None) a task slot of a stage run as Ray tasks."""

    __slots__ = ("handle", "stage", "worker_id", "node", "ready", "dead", "inflight", "info", "requested_at",
                 "setup_ref", "key", "reused", "depth")

    def __init__(self, handle: Any, stage: int, worker_id: str, node: str | None, setup_ref: Any,
                 depth: int) -> None:
        self.handle = handle
        self.stage = stage
        self.worker_id = worker_id
        self.node = node
        self.ready = False
        self.dead = False
        self.inflight: set[Any] = set()
        self.info: dict[str, Any] = {}
        self.requested_at = time.monotonic()
        self.setup_ref = setup_ref
        self.key: tuple = ()
        self.reused = False
        self.depth = depth  # calls queued or running at once


class _Call:
    __slots__ = ("stage", "actor", "inputs", "pieces")

    def __init__(self, stage: int, actor: _Actor, inputs: list[tuple[Any, int]], pieces: list[Any] | None) -> None:
        self.stage = stage
        self.actor = actor
        self.inputs = inputs  # (chunk or object ref, number of tasks)
        self.pieces = pieces  # object refs of the output pieces (None for the last stage)


_remote_worker_cls: Any = None
_remote_task_fn: Any = None
#: seconds a capacity probe is reused while the cluster's nodes do not change
CAPACITY_TTL = 60.0
_capacity_cache: dict[tuple, tuple[float, Capacity]] = {}


def _remote_worker() -> Any:
    global _remote_worker_cls
    if _remote_worker_cls is None:
        import ray

        from curator_exec_rayactorpool.worker import ActorPoolWorker

        _remote_worker_cls = ray.remote(ActorPoolWorker)
    return _remote_worker_cls


def _remote_task() -> Any:
    global _remote_task_fn
    if _remote_task_fn is None:
        import ray

        from curator_exec_rayactorpool.worker import process_in_task

        _remote_task_fn = ray.remote(process_in_task)
    return _remote_task_fn


def assign_nodes(stages: list[ManagedStage], capacity: Capacity) -> list[list[str | None]]:
    """A node (of ``capacity``) for every planned actor: spread, GPU nodes kept for GPU stages."""
    free = {n.node_id: [n.cpus, float(n.num_gpus)] for n in capacity.nodes}
    nodes = {n.node_id: n for n in capacity.nodes}
    out: list[list[str | None]] = [[] for _ in stages]
    counts = [s.num_workers() or 1 for s in stages]
    for k in range(max(counts, default=0)):
        for i, stage in enumerate(stages):
            if k >= counts[i]:
                continue
            cpus, gpus = stage.resources.cpus, stage.resources.gpus

            def fits(nid: str, use_free: bool, cpus: float = cpus, gpus: float = gpus) -> bool:
                c, g = free[nid] if use_free else (nodes[nid].cpus, float(nodes[nid].num_gpus))
                return c + 1e-9 >= cpus and g + 1e-9 >= gpus

            choice = [nid for nid in free if fits(nid, True)] or [nid for nid in free if fits(nid, False)]
            if not choice:
                out[i].append(None)
                continue
            best = max(choice, key=lambda nid: (free[nid][0] - (0 if gpus else 2 * nodes[nid].num_gpus), nid))
            free[best][0] -= cpus
            free[best][1] -= gpus
            out[i].append(best)
    return out


class RayActorPoolExecutor(BaseExecutor):
    """Runs every stage on a pool of Ray actors, streaming tasks between the pools.

    ``RayActorPoolExecutor(config=None, ignore_head_node=False, show_progress=True,
    progress_interval=10.0, **options)``; options may be given in ``config`` or as
    keywords (see :class:`RayActorPoolOptions` and ``docs/executors/ray_actor_pool.md``).
    """

    name = "ray_actor_pool"
    Options = RayActorPoolOptions
    concurrent_stages = True

    def __init__(self, config: dict[str, Any] | None = None, ignore_head_node: bool = False,
                 show_progress: bool = True, progress_interval: float = 10.0, **options: Any) -> None:
        given = dict(config or {})
        # explicit keywords win; defaults do not override what config says
        if show_progress is not True or "show_progress" not in given:
            options.setdefault("show_progress", show_progress)
        if progress_interval != 10.0 or "progress_interval" not in given:
            options.setdefault("progress_interval", progress_interval)
        super().__init__(config, ignore_head_node, **options)
        self.show_progress: bool = self.options.show_progress
        self.progress_interval: float = self.options.progress_interval
        self._run_state: _PoolRun | None = None
        #: idle actors kept between runs (``reuse_actors``): (key, actor)
        self._idle: list[tuple[tuple, _Actor]] = []

    # -- phases ------------------------------------------------------------------
    def _ensure_ray(self) -> Any:
        from curator_exec_core.ray_session import ensure_ray

        return ensure_ray(runtime_env=self.options.runtime_env, include_dashboard=self.options.include_dashboard)

    def capacity(self) -> Capacity:
        """Per-node capacity of the Ray cluster (attaching to Ray first); honours ``ignore_head_node``.

        The per-node probe runs again whenever the set of alive nodes or their Ray
        resources change, and at least every ``CAPACITY_TTL`` seconds; in between the
        last probe is reused (a probe task costs a worker start on a busy cluster).
        """
        import os

        from curator_exec_core.ray_session import NVML_MODULE_ENV, alive_nodes, cluster_capacity

        session = self._ensure_ray()
        nodes = tuple(sorted((n["NodeID"], tuple(sorted(n.get("Resources", {}).items()))) for n in alive_nodes()))
        key = (session.token, nodes, self.ignore_head_node, os.environ.get(NVML_MODULE_ENV))
        cached = _capacity_cache.get(key)
        if cached is not None and time.monotonic() - cached[0] < CAPACITY_TTL:
            return cached[1]
        capacity = cluster_capacity(ignore_head_node=self.ignore_head_node)
        _capacity_cache.clear()
        _capacity_cache[key] = (time.monotonic(), capacity)
        return capacity

    def plan_options(self) -> dict[str, Any]:
        return {
            "max_workers_per_stage": self.options.pool_size,
            "reserved_cpus": self.options.reserved_cpus,
            "reserved_gpus": self.options.reserved_gpus,
        }

    def execute(self, stages: list, initial_tasks: list[Task] | None = None) -> list[Task]:
        self._ensure_ray()
        from_run = bool(stages) and all(isinstance(s, ManagedStage) for s in stages)
        # called by run(): the stages come managed and planned; called directly: plan them here
        managed = self.managed_stages(stages)
        tasks = prepare_initial_tasks(initial_tasks)
        if not tasks:
            return []
        capacity = self.current_plan.capacity if from_run and self.current_plan is not None else None
        if self.ignore_head_node and capacity is None:
            capacity = self.capacity()
        run = _PoolRun(self, managed, tasks, capacity if self.ignore_head_node else None)
        self._run_state = run
        error: BaseException | None = None
        try:
            return run.run()
        except BaseException as exc:
            error = exc
            raise
        finally:
            try:
                run.close(error)
            finally:
                self._run_state = None

    def teardown(self) -> None:
        """Kill whatever actors a run left (normally none: ``execute`` cleans up itself). Ray stays up."""
        run, self._run_state = self._run_state, None
        if run is not None:
            run.close(None)

    def close(self) -> None:
        """Kill the idle actors kept by ``reuse_actors`` (a no-op otherwise)."""
        idle, self._idle = self._idle, []
        if not idle:
            return
        import ray

        if not ray.is_initialized():
            return
        for _key, actor in idle:
            try:
                ray.kill(actor.handle, no_restart=True)
            except Exception:  # pragma: no cover - the cluster is gone
                pass

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def _take_idle(self, key: tuple) -> _Actor | None:
        for i, (k, actor) in enumerate(self._idle):
            if k == key:
                del self._idle[i]
                return actor
        return None


class _PoolRun:
    """One run: the actors of every stage and the driver loop."""

    def __init__(self, executor: RayActorPoolExecutor, stages: list[ManagedStage], tasks: list[Task],
                 capacity: Capacity | None) -> None:
        import ray

        self.ray = ray
        self.executor = executor
        self.opts: RayActorPoolOptions = executor.options  # type: ignore[assignment]
        self.stages = stages
        self.n = len(stages)
        self.run_id = stages[0].run_id if stages else executor.run_id
        self.source = tasks
        self.src_pos = 0
        self.queues: list[deque[tuple[Any, int]]] = [deque() for _ in stages]
        self.actors: list[list[_Actor]] = [[] for _ in stages]
        self.inflight = [0] * self.n
        self.calls: dict[Any, _Call] = {}
        self.setups: dict[Any, _Actor] = {}
        self.task_seconds: list[float | None] = [None] * self.n
        self.deaths = [0] * self.n
        self.started = [0] * self.n
        self.outputs: list[Task] = []
        self.closed = False
        self.placement = assign_nodes(stages, capacity) if capacity is not None else None
        self.stage_refs: list[Any] = []
        #: stages run as Ray tasks (no lifecycle methods), see ``stateless_as_tasks``
        self.as_tasks = [self.opts.stateless_as_tasks and not st.has_lifecycle for st in stages]
        self.task_options: dict[tuple[int, str | None], dict[str, Any]] = {}

    # -- actors ------------------------------------------------------------------
    def _actor_options(self, stage: ManagedStage, node: str | None, task: bool = False) -> dict[str, Any]:
        res = stage.resources
        opts: dict[str, Any] = {"num_cpus": res.cpus, "num_gpus": res.gpus}
        if not task:
            opts.update(max_restarts=0, max_task_retries=0, max_concurrency=1)
        if self.opts.runtime_env:
            opts["runtime_env"] = dict(self.opts.runtime_env)
        if node is not None:
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            opts["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node_id=node, soft=False)
        return opts

    def _key(self, stage: ManagedStage, node: str | None) -> tuple:
        """What an actor must match to be reused: the Ray connection, its resources, node pin and runtime_env."""
        import json

        from curator_exec_core.ray_session import current_session

        session = current_session()
        env = json.dumps(self.opts.runtime_env, sort_keys=True, default=str) if self.opts.runtime_env else ""
        return (session.token if session else None, stage.resources.cpus, stage.resources.gpus, node, env)

    def start_actor(self, s: int, node: str | None) -> _Actor:
        stage = self.stages[s]
        k = self.started[s]
        self.started[s] += 1
        worker_id = f"{self.run_id}/{s}:{stage.name}/{k}"
        if self.as_tasks[s]:
            # a task slot: up to `depth` calls of this stage at once, run by whichever pooled worker Ray picks;
            # a stage with an explicit size (pool_size, num_workers()) gets one running call per slot
            depth = 1 if self.executor.explicit_size(stage) else self.opts.max_in_flight
            slot = _Actor(None, s, worker_id, node, None, depth)
            slot.ready = True
            self.actors[s].append(slot)
            return slot
        key = self._key(stage, node)
        reused = self.executor._take_idle(key) if self.opts.reuse_actors else None
        handle = reused.handle if reused is not None else _remote_worker().options(
            **self._actor_options(stage, node)).remote()
        setup_ref = handle.setup.remote(self.stage_refs[s], worker_id)
        actor = _Actor(handle, s, worker_id, node, setup_ref, self.opts.max_in_flight)
        actor.key = key
        actor.reused = reused is not None
        self.actors[s].append(actor)
        self.setups[setup_ref] = actor
        return actor

    def start_all(self) -> None:
        self.stage_refs = [self.ray.put(stage) for stage in self.stages]
        counts = [stage.num_workers() or 1 for stage in self.stages]
        for k in range(max(counts)):  # interleaved, so that every stage gets its first actor early
            for s in range(self.n):
                if k < counts[s]:
                    self.start_actor(s, self.placement[s][k] if self.placement else None)

    def _replacement_node(self, actor: _Actor) -> str | None:
        if actor.node is None:
            return None
        from curator_exec_core.ray_session import alive_nodes

        alive = {n["NodeID"] for n in alive_nodes()}
        if actor.node in alive:
            return actor.node
        for nodes in self.placement or []:
            for nid in nodes:
                if nid in alive:
                    return nid
        return actor.node

    def on_death(self, actor: _Actor, err: BaseException) -> None:
        if actor.dead:
            return
        actor.dead = True
        s = actor.stage
        retried = 0
        for ref in list(actor.inflight):
            call = self.calls.pop(ref, None)
            if call is not None:
                self.requeue(call)
                retried += 1
        actor.inflight.clear()
        self.setups.pop(actor.setup_ref, None)
        if actor in self.actors[s]:
            self.actors[s].remove(actor)
        name = self.stages[s].name
        if "RuntimeEnvSetupError" in repr(err):
            raise ActorPoolError(f"stage {name!r}: an actor could not set up its runtime_env: {err}") from err
        if not (actor.reused and not actor.ready):  # an idle actor that died in between costs no restart
            self.deaths[s] += 1
        if self.deaths[s] > self.opts.max_actor_restarts:
            raise ActorPoolError(
                f"stage {name!r}: {self.deaths[s]} actors died in this run (max_actor_restarts="
                f"{self.opts.max_actor_restarts}); last: {err}") from err
        logger.warning("stage %r: worker %s died (%s); replacing it and retrying its %d chunk(s)",
                       name, actor.worker_id, type(err).__name__, retried)
        self.start_actor(s, self._replacement_node(actor))

    def requeue(self, call: _Call) -> None:
        s = call.stage
        self.inflight[s] -= 1
        for item in reversed(call.inputs):
            self.queues[s].appendleft(item)

    # -- scheduling ----------------------------------------------------------------
    def chunk_size(self, s: int) -> int:
        if self.opts.chunk_size:
            return self.opts.chunk_size
        per_task = self.task_seconds[s]
        size = FIRST_CHUNK if per_task is None else int(TARGET_CHUNK_SECONDS / max(per_task, 1e-7))
        return max(1, min(MAX_CHUNK, size))

    def slots(self, s: int) -> int:
        actors = self.actors[s]
        return sum(a.depth for a in actors) if actors else self.opts.max_in_flight

    def has_input(self, s: int) -> bool:
        return bool(self.queues[s]) or (s == 0 and self.src_pos < len(self.source))

    def free_actor(self, s: int) -> _Actor | None:
        best = None
        for actor in self.actors[s]:
            if actor.ready and len(actor.inflight) < actor.depth:
                if best is None or len(actor.inflight) < len(best.inflight):
                    best = actor
        return best

    def submit(self, s: int, actor: _Actor) -> None:
        want = self.chunk_size(s)
        inputs: list[tuple[Any, int]] = []
        count = 0
        queue = self.queues[s]
        while queue and count < want and len(inputs) < MAX_MERGE:
            item = queue.popleft()
            inputs.append(item)
            count += item[1]
        if s == 0 and count < want and self.src_pos < len(self.source):
            remaining = len(self.source) - self.src_pos
            if not self.opts.chunk_size:  # spread the tail over the actors
                want = min(want, max(1, math.ceil(remaining / self.slots(0))))
            take = min(max(1, want - count), remaining)
            chunk = self.source[self.src_pos:self.src_pos + take]
            self.src_pos += take
            inputs.append((chunk, take))
        args = [payload for payload, _ in inputs]
        if s == self.n - 1:
            ref = self.call(actor, 1, 0, 0, args)
            pieces = None
        else:
            n_pieces = max(1, min(MAX_PIECES, len(self.actors[s + 1])))
            refs = self.call(actor, 1 + n_pieces, n_pieces, self.chunk_size(s + 1), args)
            ref, pieces = refs[0], list(refs[1:])
        self.calls[ref] = _Call(s, actor, inputs, pieces)
        actor.inflight.add(ref)
        self.inflight[s] += 1

    def call(self, actor: _Actor, num_returns: int, pieces: int, piece_size: int, args: list[Any]) -> Any:
        """Send one call to ``actor``: an actor method call, or a Ray task for a task slot."""
        if actor.handle is not None:
            method = actor.handle.process
            if num_returns != 1:
                method = method.options(num_returns=num_returns)
            return method.remote(pieces, piece_size, *args)
        s = actor.stage
        opts = self.task_options.get((s, actor.node))
        if opts is None:
            opts = self.task_options[(s, actor.node)] = self._actor_options(self.stages[s], actor.node, task=True)
        return _remote_task().options(num_returns=num_returns, **opts).remote(
            (self.run_id, s), [self.stage_refs[s]], pieces, piece_size, *args)

    def dispatch(self) -> None:
        for s in reversed(range(self.n)):  # downstream first: drain before feeding
            while self.has_input(s):
                if s < self.n - 1 and len(self.queues[s + 1]) + self.inflight[s] >= 2 * self.slots(s + 1):
                    break  # backpressure: the next stage has enough waiting
                actor = self.free_actor(s)
                if actor is None:
                    break
                self.submit(s, actor)

    # -- results -------------------------------------------------------------------
    def on_ready(self, ref: Any) -> None:
        ray = self.ray
        from ray.exceptions import NodeDiedError, RayActorError, WorkerCrashedError

        lost = (RayActorError, WorkerCrashedError, NodeDiedError)
        actor = self.setups.pop(ref, None)
        if actor is not None:
            try:
                actor.info = ray.get(ref)
            except RayActorError as err:
                self.on_death(actor, err)
                return
            actor.ready = True
            return
        call = self.calls.pop(ref, None)
        if call is None:
            return  # its actor died and the call was re-queued
        actor = call.actor
        actor.inflight.discard(ref)
        s = call.stage
        try:
            value = ray.get(ref)
        except lost as err:  # the actor or the task's worker died (Ray already retried a task's)
            self.requeue(call)
            self.on_death(actor, err)
            return
        self.inflight[s] -= 1
        last = s == self.n - 1
        n_in, n_out, seconds, sizes = value[0] if last else value
        if n_in:
            per_task = seconds / n_in
            old = self.task_seconds[s]
            self.task_seconds[s] = per_task if old is None else 0.5 * old + 0.5 * per_task
        progress = self.executor.progress
        if progress is not None:
            progress.add(s, n_in, n_out)
        if last:
            self.outputs.extend(value[1])
        else:
            assert call.pieces is not None
            for piece, size in zip(call.pieces, sizes, strict=True):
                if size:
                    self.queues[s + 1].append((piece, size))

    def done(self) -> bool:
        return self.src_pos >= len(self.source) and not self.calls and not any(self.queues)

    def check_start(self) -> None:
        now = time.monotonic()
        for s, actors in enumerate(self.actors):
            if any(a.ready for a in actors) or not actors:
                continue
            oldest = min(a.requested_at for a in actors)
            if now - oldest > self.opts.actor_start_timeout:
                stage = self.stages[s]
                raise ActorPoolError(
                    f"stage {stage.name!r}: no actor started within actor_start_timeout="
                    f"{self.opts.actor_start_timeout:g}s (each asks Ray for {stage.resources.describe()}; "
                    f"Ray has {self.ray.available_resources()} free). Is the cluster busy, or a node gone?")

    def run(self) -> list[Task]:
        ray = self.ray
        self.start_all()
        while not self.done():
            self.dispatch()
            waitable = list(self.calls) + list(self.setups)
            if not waitable:
                raise ActorPoolError("internal error: work is left but nothing is running")  # pragma: no cover
            ready, _ = ray.wait(waitable, num_returns=1, timeout=1.0)
            if not ready:
                self.check_start()
                continue
            if len(waitable) > 1:
                ready, _ = ray.wait(waitable, num_returns=len(waitable), timeout=0)
            for ref in ready:
                self.on_ready(ref)
        return self.outputs

    # -- the end -------------------------------------------------------------------
    def close(self, error: BaseException | None) -> None:
        """Teardown on every live actor (after its current call), then kill them all."""
        if self.closed:
            return
        self.closed = True
        ray = self.ray
        for ref in list(self.calls):
            try:
                ray.cancel(ref)  # queued calls never run; a running one finishes first
            except Exception:
                pass
        live = [a for actors in self.actors for a in actors if not a.dead and a.handle is not None]
        pending = {}
        for actor in live:
            try:
                pending[actor.handle.teardown.remote()] = actor
            except Exception:  # pragma: no cover - handle unusable
                pass
        keep: list[_Actor] = []
        if pending:
            refs = list(pending)
            done, not_done = ray.wait(refs, num_returns=len(refs), timeout=self.opts.teardown_timeout)
            for ref in done:
                actor = pending[ref]
                try:
                    ray.get(ref)
                except Exception as exc:
                    if error is None:
                        logger.warning("teardown of %s failed: %r", actor.worker_id, exc)
                else:
                    if self.opts.reuse_actors and error is None:
                        keep.append(actor)
            if not_done:
                logger.warning("%d actor(s) did not finish teardown within %gs; killing them",
                               len(not_done), self.opts.teardown_timeout)
        for actor in live:
            if actor in keep:
                continue
            try:
                ray.kill(actor.handle, no_restart=True)
            except Exception:  # pragma: no cover
                pass
        if error is not None:
            self.executor.close()  # after a failure nothing is kept
        for actor in keep:
            self.executor._idle.append((actor.key, actor))
        self.calls.clear()
        self.setups.clear()
        self.queues = [deque() for _ in self.stages]
        self.stage_refs = []

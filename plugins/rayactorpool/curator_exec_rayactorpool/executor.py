"""The ``ray_actor_pool`` executor: every stage on its own pool of Ray actors, all stages at once.

A driver loop streams chunks of tasks between the pools (object refs, with backpressure); stages
without lifecycle methods run as Ray tasks instead of actors. The shared Ray machinery (session,
capacity, placement, chunking, teardown) is :mod:`curator_exec_ray`'s; how a run maps onto Ray
is in ``docs/executors/ray_actor_pool.md``.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import time
import weakref
from collections import deque
from typing import Any

import attrs

from curator_exec_core import Task, option
from curator_exec_core.errors import CuratorExecError
from curator_exec_core.runner import ManagedStage
from curator_exec_ray import (
    ChunkSizer,
    PlacementWatch,
    RayExecutorBase,
    RayRun,
    RayTaskOptions,
    StageActor,
    TaskChunk,
    current_session,
    kill,
    placement_message,
    remote,
    remote_options,
    replacement_node,
    stop_workers,
    worker_request,
)
from curator_exec_rayactorpool.worker import Meta, process_in_task, run_chunks

__all__ = ["RayActorPoolExecutor", "RayActorPoolOptions", "ActorPoolError"]

logger = logging.getLogger("curator_exec.ray_actor_pool")
#: placement warnings go where the Ray layer's go (``curator_exec_ray.waiting``)
placement_log = logging.getLogger("curator_exec.ray")

#: before anything was measured, a call carries this many tasks
FIRST_CHUNK = 4
#: at most this many output pieces per call (more pieces spread fan-out over more actors)
MAX_PIECES = 16
#: at most this many queued pieces merged into one call
MAX_MERGE = 64


class ActorPoolError(CuratorExecError, RuntimeError):
    """The actor pool could not go on (actors keep dying, or never start)."""


@attrs.define(kw_only=True)
class RayActorPoolOptions(RayTaskOptions):
    """Options of the ``ray_actor_pool`` executor (``pool_size`` is another name of ``max_workers_per_stage``)."""

    aliases = {"pool_size": "max_workers_per_stage"}

    chunk_size: int | None = option(None, int, "Tasks per call (None: about 200 ms of work, at most 256); stages "
                                    "still see their own batch_size.", minimum=1, allow_none=True)
    max_in_flight: int = option(2, int, "Calls queued or running per actor (how far a stage runs ahead).", minimum=1)
    max_actor_restarts: int = option(3, int, "Actors of a stage that may die (and be replaced) in a run.", minimum=0)
    reuse_actors: bool = option(False, bool, "Keep the actors alive between this executor's runs (stages are still "
                                "torn down after each); close(), a failed run or exit kills them.")

    @property
    def pool_size(self) -> int | None:
        return self.max_workers_per_stage


@attrs.define(eq=False)
class _Actor:
    """An actor of a stage's pool, or (``handle`` None) a task slot of a stage run as Ray tasks."""

    handle: Any
    stage: int
    worker_id: str
    node: str | None
    depth: int  # calls queued or running at once
    ready: bool = False
    dead: bool = False
    reused: bool = False
    inflight: set[Any] = attrs.Factory(set)
    info: dict[str, Any] = attrs.Factory(dict)  # worker id, node id, pid (from its setup)
    requested_at: float = attrs.Factory(time.monotonic)
    setup_ref: Any = None
    placed_ref: Any = None  # ready once Ray placed the actor (before its setup); None: placed already
    key: tuple = ()


@attrs.define(eq=False)
class _Parked:
    """A pool's set-up actors, kept by the run between two ``execute`` calls on the same stages."""

    actors: list[_Actor]
    stage_refs: list[Any]
    started: list[int]


@attrs.define(eq=False)
class _Call:
    stage: int
    actor: _Actor
    inputs: list[TaskChunk]
    pieces: list[Any] | None  # object refs of the output pieces (None for the last stage)


class RayActorPoolExecutor(RayExecutorBase):
    """Runs every stage on a pool of Ray actors, streaming tasks between the pools. NeMo Curator's signature:
    ``(config=None, ignore_head_node=False, show_progress=True, progress_interval=10.0, **options)``."""

    name = "ray_actor_pool"
    Options = RayActorPoolOptions

    def __init__(self, config: dict[str, Any] | None = None, ignore_head_node: bool = False,
                 show_progress: bool = True, progress_interval: float = 10.0, **options: Any) -> None:
        given = dict(config or {})
        # explicit keywords win; defaults do not override what config says
        if show_progress is not True or "show_progress" not in given:
            options.setdefault("show_progress", show_progress)
        if progress_interval != 10.0 or "progress_interval" not in given:
            options.setdefault("progress_interval", progress_interval)
        super().__init__(config, ignore_head_node, **options)
        self.options: RayActorPoolOptions
        #: idle actors kept between runs (``reuse_actors``): (key, actor)
        self._idle: list[tuple[tuple, _Actor]] = []

    def execute_chunks(self, stages: list[ManagedStage], chunks: list[TaskChunk], to_chunks: bool) -> Any:
        """The map stages on ``chunks``: the last stage's outputs as a list, or (``to_chunks``) as
        chunks left in the object store."""
        self.ensure_ray()
        ray_run = self.ray_run(stages)
        key = ("ray_actor_pool", tuple(s.index for s in stages))
        ray_run.run.release_parked(keep=key)  # another segment's parked actors would hold the resources
        pool = _PoolRun(self, ray_run, stages, chunks, ray_run.placement(stages), to_chunks,
                        adopted=ray_run.run.unpark(key), park=key)
        # whatever happens, the run's end closes the pool; by a weak reference, so that a run that calls
        # execute once per window of its source does not keep every window's pool (its tasks) alive
        ref = weakref.ref(pool)
        ray_run.run.defer(lambda error: _close_if_alive(ref, error))
        try:
            return pool.run()
        except BaseException as exc:
            pool.close(exc)
            raise
        finally:
            pool.close(None)  # (a no-op after close(exc))

    def close(self) -> None:
        """Kill the idle actors kept by ``reuse_actors`` (a no-op otherwise)."""
        idle, self._idle = self._idle, []
        if idle and current_session() is not None:
            kill([actor.handle for _key, actor in idle])

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    def take_idle(self, key: tuple) -> _Actor | None:
        """An idle actor kept from an earlier run that matches ``key`` (``reuse_actors``), or None."""
        i = next((i for i, (k, _) in enumerate(self._idle) if k == key), None)
        return None if i is None else self._idle.pop(i)[1]

    def keep_idle(self, actors: list[_Actor]) -> None:
        """Keep ``actors`` (set-up stages torn down) for the next run (``reuse_actors``)."""
        self._idle += [(a.key, a) for a in actors]


def _close_if_alive(ref: weakref.ReferenceType[_PoolRun], error: BaseException | None) -> None:
    pool = ref()
    if pool is not None:
        pool.close(error)


class _PoolRun:
    """One run: the actors of every stage and the driver loop."""

    def __init__(self, executor: RayActorPoolExecutor, ray_run: RayRun, stages: list[ManagedStage],
                 chunks: list[TaskChunk], placement: list[list[str | None]] | None, to_chunks: bool,
                 adopted: _Parked | None = None, park: Any = None) -> None:
        import ray

        self.ray = ray
        self.executor = executor
        self.ray_run = ray_run
        self.opts = executor.options
        self.stages = stages
        self.n = len(stages)
        self.run_id = stages[0].run_id
        # tasks in the driver are cut into calls as the stage's chunk size says; chunks in the store go as they are
        self.source, self.src_pos = [t for c in chunks if not c.in_store for t in c.tasks or ()], 0
        self.queues: list[deque[TaskChunk]] = [deque() for _ in stages]
        self.queues[0].extend(c for c in chunks if c.in_store)
        self.to_chunks, self.out_chunks = to_chunks, []
        self.actors: list[list[_Actor]] = [[] for _ in stages]
        # per stage: calls in flight, actors that died, actors started
        self.inflight, self.deaths, self.started = [0] * self.n, [0] * self.n, [0] * self.n
        self.calls: dict[Any, _Call] = {}
        self.setups: dict[Any, _Actor] = {}
        self.sizer = ChunkSizer(self.n, self.opts.chunk_size, first=FIRST_CHUNK)
        self.outputs: list[Task] = []
        self.closed, self.placement = False, placement
        self.stage_refs: list[Any] = []
        #: stages run as Ray tasks (no lifecycle methods), see ``stateless_as_tasks``
        self.as_tasks = [self.opts.stateless_as_tasks and not st.has_lifecycle for st in stages]
        self.task_options: dict[tuple[int, str | None], dict[str, Any]] = {}
        #: when to warn about actors Ray has not placed (``placement_warning_s``); when starts were last checked
        self.watch, self.checked = PlacementWatch(ray_run.placement_warning_s), time.monotonic()
        #: the run's key for parking this pool's set-up actors at a successful end, for the next ``execute``
        #: on the same stages (a run that calls it once per window sets its actors up once)
        self.park_key = park
        if adopted is not None:  # the actors an earlier window of this run set up, ready
            self.stage_refs, self.started = adopted.stage_refs, list(adopted.started)
            for actor in adopted.actors:
                actor.inflight = set()
                self.actors[actor.stage].append(actor)

    # -- actors ------------------------------------------------------------------
    def _options(self, stage: ManagedStage, node: str | None, task: bool = False) -> dict[str, Any]:
        extra = {} if task else {"max_restarts": 0, "max_task_retries": 0, "max_concurrency": 1}
        return remote_options(stage.resources.cpus, stage.resources.gpus, runtime_env=self.opts.runtime_env,
                              node_id=node, **extra)

    def _key(self, stage: ManagedStage, node: str | None) -> tuple:
        """What an actor must match to be reused: the Ray connection, its resources, node pin and runtime_env."""
        import json

        session = current_session()
        env = json.dumps(self.opts.runtime_env, sort_keys=True, default=str) if self.opts.runtime_env else ""
        return (session.token if session else None, stage.resources.cpus, stage.resources.gpus, node, env)

    def start_actor(self, s: int, node: str | None) -> _Actor:
        stage = self.stages[s]
        self.started[s] += 1
        worker_id = f"{self.run_id}/{s}:{stage.name}/{self.started[s] - 1}"
        if self.as_tasks[s]:
            # a task slot: up to `depth` calls of this stage at once, run by whichever pooled worker Ray picks;
            # a stage with an explicit size (max_workers_per_stage, num_workers()) gets one call per slot
            depth = 1 if self.executor.explicit_size(stage) else self.opts.max_in_flight
            slot = _Actor(None, s, worker_id, node, depth, ready=True)
            self.actors[s].append(slot)
            return slot
        key = self._key(stage, node)
        reused = self.executor.take_idle(key) if self.opts.reuse_actors else None
        handle = reused.handle if reused is not None else remote(StageActor).options(
            **self._options(stage, node)).remote()
        # __ray_ready__ runs as soon as Ray placed the actor, before its setup: placed vs setting up
        placed_ref = None if reused is not None else handle.__ray_ready__.remote()
        actor = _Actor(handle, s, worker_id, node, self.opts.max_in_flight, reused=reused is not None, key=key,
                       placed_ref=placed_ref, setup_ref=handle.setup.remote(self.stage_refs[s], worker_id))
        self.actors[s].append(actor)
        self.setups[actor.setup_ref] = actor
        return actor

    def start_all(self) -> None:
        if not self.stage_refs:
            self.stage_refs = [self.ray.put(stage) for stage in self.stages]
        counts = [stage.num_workers() or 1 for stage in self.stages]
        for k in range(max(counts)):  # interleaved, so that every stage gets its first actor early
            for s in range(self.n):
                if len(self.actors[s]) <= k < counts[s]:  # (adopted actors are there already)
                    self.start_actor(s, self.placement[s][k] if self.placement else None)

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
        if not (actor.reused and not actor.ready):  # an idle actor that died in between costs no restart
            self.deaths[s] += 1
        if self.deaths[s] > self.opts.max_actor_restarts:
            raise ActorPoolError(
                f"stage {name!r}: {self.deaths[s]} actors died in this run (max_actor_restarts="
                f"{self.opts.max_actor_restarts}); last: {err}") from err
        logger.warning("stage %r: worker %s died (%s); replacing it and retrying its %d chunk(s)",
                       name, actor.worker_id, type(err).__name__, retried)
        self.start_actor(s, replacement_node(actor.node, self.placement))

    def requeue(self, call: _Call) -> None:
        self.inflight[call.stage] -= 1
        for chunk in reversed(call.inputs):
            self.queues[call.stage].appendleft(chunk)

    # -- scheduling ----------------------------------------------------------------
    def slots(self, s: int) -> int:
        actors = self.actors[s]
        return sum(a.depth for a in actors) if actors else self.opts.max_in_flight

    def has_input(self, s: int) -> bool:
        return bool(self.queues[s]) or (s == 0 and self.src_pos < len(self.source))

    def free_actor(self, s: int) -> _Actor | None:
        free = [a for a in self.actors[s] if a.ready and len(a.inflight) < a.depth]
        return min(free, key=lambda a: len(a.inflight)) if free else None

    def submit(self, s: int, actor: _Actor) -> None:
        want = self.sizer.size(s)
        inputs: list[TaskChunk] = []
        count = 0
        queue = self.queues[s]
        while queue and count < want and len(inputs) < MAX_MERGE:
            chunk = queue.popleft()
            inputs.append(chunk)
            count += chunk.n
        if s == 0 and count < want and self.src_pos < len(self.source):
            remaining = len(self.source) - self.src_pos
            if not self.opts.chunk_size:  # spread the tail over the actors
                want = min(want, max(1, math.ceil(remaining / self.slots(0))))
            take = min(max(1, want - count), remaining)
            inputs.append(TaskChunk(self.source[self.src_pos:self.src_pos + take]))
            self.src_pos += take
        args = [c.ref if c.in_store else c.tasks for c in inputs]
        if s == self.n - 1 and not self.to_chunks:
            ref, pieces = self.call(actor, 1, 0, 0, args), None
        else:  # the outputs stay in the object store, as pieces for the next stage (or the next part)
            last = s == self.n - 1
            n_pieces = 1 if last else max(1, min(MAX_PIECES, len(self.actors[s + 1])))
            refs = self.call(actor, 1 + n_pieces, n_pieces, count if last else self.sizer.size(s + 1), args)
            ref, pieces = refs[0], list(refs[1:])
        self.calls[ref] = _Call(s, actor, inputs, pieces)
        actor.inflight.add(ref)
        self.inflight[s] += 1

    def call(self, actor: _Actor, num_returns: int, pieces: int, piece_size: int, args: list[Any]) -> Any:
        """Send one call to ``actor``: an actor method call, or a Ray task for a task slot."""
        if actor.handle is not None:
            method = actor.handle.run
            if num_returns != 1:
                method = method.options(num_returns=num_returns)
            return method.remote(run_chunks, pieces, piece_size, *args)
        s = actor.stage
        opts = self.task_options.get((s, actor.node))
        if opts is None:
            opts = self.task_options[(s, actor.node)] = self._options(self.stages[s], actor.node, task=True)
        return remote(process_in_task).options(num_returns=num_returns, **opts).remote(
            (self.run_id, self.stages[s].index), [self.stage_refs[s]], pieces, piece_size, *args)

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
        from ray.exceptions import NodeDiedError, RayActorError, RuntimeEnvSetupError, WorkerCrashedError

        lost = (RayActorError, WorkerCrashedError, NodeDiedError)
        actor = self.setups.pop(ref, None)
        call = None if actor is not None else self.calls.pop(ref, None)
        if actor is None and call is None:
            return  # its actor died and the call was re-queued
        if call is not None:
            actor = call.actor
            actor.inflight.discard(ref)
        assert actor is not None
        try:
            value = self.ray.get(ref)
        except RuntimeEnvSetupError as err:
            raise ActorPoolError(f"stage {self.stages[actor.stage].name!r}: a worker could not set up its "
                                 f"runtime_env {self.opts.runtime_env!r}: {err}") from err
        except lost as err:  # the actor or the task's worker died (Ray already retried a task's)
            if call is not None:
                self.requeue(call)
            self.on_death(actor, err)
            return
        if call is None:
            actor.info, actor.ready = value, True
            return
        s = call.stage
        self.inflight[s] -= 1
        last = s == self.n - 1 and not self.to_chunks
        meta: Meta = value[0] if last else value
        self.sizer.observe(s, meta.counts.tasks_in, meta.seconds)
        self.ray_run.report(self.stages[s].index, meta.counts)
        if last:
            self.outputs.extend(value[1])
            return
        assert call.pieces is not None
        for piece, size in zip(call.pieces, meta.sizes, strict=True):
            if size:
                (self.out_chunks if s == self.n - 1 else self.queues[s + 1]).append(TaskChunk(ref=piece, n=size))

    def done(self) -> bool:
        return self.src_pos >= len(self.source) and not self.calls and not any(self.queues)

    def check_start(self) -> None:
        """Fail a stage none of whose actors started within ``actor_start_timeout``; warn (every
        ``placement_warning_s``) about a stage whose actors Ray has not all placed."""
        now = self.checked = time.monotonic()
        for s, actors in enumerate(self.actors):
            waiting = [a for a in actors if not a.ready]
            if not waiting:
                self.watch.reset(s)
                continue
            blocked = len(waiting) == len(actors)
            timed_out = blocked and now - min(a.requested_at for a in actors) > self.ray_run.start_timeout
            since = min(a.requested_at for a in waiting)
            if timed_out or self.watch.due(s, since, blocked, now):
                self.placement_problem(s, waiting, now - since, timed_out)

    def placement_problem(self, s: int, waiting: list[_Actor], waited: float, timed_out: bool) -> None:
        """Warn that ``waiting`` actors of stage ``s`` are not started yet (or, ``timed_out``, fail the run)."""
        stage, actors = self.stages[s], self.actors[s]
        refs = [a.placed_ref for a in waiting if a.placed_ref is not None]
        placed_setting_up = len(self.ray.wait(refs, num_returns=len(refs), timeout=0)[0]) if refs else 0
        placed = len(actors) - len(waiting) + placed_setting_up
        pins = sorted({a.node[:12] for a in waiting if a.node})
        request = worker_request(stage.resources.cpus, stage.resources.gpus) + (
            f", pinned to node(s) {', '.join(pins)}" if pins else "")
        if not timed_out and placed >= len(actors):
            return  # all placed, some still in setup: not a placement problem
        if timed_out:
            raise self.ray_run.start_timeout_error(stage, ActorPoolError, placed=placed, wanted=len(actors),
                                                   request=request, unit="actors")
        detail = f" ({placed_setting_up} placed and still in setup)" if placed_setting_up else ""
        placement_log.warning(placement_message(stage, waited, placed, len(actors), request,
                                                start_timeout=self.ray_run.start_timeout, unit="actors",
                                                detail=detail))

    def run(self) -> list[Task]:
        ray = self.ray
        self.start_all()
        while not self.done():
            self.dispatch()
            waitable = list(self.calls) + list(self.setups)
            if not waitable:
                raise ActorPoolError("internal error: work is left but nothing is running")  # pragma: no cover
            ready, _ = ray.wait(waitable, num_returns=1, timeout=1.0)
            if not ready or time.monotonic() - self.checked >= 1.0:
                self.check_start()
            if not ready:
                continue
            if len(waitable) > 1:
                ready, _ = ray.wait(waitable, num_returns=len(waitable), timeout=0)
            for ref in ready:
                self.on_ready(ref)
        return self.out_chunks if self.to_chunks else self.outputs

    # -- the end -------------------------------------------------------------------
    def close(self, error: BaseException | None) -> None:
        """Teardown on every live actor (after its current call), then kill them (or keep them idle)."""
        if self.closed:
            return
        self.closed = True
        for ref, call in list(self.calls.items()):
            # Queued task-slot calls never run. An actor's queued calls are left to run before its
            # teardown: cancelling one leaves a gap in the actor's call order, and Ray then drops
            # everything queued behind it (teardown included) after 30 s.
            if call.actor.handle is None:
                try:
                    self.ray.cancel(ref)
                except Exception:
                    pass
        live = [a for actors in self.actors for a in actors if not a.dead and a.handle is not None]
        # actors Ray never placed ran no setup: killed now, not waited for (teardown_timeout) behind it
        unplaced = [a for a in live if not a.ready and a.placed_ref is not None]
        if unplaced:
            refs = [a.placed_ref for a in unplaced]
            placed = set(self.ray.wait(refs, num_returns=len(refs), timeout=0)[0])
            unplaced = [a for a in unplaced if a.placed_ref not in placed]
            kill([a.handle for a in unplaced])
            live = [a for a in live if a not in unplaced]
        if error is None and self.park_key is not None and not self.calls:
            ready = [a for a in live if a.ready]
            if ready:  # set up once per run: the next window's pool takes them (or the run's end stops them)
                parked = _Parked(ready, self.stage_refs, list(self.started))
                self.ray_run.run.park(self.park_key, parked, functools.partial(
                    _stop, self.executor, self.run_id, [st.index for st in self.stages], ready))
                live = [a for a in live if not a.ready]
        _stop(self.executor, self.run_id, [st.index for st in self.stages], live, error)
        self.calls.clear()
        self.setups.clear()
        self.queues = [deque() for _ in self.stages]
        self.stage_refs = []
        self.source = []


def _stop(executor: RayActorPoolExecutor, run_id: str, indices: list[int], actors: list[_Actor],
          error: BaseException | None) -> None:
    """Teardown on ``actors``, then kill them (or keep them idle for the next run: ``reuse_actors``)."""
    opts = executor.options
    # after a failure, the stage's error is what matters (teardown problems are not logged) and nothing is kept
    kept, _ = stop_workers([a.handle for a in actors], run_id, opts.teardown_timeout,
                           spare=opts.reuse_actors and error is None, log=logger if error is None else None,
                           indices=indices)
    if error is not None:
        executor.close()
    executor.keep_idle([a for a in actors if any(a.handle is h for h in kept)])

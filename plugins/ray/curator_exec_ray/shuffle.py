"""A shuffle stage on Ray, written once for every Ray executor.

* **Insert.** The stage's input goes to Ray in chunks; a Ray task per chunk keys its tasks
  (``keys()`` is pure, so any pooled worker may run it) and returns one piece per partition as
  a separate object: the pieces stay in Ray's object store (which spills to disk), the driver
  holds only their refs and counts.
* **Reduce.** Each partition's pieces go, as refs, straight to the worker that reduces them: a
  :class:`~curator_exec_ray.actors.StageActor` of the stage when it has lifecycle methods
  (``setup`` before the first reduce, ``teardown`` at the end), else a Ray task. A worker that
  dies has its partitions reduced again by a replacement (the pieces are still in the store, and
  reduce is a function of them): nothing lost, nothing twice.

Counts travel back with every call (the first return value) and go to the run's stats.
"""

from __future__ import annotations

import itertools
import logging
import math
from typing import Any

from curator_exec_core.shuffle import ManagedShuffle, partitioned
from curator_exec_core.stats import Counts
from curator_exec_core.tasks import Task
from curator_exec_ray.actors import StageActor, remote, stage_in_process
from curator_exec_ray.chunking import TaskChunk, put_chunks
from curator_exec_ray.context import RayRun
from curator_exec_ray.placement import remote_options
from curator_exec_ray.teardown import stop_workers
from curator_exec_ray.waiting import wait_started, worker_request

__all__ = ["run_shuffle", "shuffle_chunks", "partitions_for", "MAX_REDUCE_RESTARTS"]

logger = logging.getLogger("curator_exec.ray")

#: replacement reduce workers a shuffle may start before the run fails
MAX_REDUCE_RESTARTS = 3


def partitions_for(stage: ManagedShuffle, n_tasks: int) -> int:
    """The stage's ``num_partitions``, else two per planned worker (at least one per 50,000 tasks)."""
    if stage.stage.num_partitions:
        return max(1, int(stage.stage.num_partitions))
    return max(1, 2 * (stage.num_workers() or 1), math.ceil(n_tasks / 50_000))


def key_chunk(key: tuple[str, int], stage_box: list[Any], partitions: int, chunk: list[Task]) -> Any:
    """A Ray task: key ``chunk``; returns ``(counts, records)`` and one piece per partition."""
    stage = stage_in_process(key[0], key[1], stage_box)
    keyed, records = stage.key_tasks(chunk)
    # this process's hash() of a str: the driver checks that every process that keyed agrees
    return (stage.last_counts, records, hash(_HASH_PROBE)), *partitioned(stage, keyed, partitions)


def reduce_parts(stage: ManagedShuffle, *parts: list[Any]) -> tuple[Counts, list[Task]]:
    """Reduce every group of one partition (its pieces from every insert task)."""
    out = stage.reduce_groups(itertools.chain.from_iterable(parts))
    return stage.last_counts, out


def reduce_in_task(key: tuple[str, int], stage_box: list[Any], *parts: list[Any]) -> Any:
    return reduce_parts(stage_in_process(key[0], key[1], stage_box), *parts)


def run_shuffle(ray_run: RayRun, stage: ManagedShuffle, tasks: list[Task]) -> list[Task]:
    """All of ``stage`` on Ray for ``tasks`` (the stage's whole input, in the driver); returns the
    failure records that came in or were made, then the outputs."""
    return shuffle_chunks(ray_run, stage, put_chunks(tasks, stage.num_workers() or 1), last=True)


def shuffle_chunks(ray_run: RayRun, stage: ManagedShuffle, inputs: list[TaskChunk], last: bool) -> Any:
    """All of ``stage`` on Ray for ``inputs`` (chunks in the object store): the outputs as chunks in
    the object store, or (``last``) as a list of tasks in the driver, failure records first."""
    import ray

    ray_run.ensure_ray()
    ray_run.run.release_parked()  # map workers kept for another window would hold the resources
    box = [ray.put(stage)]
    parts = partitions_for(stage, sum(c.n for c in inputs))
    nodes = ray_run.worker_nodes(stage)
    pieces, records = _insert(ray_run, stage, box, inputs, parts, nodes)
    del inputs  # the pieces hold the data now
    if stage.has_lifecycle:
        outputs = _reduce_on_actors(ray_run, stage, box, pieces, nodes)
    else:
        outputs = _reduce_in_tasks(ray_run, stage, box, pieces, nodes)
    if last:
        return records + [t for chunk in outputs for t in chunk.resolve()]
    return ([TaskChunk(ref=ray.put(records), n=len(records))] if records else []) + [c for c in outputs if c.n]


def _insert(ray_run: RayRun, stage: ManagedShuffle, box: list[Any], inputs: list[TaskChunk], parts: int,
            nodes: list[str | None]) -> tuple[list[list[Any]], list[Task]]:
    """Key every input chunk in a Ray task; the pieces per partition (refs) and the failure records."""
    import ray

    run_key = (stage.run_id, stage.index)
    opts = [remote_options(stage.resources.cpus, 0, node_id=node, runtime_env=ray_run.runtime_env,
                           num_returns=parts + 1) for node in nodes]
    insert = remote(key_chunk)
    pending = [insert.options(**opts[i % len(opts)]).remote(run_key, box, parts, chunk.ref if chunk.in_store
                                                             else chunk.tasks) for i, chunk in enumerate(inputs)]
    pieces: list[list[Any]] = [[] for _ in range(parts)]
    records: list[Task] = []
    hashes: set[int] = set()
    for refs in pending:
        counts, recs, probe = ray.get(refs[0])
        ray_run.report(stage.index, counts)
        hashes.add(probe)
        records += recs
        for p, ref in enumerate(refs[1:]):
            pieces[p].append(ref)
    if len(hashes) > 1:
        _warn_hash_seed(stage)
    return pieces, records


#: a string whose hash() every worker process that keys a shuffle computes
_HASH_PROBE = "curator-exec: is hash() salted alike in every worker?"
_warned_hash: set[str] = set()


def _warn_hash_seed(stage: ManagedShuffle) -> None:
    """The cluster's worker processes hash strings differently (no common ``PYTHONHASHSEED``)."""
    from curator_exec_ray.session import current_session

    session = current_session()
    key = session.token if session is not None else ""
    if key in _warned_hash:
        return
    _warned_hash.add(key)
    logger.warning(
        "shuffle stage %r: this Ray cluster's worker processes hash strings differently (each has its own "
        "PYTHONHASHSEED). Keys built with hash() of a str or bytes would split groups silently: use "
        "hashlib (or the values themselves) as keys, or start the cluster with one PYTHONHASHSEED for all its "
        "processes (`PYTHONHASHSEED=0 ray start ...`; a cluster curator-exec starts has one).", stage.name)


def _reduce_in_tasks(ray_run: RayRun, stage: ManagedShuffle, box: list[Any], pieces: list[list[Any]],
                     nodes: list[str | None]) -> list[TaskChunk]:
    """A stage without lifecycle methods: each partition reduced by a Ray task."""
    import ray

    res, run_key = stage.resources, (stage.run_id, stage.index)
    task = remote(reduce_in_task)
    calls = [task.options(**remote_options(res.cpus, res.gpus, node_id=nodes[p % len(nodes)],
                                           runtime_env=ray_run.runtime_env, num_returns=2)).remote(run_key, box,
                                                                                                 *pieces[p])
             for p in range(len(pieces))]
    outputs: list[TaskChunk] = []
    for meta, out in calls:
        counts = ray.get(meta)
        ray_run.report(stage.index, counts)
        outputs.append(TaskChunk(ref=out, n=counts[1] + counts[2]))
    return outputs


def _reduce_on_actors(ray_run: RayRun, stage: ManagedShuffle, box: list[Any], pieces: list[list[Any]],
                      nodes: list[str | None]) -> list[TaskChunk]:
    """A stage with lifecycle methods: set-up actors reduce the partitions; a dead one is replaced."""
    reducers = _Reducers(ray_run, stage, box, pieces)
    try:
        for k in range(min(stage.num_workers() or 1, len(pieces))):
            reducers.start(nodes[k % len(nodes)])
        for p in range(len(pieces)):
            reducers.submit(p, reducers.actors[p % len(reducers.actors)])
        return reducers.collect(nodes)
    finally:
        stop_workers(reducers.actors, stage.run_id, ray_run.teardown_timeout, log=logger, indices=[stage.index])


class _Reducers:
    """The reduce actors of one shuffle and their calls."""

    def __init__(self, ray_run: RayRun, stage: ManagedShuffle, box: list[Any], pieces: list[list[Any]]) -> None:
        self.ray_run, self.stage, self.box, self.pieces = ray_run, stage, box, pieces
        self.actors: list[Any] = []
        self.calls: dict[Any, tuple[int, Any, Any]] = {}

    def start(self, node: str | None) -> Any:
        import ray

        res, rr = self.stage.resources, self.ray_run
        opts = remote_options(res.cpus, res.gpus, node_id=node, runtime_env=rr.runtime_env, max_restarts=0,
                              max_concurrency=1)
        handle = remote(StageActor).options(**opts).remote()
        self.actors.append(handle)
        # setup (setup_on_node once per node) before the first reduce; its error is the run's error
        worker = f"{self.stage.run_id}/{self.stage.index}:{self.stage.name}/reduce{len(self.actors) - 1}"
        placed = handle.__ray_ready__.remote()  # runs when Ray placed the actor, before its setup
        setup = handle.setup.remote(self.box[0], worker)
        wait_started(rr, self.stage, [setup], worker_request(res.cpus, res.gpus, node=node), placed_refs=[placed],
                     unit="reduce workers")
        ray.get(setup)
        return handle

    def submit(self, p: int, actor: Any) -> None:
        meta, out = actor.run.options(num_returns=2).remote(reduce_parts, *self.pieces[p])
        self.calls[meta] = (p, actor, out)

    def collect(self, nodes: list[str | None]) -> list[TaskChunk]:
        import ray
        from ray.exceptions import RayActorError

        outputs: list[TaskChunk] = []
        replaced: dict[Any, Any] = {}
        while self.calls:
            ready, _ = ray.wait(list(self.calls), num_returns=1)
            p, actor, out = self.calls.pop(ready[0])
            try:
                counts = ray.get(ready[0])
            except RayActorError as err:  # the worker died: a replacement reduces its partitions again
                if actor not in replaced:
                    if len(replaced) >= MAX_REDUCE_RESTARTS:
                        raise RuntimeError(f"shuffle stage {self.stage.name!r}: {len(replaced) + 1} reduce workers "
                                           f"died; last: {err}") from err
                    logger.warning("shuffle stage %r: a reduce worker died (%s); its partitions are reduced again",
                                   self.stage.name, type(err).__name__)
                    replaced[actor] = self.start(nodes[p % len(nodes)])
                self.submit(p, replaced[actor])
                continue
            self.ray_run.report(self.stage.index, counts)
            outputs.append(TaskChunk(ref=out, n=counts[1] + counts[2]))
        return outputs

"""A shuffle stage on Ray, written once for every Ray executor.

* **Insert.** The stage's input goes to Ray in chunks; a Ray task per chunk keys its tasks
  (``keys()`` is pure, so any pooled worker may run it) and returns one piece per partition as
  a separate object: the pieces stay in Ray's object store (which spills to disk), the driver
  holds only their refs and counts.
* **Reduce.** Each partition's pieces go, as refs, straight to the worker that reduces them: a
  :class:`~curator_exec_ray.workers.StageActor` of the stage when it has lifecycle methods
  (``setup`` before the first reduce, ``teardown`` at the end), else a Ray task. A worker that
  dies has its partitions reduced again by a replacement (the pieces are still in the store, and
  reduce is a function of them): nothing lost, nothing twice.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from curator_exec_core.shuffle import ManagedShuffle, iter_keyed, partitioned
from curator_exec_core.tasks import Task
from curator_exec_ray import workers
from curator_exec_ray.chunking import put_chunks
from curator_exec_ray.placement import remote_options

__all__ = ["run_shuffle", "partitions_for"]

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
    stage = workers.stage_in_process(key[0], key[1], stage_box)
    keyed, records = stage.key_tasks(chunk)
    return (stage.last_counts, records), *partitioned(stage, keyed, partitions)


def reduce_parts(stage: ManagedShuffle, *parts: list[Any]) -> tuple[tuple[int, int, int], list[Task]]:
    """Reduce every group of one partition (its pieces from every insert task)."""
    out = stage.reduce_groups(iter_keyed(parts))
    return stage.last_counts, out


def reduce_in_task(key: tuple[str, int], stage_box: list[Any], *parts: list[Any]) -> Any:
    return reduce_parts(workers.stage_in_process(key[0], key[1], stage_box), *parts)


#: a chunk of tasks in the object store, and how many tasks it holds
Chunk = tuple[Any, int]


def run_shuffle(executor: Any, stage: ManagedShuffle, tasks: list[Task]) -> list[Task]:
    """All of ``stage`` on Ray for ``tasks`` (the stage's whole input, in the driver); returns the
    failure records that came in or were made, then the outputs. ``executor``: a ``RayExecutorBase``."""
    return shuffle_chunks(executor, stage, put_chunks(tasks, stage.num_workers() or 1), last=True)


def shuffle_chunks(executor: Any, stage: ManagedShuffle, inputs: list[Chunk], last: bool) -> Any:
    """All of ``stage`` on Ray for ``inputs`` (chunks in the object store): the outputs as chunks in
    the object store, or (``last``) as a list of tasks in the driver, failure records first."""
    import ray

    executor.ensure_ray()
    report = executor.progress.add if executor.progress is not None else (lambda *a: None)
    run_key = (stage.run_id, stage.index)
    box = [ray.put(stage)]
    parts = partitions_for(stage, sum(n for _, n in inputs))
    nodes = [n for n in ((executor.placement([stage]) or [[None]])[0]) if n] or [None]
    opts = [remote_options(stage.resources.cpus, 0, node_id=nodes[i % len(nodes)],
                           runtime_env=executor.options.runtime_env, num_returns=parts + 1) for i in range(len(nodes))]
    insert = workers.remote(key_chunk)
    pending = [insert.options(**opts[i % len(opts)]).remote(run_key, box, parts, ref) for i, (ref, _) in enumerate(inputs)]
    del inputs  # the pieces hold the data now
    pieces: list[list[Any]] = [[] for _ in range(parts)]
    records: list[Task] = []
    for refs in pending:
        counts, recs = ray.get(refs[0])
        report(stage.index, counts[0], 0, counts[2])
        records += recs
        for p, ref in enumerate(refs[1:]):
            pieces[p].append(ref)
    del pending
    outputs = _reduce(executor, stage, box, run_key, pieces, nodes, report)
    if last:
        return records + [t for ref, _ in outputs for t in ray.get(ref)]
    return ([(ray.put(records), len(records))] if records else []) + [c for c in outputs if c[1]]


def _reduce(executor: Any, stage: ManagedShuffle, box: list[Any], run_key: tuple[str, int],
            pieces: list[list[Any]], nodes: list[str | None], report: Any) -> list[Chunk]:
    """Reduce every partition; returns each one's outputs as a chunk in the object store."""
    import ray
    from ray.exceptions import GetTimeoutError, RayActorError

    res, env = stage.resources, executor.options.runtime_env
    outputs: list[Chunk] = []
    if not stage.has_lifecycle:
        task = workers.remote(reduce_in_task)
        calls = [task.options(**remote_options(res.cpus, res.gpus, node_id=nodes[p % len(nodes)], runtime_env=env,
                                               num_returns=2)).remote(run_key, box, *pieces[p])
                 for p in range(len(pieces))]
        for meta, out in calls:
            counts = ray.get(meta)
            report(stage.index, 0, counts[1], counts[2])
            outputs.append((out, counts[1] + counts[2]))
        return outputs
    actor_cls = workers.remote(workers.StageActor)
    actors: list[Any] = []
    timeout = workers.start_timeout(executor.options)

    def start(node: str | None) -> Any:
        opts = remote_options(res.cpus, res.gpus, node_id=node, runtime_env=env, max_restarts=0, max_concurrency=1)
        handle = actor_cls.options(**opts).remote()
        actors.append(handle)
        # setup (setup_on_node once per node) before the first reduce; its error is the run's error
        try:
            ray.get(handle.setup.remote(box[0], f"{stage.run_id}/{stage.index}:{stage.name}/reduce{len(actors) - 1}"),
                    timeout=timeout)
        except GetTimeoutError:
            raise workers.start_timeout_error(stage, timeout) from None
        return handle

    def submit(p: int, actor: Any) -> None:
        meta, out = actor.run.options(num_returns=2).remote(reduce_parts, *pieces[p])
        calls[meta] = (p, actor, out)

    calls: dict[Any, tuple[int, Any, Any]] = {}
    try:
        for k in range(min(stage.num_workers() or 1, len(pieces))):
            start(nodes[k % len(nodes)])
        for p in range(len(pieces)):
            submit(p, actors[p % len(actors)])
        replaced: dict[Any, Any] = {}
        while calls:
            ready, _ = ray.wait(list(calls), num_returns=1)
            p, actor, out = calls.pop(ready[0])
            try:
                counts = ray.get(ready[0])
            except RayActorError as err:  # the worker died: a replacement reduces its partitions again
                if actor not in replaced:
                    if len(replaced) >= MAX_REDUCE_RESTARTS:
                        raise RuntimeError(f"shuffle stage {stage.name!r}: {len(replaced) + 1} reduce workers "
                                           f"died; last: {err}") from err
                    logger.warning("shuffle stage %r: a reduce worker died (%s); its partitions are reduced again",
                                   stage.name, type(err).__name__)
                    replaced[actor] = start(nodes[p % len(nodes)])
                submit(p, replaced[actor])
                continue
            report(stage.index, 0, counts[1], counts[2])
            outputs.append((out, counts[1] + counts[2]))
        return outputs
    finally:
        workers.stop_workers(actors, stage.run_id, executor.options.teardown_timeout, log=logger,
                             indices=[stage.index])

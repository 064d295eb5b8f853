"""A gang stage on Ray, written once for every Ray executor.

The ranks are :class:`~curator_exec_ray.actors.StageActor` actors in one placement group
(``placement_strategy``), so they start together or not at all; a group Ray cannot place within
the start timeout fails the run instead of hanging. Rank 0's ``gang_root()`` runs first, in rank 0's
actor on the stage instance that rank 0 then sets up and runs (so it may keep what it made); then
every rank's ``setup`` at once, then every rank's share at once.

**Data.** The gang's input stays in the object store, in the chunks it came in; the driver holds
their refs and counts. A first pass (a small Ray task per chunk) brings back only the chunk's task
ids (``None`` for a failure record): from them the driver cuts the shares
(:meth:`~curator_exec_core.gang.ManagedGang.share_positions`, the core's own rule) as
``(chunk, start, stop)`` slices, and each rank's actor gets the refs of its chunks and its slices
and fetches its share itself. Each rank's outputs stay in the object store (a second return
value); its counts (the first) come back to the driver and go to the run's stats once per rank
call. The outputs reach the driver only when the gang is the run's last segment.

A rank whose process dies takes the gang down: the whole gang is started again
(``MAX_GANG_RESTARTS`` times at most) and the stage reruns on its shares, which stay in the store
until it finished.
"""

from __future__ import annotations

import bisect
import logging
from typing import Any

from curator_exec_core.gang import FAILURE_GRACE, ManagedGang
from curator_exec_core.stats import Counts
from curator_exec_core.tasks import FailedTask, Task
from curator_exec_ray.actors import StageActor, remote
from curator_exec_ray.chunking import TaskChunk, chunks
from curator_exec_ray.context import RayRun
from curator_exec_ray.placement import node_selector, remote_options
from curator_exec_ray.teardown import stop_workers
from curator_exec_ray.waiting import wait_started, worker_request

__all__ = ["run_gang", "gang_chunks", "MAX_GANG_RESTARTS"]

logger = logging.getLogger("curator_exec.ray")

#: times a gang whose rank died is started again before the run fails
MAX_GANG_RESTARTS = 2

#: a piece of a share: the tasks ``start:stop`` of chunk ``k`` (an index into the refs sent with it)
Slice = tuple[int, int, int]


def task_ids(tasks: list[Task]) -> list[str | None]:
    """A Ray task on one chunk: its tasks' ids, ``None`` for a failure record (all the driver learns)."""
    return [None if isinstance(t, FailedTask) else t.task_id for t in tasks]


def cut(refs: list[Any], slices: list[Slice]) -> list[Task]:
    """The tasks ``slices`` name, in order, fetched here (a worker) from the chunks ``refs``."""
    if not slices:
        return []
    import ray

    used = sorted({k for k, _, _ in slices})
    got = dict(zip(used, ray.get([refs[k] for k in used]), strict=True))
    return [t for k, start, stop in slices for t in got[k][start:stop]]


def _run_share(stage: ManagedGang, refs: list[Any], slices: list[Slice]) -> tuple[Counts, list[Task]]:
    """In a rank's actor: its share, fetched from the store, then its one call; counts first."""
    out = stage.run_share(cut(refs, slices))
    return stage.last_counts, out


def run_gang(ray_run: RayRun, stage: ManagedGang, tasks: list[Task]) -> list[Task]:
    """All of ``stage`` on Ray for ``tasks`` (its whole input, in the driver: the core split the
    pipeline at the gang); returns the failure records that came in, then the ranks' outputs."""
    out: list[Task] = gang_chunks(ray_run, stage, chunks(tasks, max(1, -(-len(tasks) // stage.size))), last=True)
    return out


def gang_chunks(ray_run: RayRun, stage: ManagedGang, inputs: list[TaskChunk], last: bool) -> Any:
    """All of ``stage`` on Ray for ``inputs`` (its whole input as chunks, in the object store or
    here): the failure records that came in, then the ranks' outputs, as chunks left in the object
    store, or (``last``) as a list of tasks in the driver. The driver never fetches the input."""
    import ray
    from ray.exceptions import NodeDiedError, RayActorError, WorkerCrashedError

    ray_run.ensure_ray()
    ray_run.run.release_parked()  # map workers kept for another window would hold the resources
    refs, ids = _chunk_ids(ray_run, stage, inputs)
    offsets = [0]
    for chunk_ids in ids:
        offsets.append(offsets[-1] + len(chunk_ids))
    flat = [tid for chunk_ids in ids for tid in chunk_ids]
    del ids
    shares = [_slices(pick, offsets, refs) for pick in stage.share_positions(flat)]
    records = _slices([i for i, tid in enumerate(flat) if tid is None], offsets, refs)
    del flat
    box = ray.put(stage)
    for attempt in range(MAX_GANG_RESTARTS + 1):
        try:
            outputs = _one_gang(ray_run, stage, box, shares, attempt)
        except (RayActorError, WorkerCrashedError, NodeDiedError) as err:
            if attempt == MAX_GANG_RESTARTS:
                raise RuntimeError(f"gang stage {stage.name!r}: a rank died in each of {attempt + 1} attempts "
                                   f"(MAX_GANG_RESTARTS={MAX_GANG_RESTARTS}); last: {err}") from err
            logger.warning("gang stage %r: a rank died (%s); starting the whole gang again", stage.name,
                           type(err).__name__)
            continue
        for counts, _ in outputs:
            ray_run.report(stage.index, counts)
        return _outputs(ray_run, stage, records, outputs, last)
    raise AssertionError("unreachable")  # pragma: no cover


def _chunk_ids(ray_run: RayRun, stage: ManagedGang, inputs: list[TaskChunk]) -> tuple[list[Any], list[list[Any]]]:
    """Every chunk's ref (a chunk here is put in the store) and its tasks' ids (a Ray task per
    chunk in the store fetches them there, on the stage's nodes)."""
    import ray

    nodes = ray_run.worker_nodes(stage)
    ids_of = remote(task_ids)
    refs: list[Any] = []
    ids: list[Any] = []
    for i, chunk in enumerate(inputs):
        if chunk.in_store:
            refs.append(chunk.ref)
            ids.append(ids_of.options(**remote_options(0.0, 0.0, runtime_env=ray_run.runtime_env,
                                                       node_id=nodes[i % len(nodes)])).remote(chunk.ref))
        else:
            refs.append(ray.put(chunk.tasks))
            ids.append(task_ids(chunk.tasks or []))
    pending = [r for r in ids if not isinstance(r, list)]
    got = iter(ray.get(pending))
    return refs, [r if isinstance(r, list) else next(got) for r in ids]


def _slices(positions: list[int], offsets: list[int], refs: list[Any]) -> tuple[list[Any], list[Slice]]:
    """The tasks at ``positions`` (of all chunks, one after the other; ``offsets``: where each chunk
    starts) as the refs of the chunks they are in and runs ``(k, start, stop)`` within chunk ``k``."""
    used: dict[int, int] = {}
    out: list[list[int]] = []
    for pos in positions:
        c = bisect.bisect_right(offsets, pos) - 1
        k = used.setdefault(c, len(used))
        at = pos - offsets[c]
        if out and out[-1][0] == k and out[-1][2] == at:
            out[-1][2] = at + 1
        else:
            out.append([k, at, at + 1])
    return [refs[c] for c in used], [(k, start, stop) for k, start, stop in out]


def _outputs(ray_run: RayRun, stage: ManagedGang, records: tuple[list[Any], list[Slice]],
             outputs: list[tuple[Counts, Any]], last: bool) -> Any:
    """The records that came in (cut from their chunks by a small Ray task), then each rank's outputs."""
    import ray

    n_records = sum(stop - start for _, start, stop in records[1])
    kept = (remote(cut).options(**remote_options(0.0, 0.0, runtime_env=ray_run.runtime_env)).remote(*records)
            if n_records else None)
    if last:
        got: list[Task] = ray.get(kept) if kept is not None else []
        return got + [t for out in ray.get([ref for _, ref in outputs]) for t in out]
    out_chunks = [TaskChunk(ref=kept, n=n_records)] if kept is not None else []
    return out_chunks + [TaskChunk(ref=ref, n=counts[1] + counts[2]) for counts, ref in outputs
                         if counts[1] + counts[2]]


def _one_gang(ray_run: RayRun, stage: ManagedGang, box: Any, shares: list[tuple[list[Any], list[Slice]]],
              attempt: int) -> list[tuple[Counts, Any]]:
    """One start of the gang: each rank's counts and the ref of its outputs (left in the store)."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    size, res = stage.size, stage.resources
    bundle = {"CPU": res.cpus, **({"GPU": res.gpus} if res.gpus else {})}
    selectors = _bundle_selectors(ray_run, stage)
    pg = placement_group([dict(bundle) for _ in range(size)], strategy=stage.stage.placement_strategy,
                         **({"bundle_label_selector": selectors} if selectors else {}))
    actors: list[Any] = []
    try:
        strategy = stage.stage.placement_strategy
        wait_started(ray_run, stage, [pg.ready()], f"{worker_request(res.cpus, res.gpus)} per rank",
                     unit="placement groups", detail=f" (one group of {size} bundles, strategy {strategy}"
                     + (f", label selectors {selectors}" if selectors else "") + ")")
        actors = [remote(StageActor).options(
            num_cpus=res.cpus, num_gpus=res.gpus, max_restarts=0, **ray_run.remote_env(),
            scheduling_strategy=PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=r)).remote()
            for r in range(size)]
        actors[0].load.remote(box)  # rank 0's own instance: gang_root() on it, then its setup
        root = ray.get(actors[0].root.remote())
        prefix = f"{stage.run_id}/{stage.index}:{stage.name}/gang{attempt}"
        _together(stage, [a.setup.remote(None if r == 0 else box, f"{prefix}/rank{r}", (r, root))
                          for r, a in enumerate(actors)])
        calls = [a.run.options(num_returns=2).remote(_run_share, *shares[r]) for r, a in enumerate(actors)]
        counts = _together(stage, [meta for meta, _ in calls])
        return [(c, out) for c, (_, out) in zip(counts, calls, strict=True)]
    finally:
        stop_workers(actors, stage.run_id, ray_run.teardown_timeout, log=logger, indices=[stage.index])
        remove_placement_group(pg)


def _bundle_selectors(ray_run: RayRun, stage: ManagedGang) -> list[dict[str, str]] | None:
    """Where each rank's bundle may go, from the schedule: rank ``r`` on its pinned node, else off the
    excluded nodes (the head with ``ignore_head_node``); None if the schedule says nothing."""
    pins = ray_run.nodes(stage) or []
    _, excluded = ray_run.allowed_nodes(stage)
    selectors = []
    for r in range(stage.size):
        pin = pins[r % len(pins)] if pins else None
        selectors.append(node_selector(only=[pin]) if pin else node_selector(never=excluded))
    return selectors if any(selectors) else None


def _together(stage: ManagedGang, refs: list[Any]) -> list[Any]:
    """The results of one call per rank. A rank that died raises its death (the gang restarts) even
    when another rank failed because of it; once one failed, the others get ``FAILURE_GRACE`` s."""
    import ray
    from ray.exceptions import NodeDiedError, RayActorError, WorkerCrashedError

    pending, first_error = list(refs), None
    while pending:
        done, pending = ray.wait(pending, num_returns=1, timeout=FAILURE_GRACE if first_error else None)
        if not done:
            break  # the others are stuck on the failed rank (a collective): give up on them
        try:
            ray.get(done[0])
        except (RayActorError, WorkerCrashedError, NodeDiedError):
            raise
        except Exception as exc:
            first_error = first_error or exc
    if first_error is not None:
        raise first_error
    return ray.get(refs)

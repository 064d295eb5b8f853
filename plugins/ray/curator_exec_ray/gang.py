"""A gang stage on Ray, written once for every Ray executor.

The ranks are :class:`~curator_exec_ray.actors.StageActor` actors in one placement group
(``placement_strategy``), so they start together or not at all; a group Ray cannot place within
the start timeout fails the run instead of hanging. Rank 0's ``gang_root()`` runs first, in rank 0's
actor on the stage instance that rank 0 then sets up and runs (so it may keep what it made); then
every rank's ``setup`` at once, then every rank's share at once. Counts come back with each share. A rank
whose process dies takes the gang down: the whole gang is started again (``MAX_GANG_RESTARTS``
times at most) and the stage reruns from its inputs, which the driver keeps until it finished.
"""

from __future__ import annotations

import logging
from typing import Any

from curator_exec_core.gang import FAILURE_GRACE, ManagedGang
from curator_exec_core.stats import Counts
from curator_exec_core.tasks import FailedTask, Task
from curator_exec_ray.actors import StageActor, remote
from curator_exec_ray.context import RayRun
from curator_exec_ray.placement import node_selector
from curator_exec_ray.teardown import stop_workers
from curator_exec_ray.waiting import wait_started, worker_request

__all__ = ["run_gang", "MAX_GANG_RESTARTS"]

logger = logging.getLogger("curator_exec.ray")

#: times a gang whose rank died is started again before the run fails
MAX_GANG_RESTARTS = 2


def _run_share(stage: ManagedGang, share: list[Task]) -> tuple[list[Task], Counts]:
    out = stage.run_share(share)
    return out, stage.last_counts


def run_gang(ray_run: RayRun, stage: ManagedGang, tasks: list[Task]) -> list[Task]:
    """All of ``stage`` on Ray for ``tasks`` (its whole input); returns the failure records that came
    in, then the ranks' outputs."""
    import ray
    from ray.exceptions import NodeDiedError, RayActorError, WorkerCrashedError

    ray_run.ensure_ray()
    lost = (RayActorError, WorkerCrashedError, NodeDiedError)
    records = [t for t in tasks if isinstance(t, FailedTask)]
    shares = [ray.put(share) for share in stage.shares(tasks)]
    box = ray.put(stage)
    for attempt in range(MAX_GANG_RESTARTS + 1):
        try:
            outputs = _one_gang(ray_run, stage, box, shares, attempt)
        except lost as err:
            if attempt == MAX_GANG_RESTARTS:
                raise RuntimeError(f"gang stage {stage.name!r}: a rank died in each of {attempt + 1} attempts "
                                   f"(MAX_GANG_RESTARTS={MAX_GANG_RESTARTS}); last: {err}") from err
            logger.warning("gang stage %r: a rank died (%s); starting the whole gang again", stage.name,
                           type(err).__name__)
            continue
        for _, counts in outputs:
            ray_run.report(stage.index, counts)
        return records + [t for out, _ in outputs for t in out]
    raise AssertionError("unreachable")  # pragma: no cover


def _one_gang(ray_run: RayRun, stage: ManagedGang, box: Any, shares: list[Any], attempt: int) -> list[Any]:
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
        return _together(stage, [a.run.remote(_run_share, shares[r]) for r, a in enumerate(actors)])
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

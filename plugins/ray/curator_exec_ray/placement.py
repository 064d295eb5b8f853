"""Where workers go: per-worker node assignment, node pins and head-node exclusion."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

from curator_exec_core.capacity import Capacity
from curator_exec_core.planning import StagePlan
from curator_exec_core.runner import ManagedStage
from curator_exec_ray import _compat as ray_compat
from curator_exec_ray.cluster import alive_nodes, head_node_ids

__all__ = ["assign_nodes", "replacement_node", "remote_options", "exclude_head_selector", "node_selector"]


def assign_nodes(stages: Sequence[ManagedStage | StagePlan], capacity: Capacity) -> list[list[str | None]]:
    """A node of ``capacity`` for every planned worker of every stage (managed stages, or the
    plan's stages): spread over the nodes, GPU nodes kept for GPU stages; ``None`` where no node
    fits (Ray then places the worker)."""
    free = {n.node_id: [n.cpus, float(n.num_gpus)] for n in capacity.nodes}
    nodes = {n.node_id: n for n in capacity.nodes}
    out: list[list[str | None]] = [[] for _ in stages]
    counts = [s.workers if isinstance(s, StagePlan) else (s.num_workers() or 1) for s in stages]
    for k in range(max(counts, default=0)):  # interleaved: every stage gets its first worker early
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


def replacement_node(node: str | None, placement: Sequence[Sequence[str | None]] | None) -> str | None:
    """Where to start a worker that replaces one pinned to ``node``: that node if it is still
    alive, else another node of ``placement`` that is (``None``: the worker was not pinned)."""
    if node is None:
        return None
    alive = {n["NodeID"] for n in alive_nodes()}
    if node in alive:
        return node
    return next((nid for nodes in placement or [] for nid in nodes if nid in alive), node)


def remote_options(cpus: float = 0.0, gpus: float = 0.0, *, runtime_env: Mapping[str, Any] | None = None,
                   node_id: str | None = None, soft: bool = False, **extra: Any) -> dict[str, Any]:
    """``.options(...)`` for an actor or task: resources, an optional runtime env and node pin."""
    opts: dict[str, Any] = {"num_cpus": cpus, "num_gpus": gpus, **extra}
    if runtime_env:
        opts["runtime_env"] = dict(runtime_env)
    if node_id:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        opts["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node_id=node_id, soft=soft)
    return opts


def exclude_head_selector() -> dict[str, str]:
    """A ``label_selector`` that keeps workers off the head node(s) ({} if there is none)."""
    heads = head_node_ids()
    if not heads:
        return {}
    return {ray_compat.node_id_label(): "!" + heads[0] if len(heads) == 1 else "!in(" + ", ".join(heads) + ")"}


def node_selector(only: Collection[str] = (), never: Collection[str] = ()) -> dict[str, str]:
    """A ``label_selector`` that keeps workers on the nodes ``only`` (if given), else off ``never``
    ({} if neither)."""
    if only:
        ids = sorted(only)
        return {ray_compat.node_id_label(): ids[0] if len(ids) == 1 else "in(" + ", ".join(ids) + ")"}
    if never:
        ids = sorted(never)
        return {ray_compat.node_id_label(): "!" + ids[0] if len(ids) == 1 else "!in(" + ", ".join(ids) + ")"}
    return {}

"""Waiting for workers Ray has to place: a warning while they cannot be placed, an error at the end.

Whenever the layer (or a plugin) starts workers and waits for them (a pool's actors, a gang's
placement group, a shuffle's reduce actors), Ray may be unable to place them: the cluster is busy,
a pinned node is full or gone, a label selector matches nothing. Ray then waits silently. Here,
after ``placement_warning_s`` seconds (an option of every Ray executor) a warning on the
``curator_exec.ray`` logger names the stage, what each worker asks Ray for, how many are placed of
how many wanted and what every node has free, and it is repeated every ``placement_warning_s``
until they start or ``actor_start_timeout`` fails the run (with the same facts in its error).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

from curator_exec_core.runner import ManagedStage

__all__ = ["PlacementWatch", "wait_started", "worker_request", "cluster_free", "placement_message"]

logger = logging.getLogger("curator_exec.ray")

_GIB = 1024 ** 3


def worker_request(cpus: float, gpus: float = 0.0, *, node: str | None = None,
                   label_selector: Mapping[str, str] | None = None, extra: Mapping[str, float] | None = None) -> str:
    """What one worker asks Ray for, in words: ``{CPU: 1, GPU: 0.5}, pinned to node 1a2b3c4d5e6f``."""
    want = {"CPU": cpus, **({"GPU": gpus} if gpus else {}), **dict(extra or {})}
    text = "{" + ", ".join(f"{k}: {_amount(k, v)}" for k, v in want.items()) + "}"
    if node:
        text += f", pinned to node {node[:12]}"
    if label_selector:
        text += ", label selector " + ", ".join(f"{k}={v}" for k, v in label_selector.items())
    return text


def _amount(key: str, value: float) -> str:
    if key in ("memory", "object_store_memory"):
        return f"{value / _GIB:.1f} GiB"
    return f"{value:g}"


def _free_per_node() -> dict[str, dict[str, float]] | None:
    try:
        from ray._private.state import available_resources_per_node

        return dict(available_resources_per_node())
    except Exception:  # a private name: without it, the cluster's total is said instead
        return None


def cluster_free() -> str:
    """What the cluster has free, per alive node (``free/total`` of CPU, GPU, memory and custom
    resources), or the cluster's total free resources where Ray does not say it per node."""
    import ray

    from curator_exec_ray.cluster import alive_nodes, head_node_ids

    try:
        nodes = alive_nodes()
        heads = set(head_node_ids())
    except Exception:
        nodes, heads = [], set()
    free = _free_per_node()
    if free is None or not nodes:
        total = {k: v for k, v in ray.available_resources().items() if not k.startswith("node:")}
        return "cluster: " + (", ".join(f"{k} {_amount(k, v)}" for k, v in sorted(total.items())) or "nothing")
    parts = []
    for node in nodes:
        nid = node["NodeID"]
        have, total = free.get(nid, {}), node.get("Resources", {})
        keys = ["CPU", "GPU", "memory"] + sorted(
            k for k in total if k not in ("CPU", "GPU", "memory", "object_store_memory") and not k.startswith("node:")
            and not k.startswith("accelerator_type:"))
        shown = [f"{k} {_amount(k, have.get(k, 0.0))}/{_amount(k, total[k])}" for k in keys if k in total]
        head = " (head)" if nid in heads else ""
        parts.append(f"node {nid[:12]}{head} {node.get('NodeManagerAddress', '')}: " + ", ".join(shown))
    return "; ".join(parts)


def placement_message(stage: ManagedStage, waited: float, placed: int, wanted: int, request: str, *,
                      start_timeout: float, unit: str = "workers", detail: str = "") -> str:
    """The warning (and the timeout error's facts) for workers of ``stage`` Ray has not placed."""
    text = (f"stage {stage.name!r}: {placed} of {wanted} {unit} placed after {waited:.0f}s; each asks Ray for "
            f"{request}{detail}. Free (free/total): {cluster_free()}.")
    if placed == 0:
        text += (f" The run fails if none starts within actor_start_timeout={start_timeout:g}s "
                 f"({max(0.0, start_timeout - waited):.0f}s left).")
    return text


class PlacementWatch:
    """When to warn about workers not placed yet: first after ``interval`` seconds of waiting, then
    every ``interval`` while no worker of the stage runs (the stage is blocked), and at doubling
    intervals while some run (the stage works, with fewer workers than planned). ``interval`` None
    or 0: never."""

    def __init__(self, interval: float | None) -> None:
        self.interval = interval or 0.0
        self._next: dict[Any, float] = {}
        self._gap: dict[Any, float] = {}

    def due(self, key: Any, since: float, blocked: bool, now: float | None = None) -> bool:
        """Whether to warn now about ``key`` (a stage), waiting since ``since`` (``time.monotonic()``)."""
        if not self.interval:
            return False
        now = time.monotonic() if now is None else now
        first = since + self.interval
        if now < max(first, self._next.get(key, first)):
            return False
        gap = self.interval if blocked else 2 * self._gap.get(key, self.interval / 2)
        self._gap[key] = gap
        self._next[key] = now + gap
        return True

    def reset(self, key: Any) -> None:
        """``key``'s workers all started: the next wait warns after ``interval`` again."""
        self._next.pop(key, None)
        self._gap.pop(key, None)


def wait_started(ray_run: Any, stage: ManagedStage, refs: Sequence[Any], request: str, *,
                 placed_refs: Sequence[Any] | None = None, unit: str = "workers", detail: str = "",
                 cls: type[Exception] | None = None) -> None:
    """Wait until every ref of ``refs`` (one per worker: its setup call, a placement group's
    ``ready()``) is ready, warning every ``ray_run.placement_warning_s`` while some are not, and
    raise ``ray_run.start_timeout_error`` after ``ray_run.start_timeout``. ``placed_refs`` (one per
    worker, e.g. ``__ray_ready__``) tell a placed worker that is still setting up from one Ray
    has not placed. Errors of the refs are not raised here (``ray.get`` them)."""
    import ray

    start = time.monotonic()
    watch = PlacementWatch(ray_run.placement_warning_s)
    pending = list(refs)
    while True:
        left = ray_run.start_timeout - (time.monotonic() - start)
        step = min(left, 1.0) if ray_run.placement_warning_s else left
        _, pending = ray.wait(pending, num_returns=len(pending), timeout=max(0.0, step))
        if not pending:
            return
        waited = time.monotonic() - start
        placed = len(refs) - len(pending)
        if placed_refs is not None:
            placed = len(ray.wait(list(placed_refs), num_returns=len(placed_refs), timeout=0)[0])
        if waited >= ray_run.start_timeout:
            raise ray_run.start_timeout_error(stage, cls, placed=placed, wanted=len(refs), request=request,
                                              unit=unit)
        if watch.due(stage.index, start, blocked=placed == 0):
            logger.warning(placement_message(stage, waited, placed, len(refs), request,
                                             start_timeout=ray_run.start_timeout, unit=unit, detail=detail))

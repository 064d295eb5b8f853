"""The cluster as the planner sees it: alive nodes, the head node, and per-node capacity.

:func:`cluster_capacity` runs the core's :func:`~curator_exec_core.capacity.probe_local` on every
alive node (a probe task pinned there; in this process for a local Ray we started) and caches the
answer with one policy: reused while the Ray connection, the nodes and their Ray resources are the
same, and for at most :data:`CAPACITY_TTL` seconds.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import attrs

from curator_exec_core.capacity import Capacity, NodeCapacity, probe_local
from curator_exec_ray import _compat as ray_compat
from curator_exec_ray.session import current_session

__all__ = ["HEAD_RESOURCE", "NVML_MODULE_ENV", "CAPACITY_TTL", "alive_nodes", "head_node_ids",
           "nodes_signature", "cluster_capacity", "check_shared_path", "on_nodes", "remove_run_dirs"]

HEAD_RESOURCE = ray_compat.HEAD_RESOURCE
#: set in the driver to make the per-node capacity probe import this module instead of ``pynvml`` (tests only)
NVML_MODULE_ENV = "CURATOR_EXEC_NVML_MODULE"
#: seconds a capacity probe is reused while the cluster's nodes do not change
CAPACITY_TTL = 60.0

_cache: dict[tuple, tuple[float, Capacity]] = {}
_cache_lock = threading.Lock()


def alive_nodes() -> list[dict[str, Any]]:
    """``ray.nodes()`` entries that are alive."""
    import ray

    return [n for n in ray.nodes() if n.get("Alive")]


def head_node_ids(nodes: list[dict[str, Any]] | None = None) -> list[str]:
    """Ids of the alive head node(s)."""
    return [n["NodeID"] for n in (alive_nodes() if nodes is None else nodes) if HEAD_RESOURCE in n.get("Resources", {})]


def nodes_signature(nodes: list[dict[str, Any]] | None = None) -> tuple:
    """What a cached capacity depends on: every alive node and its Ray resources."""
    return tuple(sorted((n["NodeID"], tuple(sorted(n.get("Resources", {}).items())))
                        for n in (alive_nodes() if nodes is None else nodes)))


def _node_visible_gpus() -> str | None:
    """``CUDA_VISIBLE_DEVICES`` as the node's raylet sees it, not as Ray set it for this 0-GPU task
    (with ``RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO=1`` Ray sets ``""``, which would hide every GPU)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    try:
        original = ray_compat.original_visible_gpus()
    except Exception:
        return visible
    if original is None:  # the raylet had no CUDA_VISIBLE_DEVICES: all NVML devices are the node's
        return None
    return ",".join(str(i) for i in original)


def _probe_on_node(node_id: str, is_head: bool, nvml_module: str | None) -> NodeCapacity:
    nvml = None
    if nvml_module:
        import importlib

        nvml = importlib.import_module(nvml_module)
    visible = _node_visible_gpus()
    if visible is None:
        # probe_local reads CUDA_VISIBLE_DEVICES when given None: hide Ray's per-task value
        saved = os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        try:
            return probe_local(node_id=node_id, is_head=is_head, nvml=nvml)
        finally:
            if saved is not None:
                os.environ["CUDA_VISIBLE_DEVICES"] = saved
    return probe_local(node_id=node_id, is_head=is_head, nvml=nvml, visible=visible)


def on_nodes(fn: Any, nodes: list[dict[str, Any]], args_of: Any, timeout: float,
             **options: Any) -> dict[str, Any]:
    """``fn(*args_of(node))`` in a ``num_cpus=0`` task pinned to each of ``nodes``, at most ``timeout``
    seconds: node id -> its answer, for the nodes that answered in time (a task that raised answers
    with its exception)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    task = ray.remote(num_cpus=0, max_retries=0)(fn)
    refs = {n["NodeID"]: task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
        node_id=n["NodeID"], soft=False), **options).remote(*args_of(n)) for n in nodes}
    ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=timeout) if refs else ([], [])
    answers: dict[str, Any] = {}
    for nid, ref in refs.items():
        if ref in ready:
            try:
                answers[nid] = ray.get(ref)
            except Exception as exc:
                answers[nid] = exc
    return answers


def _probe(nodes: list[dict[str, Any]], timeout: float) -> Capacity:
    import ray

    nvml_module = os.environ.get(NVML_MODULE_ENV)
    opts: dict[str, Any] = {}
    if nvml_module:
        opts["runtime_env"] = {"env_vars": {NVML_MODULE_ENV: nvml_module}}
    # A node this process started shares our machine, cgroup and environment: probe it right here
    # instead of waiting for a worker process (about 0.5-1 s on a fresh cluster).
    session = current_session()
    here = ray.get_runtime_context().get_node_id() if session is not None and session.how == "started" else None
    heads = set(head_node_ids(nodes))
    others = [n for n in nodes if n["NodeID"] != here]
    remote = on_nodes(_probe_on_node, others, lambda n: (n["NodeID"], n["NodeID"] in heads, nvml_module),
                      timeout, **opts)
    for n in others:
        answer = remote.get(n["NodeID"])
        if not isinstance(answer, NodeCapacity):
            raise RuntimeError(f"capacity probe of node {n['NodeID'][:12]} failed: "
                               f"{answer if answer is not None else f'no answer within {timeout:g} s'}")
    result: list[NodeCapacity] = []
    for n in nodes:
        nid = n["NodeID"]
        cap = remote[nid] if nid in remote else _probe_on_node(nid, nid in heads, nvml_module)
        res = n.get("Resources", {})
        gpus = cap.gpus[:int(res.get("GPU", 0))]
        reason = cap.gpu_reason
        if cap.gpus and not gpus:
            reason = f"Ray node has no GPU resource (NVML sees {len(cap.gpus)})"
        result.append(attrs.evolve(cap, cpus=float(res.get("CPU", 0.0)), gpus=gpus, gpu_reason=reason,
                                   hostname=n.get("NodeManagerHostname", cap.hostname)))
    return Capacity(nodes=result)


def cluster_capacity(*, ignore_head_node: bool = False, timeout: float = 120.0, cached: bool = True) -> Capacity:
    """Per-node capacity of the cluster we are attached to.

    CPUs are Ray's logical CPUs for the node (what Ray schedules against); GPUs are the NVML
    devices on that node, at most as many as Ray's ``GPU`` resource.
    """
    session = current_session()
    nodes = alive_nodes()
    key = (session.token if session else None, nodes_signature(nodes), os.environ.get(NVML_MODULE_ENV))
    with _cache_lock:
        hit = _cache.get(key) if cached else None
    if hit is not None and time.monotonic() - hit[0] < CAPACITY_TTL:
        capacity = hit[1]
    else:
        capacity = _probe(nodes, timeout)
        with _cache_lock:
            _cache.clear()
            _cache[key] = (time.monotonic(), capacity)
    return capacity.without_head() if ignore_head_node else capacity


#: seconds every node has to show that it sees a checkpoint directory
SHARED_PATH_TIMEOUT = 60.0
_visible: set[tuple] = set()


def _mark_on_node(folder: str, token: str, node_id: str) -> bool:
    """On one node: whether the driver's marker is there; leaves this node's marker for the driver."""
    try:
        with open(os.path.join(folder, "driver")) as f:
            seen = f.read() == token
        with open(os.path.join(folder, node_id), "w") as f:
            f.write(token)
        return seen
    except OSError:
        return False


def check_shared_path(path: str, timeout: float | None = None) -> None:
    """Raise :class:`CheckpointError` unless every alive node other than the driver's sees directory
    ``path``: each writes a marker there and reads the driver's (both ways, so a node-local folder of
    the same name fails too). Bounded by ``timeout``; cached while the nodes stay the same."""
    import shutil
    import uuid

    import ray

    from curator_exec_core.errors import CheckpointError

    timeout = SHARED_PATH_TIMEOUT if timeout is None else timeout
    nodes = alive_nodes()
    key = (path, nodes_signature(nodes))
    here = ray.get_runtime_context().get_node_id()
    others = [n for n in nodes if n["NodeID"] != here]
    if key in _visible or not others:
        return
    token = uuid.uuid4().hex
    folder = os.path.join(path, ".nodes", token)
    os.makedirs(folder)
    try:
        with open(os.path.join(folder, "driver"), "w") as f:
            f.write(token)
        answers = on_nodes(_mark_on_node, others, lambda n: (folder, token, n["NodeID"]), timeout)
        bad = []
        for n in others:
            nid, host = n["NodeID"], n.get("NodeManagerAddress", "?")
            if nid not in answers:
                bad.append(f"node {nid[:12]} ({host}) did not answer within {timeout:.0f} s")
            elif answers[nid] is not True or not os.path.exists(os.path.join(folder, nid)):
                bad.append(f"node {nid[:12]} ({host}) does not see it")
        if bad:
            raise CheckpointError(
                f"checkpoint {path} must be one directory every node sees, and it is not: {'; '.join(bad)}. "
                "Use a path on a filesystem all nodes mount (NFS, a shared volume).")
        _visible.add(key)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def remove_run_dirs(run_id: str, timeout: float = 10.0) -> None:
    """Remove ``run_id``'s scratch folder (``setup_on_node`` locks) on every alive node but the
    driver's (the run driver removes its own)."""
    import ray

    from curator_exec_core.runner import remove_run_dir

    try:
        here = ray.get_runtime_context().get_node_id()
        others = [n for n in alive_nodes() if n["NodeID"] != here]
        if others:
            on_nodes(remove_run_dir, others, lambda n: (run_id,), timeout)
    except Exception:  # the cluster is gone: nothing left to clean
        pass

"""Ray helpers shared by the Ray-based plugins. ``ray`` is imported lazily, inside functions.

Session ownership (the root of many bugs in other frameworks):

* Ray already initialised in this process (the user called ``ray.init``): reuse
  it, never shut it down.
* ``RAY_ADDRESS`` set, or a cluster started with ``ray start`` on this machine:
  connect to it, never shut it down.
* Otherwise start a local Ray and own it. It stays up for the rest of the
  process (so a second run does not pay the start again) and Ray's own exit
  handler stops it; :func:`shutdown_if_owned` stops it earlier on request.

A user ``runtime_env`` is passed to ``ray.init`` when we start or connect, and
should be applied per actor/task (:func:`remote_options`) when Ray was already
initialised, since a running job's runtime env cannot change.

A session is tied to one Ray connection (cluster session name + job id): if the
user shuts Ray down and calls ``ray.init`` again, the old session is forgotten,
so :func:`shutdown_if_owned` never stops a cluster someone else started. A
``ray_current_cluster`` file left behind by a cluster that is gone (``ray start``
or ``ray.cluster_utils.Cluster`` write it) is ignored instead of making
``ray.init`` fail.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import attrs

from curator_exec_core.capacity import Capacity, NodeCapacity, probe_local

__all__ = [
    "temporary_env",
    "RaySession",
    "ensure_ray",
    "include_dashboard_option",
    "current_session",
    "shutdown_if_owned",
    "alive_nodes",
    "cluster_capacity",
    "remote_options",
    "HEAD_RESOURCE",
]

logger = logging.getLogger("curator_exec.ray")

HEAD_RESOURCE = "node:__internal_head__"
#: set in the driver to make the per-node capacity probe import this module instead of ``pynvml`` (tests only)
NVML_MODULE_ENV = "CURATOR_EXEC_NVML_MODULE"

_lock = threading.Lock()
_session: RaySession | None = None


@attrs.frozen
class RaySession:
    """How this process is attached to Ray. ``owned``: we started the cluster."""

    address: str
    owned: bool
    how: str  # "existing" | "connected" | "started"
    #: identifies the Ray connection this session belongs to (cluster session name, job id)
    token: tuple[str, str] = ("", "")


def _connection_token() -> tuple[str, str]:
    """(cluster session name, job id) of the current Ray connection; a new ``ray.init`` changes it."""
    import ray

    ctx = ray.get_runtime_context()
    try:
        session_name = ray._private.worker.global_worker.node.session_name
    except Exception:  # private API moved: the GCS address still tells clusters apart
        session_name = ctx.gcs_address
    return str(session_name), str(ctx.get_job_id())


def _live_session() -> RaySession | None:
    """``_session`` if it still describes the current Ray connection, else None (and forget it)."""
    global _session
    import ray

    if _session is None or not ray.is_initialized():
        _session = None
        return None
    try:
        token = _connection_token()
    except Exception:
        return _session
    if token != _session.token:
        _session = None
    return _session


def _reachable(address: str, timeout: float = 2.0) -> bool:
    """Whether something listens at ``host:port`` (a stale address file points nowhere)."""
    import socket

    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        return True  # not host:port (e.g. ray://...): let Ray judge
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            return True
    except OSError:
        return False


@contextmanager
def temporary_env(env: Mapping[str, str] | None) -> Iterator[None]:
    """Set ``env`` for the duration of a Ray start only (children inherit it), then restore."""
    if not env:
        yield
        return
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update({k: str(v) for k, v in env.items()})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _existing_address() -> str | None:
    """Address of a cluster we would connect to (RAY_ADDRESS or ``ray start``), else None.

    ``RAY_ADDRESS`` is the user's explicit choice and is returned as is. The
    ``ray_current_cluster`` file is only a hint: it outlives the cluster that
    wrote it, so an address there that nothing listens on is ignored.
    """
    env = os.environ.get("RAY_ADDRESS")
    if env:
        return None if env == "local" else env
    try:
        from ray._private.services import canonicalize_bootstrap_address

        address = canonicalize_bootstrap_address(None)
    except Exception:  # private API moved, or a malformed file: start our own
        return None
    if address and not _reachable(address):
        logger.info("ignoring stale Ray address %s (ray_current_cluster): nothing listens there", address)
        return None
    return address


def include_dashboard_option() -> Any:
    """The ``include_dashboard`` option, for the options class of an executor that may start Ray itself."""
    from curator_exec_core.config import option

    return option(
        False, bool,
        "Start Ray's dashboard when this executor starts Ray itself (it adds about 2 s to the start here); "
        "no effect when attaching to a running Ray.")


def ensure_ray(
    runtime_env: Mapping[str, Any] | None = None,
    *,
    start_env: Mapping[str, str] | None = None,
    **init_kwargs: Any,
) -> RaySession:
    """Attach to Ray as described in the module doc and return the session.

    ``start_env``: environment variables the Ray processes we start must see
    (set only around ``ray.init`` and restored right after). ``init_kwargs`` go
    to ``ray.init`` when we start or connect (e.g. ``num_cpus`` for a local start).
    """
    global _session
    import ray

    with _lock:
        if ray.is_initialized():
            if _live_session() is None:
                _session = RaySession(address=ray.get_runtime_context().gcs_address, owned=False, how="existing",
                                      token=_connection_token())
            return _session
        _session = None
        explicit = init_kwargs.pop("address", None)
        address = explicit if explicit not in (None, "auto") else _existing_address()
        if explicit == "auto" and not address:
            address = "auto"  # let Ray find (or fail to find) a running cluster, as the caller asked
        if address == "local":
            address = None
        kwargs: dict[str, Any] = {"ignore_reinit_error": True, "log_to_driver": True, **init_kwargs}
        if runtime_env:
            kwargs["runtime_env"] = dict(runtime_env)
        if address:
            for key in ("num_cpus", "num_gpus", "resources", "object_store_memory", "include_dashboard"):
                kwargs.pop(key, None)  # node options: only for a cluster we start
            ray.init(address=address, **kwargs)
            how, owned = "connected", False
        else:
            with temporary_env(start_env):
                # "local": start a new cluster even if a ray_current_cluster file names another
                ray.init(address="local", **kwargs)
            how, owned = "started", True
        _session = RaySession(address=ray.get_runtime_context().gcs_address, owned=owned, how=how,
                              token=_connection_token())
        logger.info("Ray %s at %s", how, _session.address)
        return _session


def current_session() -> RaySession | None:
    """The session :func:`ensure_ray` set up, if Ray is still initialised."""
    import sys

    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return None
    with _lock:
        return _live_session()


def shutdown_if_owned() -> bool:
    """Shut Ray down if (and only if) we started it. Returns whether it did."""
    global _session
    import ray

    with _lock:
        session = _live_session()  # a session of an earlier connection is never ours to stop
        if session is not None and session.owned:
            ray.shutdown()
            _session = None
            return True
        return False


def alive_nodes() -> list[dict[str, Any]]:
    """``ray.nodes()`` entries that are alive."""
    import ray

    return [n for n in ray.nodes() if n.get("Alive")]


def _node_visible_gpus() -> str | None:
    """``CUDA_VISIBLE_DEVICES`` as the node's raylet sees it, not as Ray set it for this 0-GPU task.

    With ``RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO=1`` Ray sets it to ``""`` for tasks
    that asked for no GPU, which would hide every GPU from the probe.
    """
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    try:
        import ray

        original = ray._private.worker.global_worker.original_visible_accelerator_ids.get("GPU")
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
        # (this is a Ray worker process, not the user's)
        saved = os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        try:
            return probe_local(node_id=node_id, is_head=is_head, nvml=nvml)
        finally:
            if saved is not None:
                os.environ["CUDA_VISIBLE_DEVICES"] = saved
    return probe_local(node_id=node_id, is_head=is_head, nvml=nvml, visible=visible)


def cluster_capacity(*, ignore_head_node: bool = False, timeout: float = 120.0) -> Capacity:
    """Per-node capacity: a probe task pinned to each alive node runs :func:`probe_local` there.

    (The node of a local Ray this process started is probed in this process: same machine.)

    CPUs are Ray's logical CPUs for the node (what Ray schedules against); GPUs
    are the NVML devices on that node, at most as many as Ray's ``GPU`` resource.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = alive_nodes()
    probe = ray.remote(num_cpus=0)(_probe_on_node)
    nvml_module = os.environ.get(NVML_MODULE_ENV)
    opts: dict[str, Any] = {}
    if nvml_module:
        opts["runtime_env"] = {"env_vars": {NVML_MODULE_ENV: nvml_module}}
    # A node this process started (a local Ray of ours) shares our machine, cgroup and environment:
    # probe it right here instead of waiting for a worker process (about 0.5-1 s on a fresh cluster).
    session = current_session()
    here = ray.get_runtime_context().get_node_id() if session is not None and session.how == "started" else None
    refs = [
        None if n["NodeID"] == here else probe.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=n["NodeID"], soft=False), **opts
        ).remote(n["NodeID"], HEAD_RESOURCE in n.get("Resources", {}), nvml_module)
        for n in nodes
    ]
    remote = ray.get([r for r in refs if r is not None], timeout=timeout)
    probed = [_probe_on_node(n["NodeID"], HEAD_RESOURCE in n.get("Resources", {}), nvml_module) if r is None
              else remote.pop(0) for n, r in zip(nodes, refs, strict=True)]
    result: list[NodeCapacity] = []
    for n, cap in zip(nodes, probed, strict=True):
        res = n.get("Resources", {})
        ray_gpus = int(res.get("GPU", 0))
        gpus = cap.gpus[:ray_gpus]
        reason = cap.gpu_reason
        if cap.gpus and not gpus:
            reason = f"Ray node has no GPU resource (NVML sees {len(cap.gpus)})"
        result.append(attrs.evolve(cap, cpus=float(res.get("CPU", 0.0)), gpus=gpus, gpu_reason=reason,
                                   hostname=n.get("NodeManagerHostname", cap.hostname)))
    capacity = Capacity(nodes=result)
    return capacity.without_head() if ignore_head_node else capacity


def remote_options(
    cpus: float = 0.0,
    gpus: float = 0.0,
    *,
    runtime_env: Mapping[str, Any] | None = None,
    node_id: str | None = None,
    soft: bool = False,
) -> dict[str, Any]:
    """``.options(...)`` for an actor or task: resources, an optional runtime env and node pin."""
    opts: dict[str, Any] = {"num_cpus": cpus, "num_gpus": gpus}
    if runtime_env:
        opts["runtime_env"] = dict(runtime_env)
    if node_id:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        opts["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node_id=node_id, soft=soft)
    return opts

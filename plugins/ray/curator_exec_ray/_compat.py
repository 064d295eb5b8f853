"""Every private or undocumented Ray name the Ray layer uses, in one place, checked once.

:func:`check` runs before the first run does any work (``RayExecutorBase``); a name that moved
fails it at once with an error naming the Ray version found and the supported range.
"""

from __future__ import annotations

from typing import Any

from curator_exec_core.errors import check_engine, engine_check

SUPPORTED = ">=2.46,<3"
#: the resource only the head node has (undocumented; how the head is told apart)
HEAD_RESOURCE = "node:__internal_head__"


def session_name() -> str:
    """The cluster session name of the current Ray connection."""
    import ray

    return str(ray._private.worker.global_worker.node.session_name)


def bootstrap_address() -> str | None:
    """The address ``ray.init(address="auto")`` would use (``ray start`` / ``ray_current_cluster``)."""
    from ray._private.services import canonicalize_bootstrap_address

    return canonicalize_bootstrap_address(None)


def original_visible_gpus() -> list[str] | None:
    """``CUDA_VISIBLE_DEVICES`` of this worker's raylet (None: it had none), not Ray's per-task value."""
    import ray

    return ray._private.worker.global_worker.original_visible_accelerator_ids.get("GPU")


def node_id_label() -> str:
    """The node label key ``label_selector`` matches node ids with."""
    import ray

    return getattr(ray._raylet, "RAY_NODE_ID_KEY", "ray.io/node-id")


def call_in_actor(handle: Any, fn: Any, *args: Any) -> Any:
    """``fn(actor_instance, *args)`` inside the actor behind ``handle`` (an object ref)."""
    return handle.__ray_call__.remote(fn, *args)


def address_file() -> str | None:
    """Ray's ``ray_current_cluster`` file (``Cluster`` and ``ray start`` write it)."""
    from ray._common.utils import get_ray_address_file

    return get_ray_address_file(None)


def cluster_pids(nodes: list[Any] | None = None) -> list[int]:
    """PIDs of the processes Ray started for ``nodes`` (``ray._private.node.Node``; default: the local
    cluster this driver started): raylet, GCS, dashboard, ..."""
    import ray

    if nodes is None:
        node = ray._private.worker._global_node
        nodes = [node] if node is not None else []
    return [info.process.pid for node in nodes for infos in node.all_processes.values() for info in infos
            if getattr(info, "process", None) is not None]


def logs_dir() -> str | None:
    """The log folder of the Ray session this driver is attached to (None: no local session)."""
    import ray

    node = ray._private.worker._global_node
    return node.get_logs_dir_path() if node is not None else None


def wrap_worker_lines_handler(wrap: Any) -> None:
    """Replace Ray's handler of the lines workers forward to the driver (``log_to_driver``) by
    ``wrap(handler)``, under the same name (so Ray's disconnect removes it as its own)."""
    from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

    with dispatcher._lock:
        dispatcher.handlers = [(name, wrap(fn) if name == "ray_print_logs" else fn)
                               for name, fn in dispatcher.handlers]


def quiet_blocking_get_warning() -> None:
    """In a worker: Ray's once-per-process "Using blocking ray.get inside async actor" warning counts
    as given (Xenna's ``StageWorker`` is an async actor and our adapter resolves its inputs there)."""
    import ray

    ray._private.worker.blocking_get_inside_async_warned = True


def dead_jobs() -> set[str]:
    """Hex ids of the jobs (drivers) of the attached cluster that have ended (GCS job table)."""
    from ray._private import state

    return {j["JobID"] for j in state.jobs() if j.get("IsDead")}


def _defines(module: Any, text: str) -> bool | None:
    with open(module.__file__, encoding="utf-8") as f:
        return (text in f.read()) or None


@engine_check
def check() -> None:
    """Fail at once if a name above is gone (the first run of any Ray executor calls this)."""
    import ray
    from ray._private import services, worker

    check_engine("Ray", ray.__version__, SUPPORTED, {
        "ray._private.worker.global_worker": lambda: worker.global_worker,
        "ray._private.worker._global_node": lambda: hasattr(worker, "_global_node") or None,
        "ray._private.services.canonicalize_bootstrap_address":
            lambda: getattr(services, "canonicalize_bootstrap_address", None),
        "ray._common.utils.get_ray_address_file": lambda: __import__(
            "ray._common.utils", fromlist=["get_ray_address_file"]).get_ray_address_file,
        "Node.get_logs_dir_path": lambda: getattr(ray._private.node.Node, "get_logs_dir_path", None),
        "ray_logging.global_worker_stdstream_dispatcher (handlers, _lock)": lambda: all(
            hasattr(__import__("ray._private.ray_logging", fromlist=["x"]).global_worker_stdstream_dispatcher, a)
            for a in ("handlers", "_lock")) or None,
        "worker.blocking_get_inside_async_warned": lambda: hasattr(worker, "blocking_get_inside_async_warned") or None,
        "ray._private.state.jobs": lambda: getattr(__import__("ray._private.state", fromlist=["x"]), "jobs", None),
        # __ray_call__ is added to every actor class when Ray builds it: look for it where it is defined
        "actor method __ray_call__": lambda: _defines(ray.actor, "def __ray_call__"),
    }, package="ray")

"""Every private Cosmos-Xenna name this plugin uses, in one place, checked once before a run.

Imported when a run starts (it imports Xenna). :func:`patched` applies, only while
``run_pipeline`` runs, the fixes for Xenna's gaps; :func:`check` fails at once, naming the
Xenna version found and the supported range, if a name it patches has moved.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Collection, Iterator
from importlib.metadata import version
from typing import Any

from cosmos_xenna.pipelines.private import monitoring
from cosmos_xenna.ray_utils import actor_pool, cluster

from curator_exec_core.errors import check_engine, engine_check

SUPPORTED = ">=0.3,<0.6"
#: Ray's default state-API limit (RAY_MAX_LIMIT_FROM_API_SERVER) of a dashboard started without ours
RAY_DEFAULT_STATE_LIMIT = 10000
_LIMITS: dict[str, int] = {}


@engine_check
def check() -> None:
    """Fail at once if a Xenna name this plugin relies on is gone."""
    check_engine("cosmos-xenna", version("cosmos-xenna"), SUPPORTED, {
        "cosmos_xenna.ray_utils.cluster.API_LIMIT": lambda: getattr(cluster, "API_LIMIT", None),
        "cosmos_xenna.ray_utils.cluster.make_cluster_resources_from_ray_nodes":
            lambda: getattr(cluster, "make_cluster_resources_from_ray_nodes", None),
        "cosmos_xenna.ray_utils.actor_pool._kill_actor_and_reap":
            lambda: getattr(actor_pool, "_kill_actor_and_reap", None),
        "cosmos_xenna.pipelines.private.monitoring.RayResourceMonitor._monitors":
            lambda: "self._monitors" in inspect.getsource(monitoring.RayResourceMonitor) or None,
    })


def accepted_state_limit(address: str, list_actors: Callable[..., Any]) -> int:
    """The largest state-API limit the cluster's dashboard accepts: Xenna's 40000 when we started
    Ray with it, else Ray's default. ``list_actors(limit)`` asks the dashboard once."""
    from ray.util.state.exception import RayStateApiException, ServerUnavailable

    for limit in () if address in _LIMITS else (int(cluster.API_LIMIT), RAY_DEFAULT_STATE_LIMIT):
        try:
            list_actors(limit)
        except ServerUnavailable as exc:
            raise RuntimeError(
                "the xenna executor needs the Ray dashboard (state API) of the cluster it runs on, and it is not "
                f"reachable ({exc}). Start Ray with include_dashboard=True (the default when curator-exec starts "
                "Ray for xenna).") from exc
        except RayStateApiException:
            continue  # the dashboard refuses this limit
        _LIMITS[address] = limit
        break
    if address not in _LIMITS:
        raise RuntimeError(f"the Ray dashboard at {address} accepts no state-API limit of {cluster.API_LIMIT} "
                           f"or {RAY_DEFAULT_STATE_LIMIT}; start Ray with RAY_MAX_LIMIT_FROM_API_SERVER=40000")
    return _LIMITS[address]


@contextlib.contextmanager
def patched(state_limit: int, before_kill: Callable[[Any], None], hidden_nodes: Collection[str]) -> Iterator[None]:
    """While a run lasts: Xenna's state-API limit as the dashboard accepts it; ``before_kill(worker)``
    before Xenna kills a worker (0.3 has no ``destroy()``; 0.5 may kill before it returns); ``hidden_nodes``
    out of Xenna's view; Xenna < 0.5's ``NodeResourceMonitor`` actors (never stopped) killed at the end."""
    import ray

    saved = (cluster.API_LIMIT, actor_pool._kill_actor_and_reap, cluster.make_cluster_resources_from_ray_nodes)
    monitor_cls = monitoring.RayResourceMonitor
    saved_init = monitor_cls.__init__
    monitors: list[Any] = []

    def kill(actor_ref: Any, *args: Any, **kwargs: Any) -> Any:
        before_kill(actor_ref)
        return saved[1](actor_ref, *args, **kwargs)

    def init_and_remember(this: Any, *args: Any, **kwargs: Any) -> None:
        saved_init(this, *args, **kwargs)
        monitors.append(this)

    def resources(*args: Any, **kwargs: Any) -> Any:
        res = saved[2](*args, **kwargs)
        return type(res)(nodes={k: v for k, v in res.nodes.items() if k not in hidden_nodes})

    cluster.API_LIMIT = state_limit
    actor_pool._kill_actor_and_reap = kill
    if not hasattr(monitor_cls, "stop"):
        monitor_cls.__init__ = init_and_remember
    if hidden_nodes:
        cluster.make_cluster_resources_from_ray_nodes = resources
    try:
        yield
    finally:
        monitor_cls.__init__ = saved_init
        cluster.API_LIMIT, actor_pool._kill_actor_and_reap, cluster.make_cluster_resources_from_ray_nodes = saved
        for monitor in monitors:
            for handle in getattr(monitor, "_monitors", ()):
                with contextlib.suppress(Exception):
                    ray.kill(handle)

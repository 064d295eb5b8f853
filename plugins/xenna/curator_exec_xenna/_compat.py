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
from cosmos_xenna.utils import python_log

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
        "cosmos_xenna.utils.python_log.info/debug/trace/success/warning": lambda: all(
            callable(getattr(python_log, n, None)) for n in _QUIET_LEVELS) or None,
        "cosmos_xenna.ray_utils.cluster.logger": lambda: getattr(cluster, "logger", None),
    })


#: Xenna's loguru calls (``python_log.<name>``) that go to the engine log file while diverting
_QUIET_LEVELS = {"trace": 5, "debug": 10, "info": 20, "success": 25, "warning": 30}


def _to_engine_log(original: Callable[..., Any], level: int) -> Callable[..., Any]:
    from curator_exec_ray import engine_logs

    def log(message: Any, *args: Any, **kwargs: Any) -> None:
        if not engine_logs.diverting():
            return original(message, *args, **kwargs)
        text = str(message)
        if args or kwargs:
            with contextlib.suppress(Exception):
                text = text.format(*args, **kwargs)
        engine_logs.emit(level, text, name="cosmos_xenna")
        return None

    return log


class _QuietLogger:
    """Xenna modules that log through loguru's ``logger`` itself: chatter to the engine log file."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        for name, level in _QUIET_LEVELS.items():
            setattr(self, name, _to_engine_log(getattr(inner, name), level))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


@contextlib.contextmanager
def quiet_logs() -> Iterator[None]:
    """While a run lasts, Xenna's driver-side log calls below ERROR go to the engine log file (when
    :mod:`curator_exec_ray.engine_logs` diverts); errors are logged by Xenna as usual."""
    saved = {n: getattr(python_log, n) for n in _QUIET_LEVELS}
    saved_logger = cluster.logger
    for name, level in _QUIET_LEVELS.items():
        setattr(python_log, name, _to_engine_log(saved[name], level))
    cluster.logger = _QuietLogger(saved_logger)
    try:
        yield
    finally:
        for name, fn in saved.items():
            setattr(python_log, name, fn)
        cluster.logger = saved_logger


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

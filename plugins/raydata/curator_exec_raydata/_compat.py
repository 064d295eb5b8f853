"""Every private or undocumented Ray Data name this plugin uses, in one place, checked once.

Imported when a run starts (it imports Ray Data). :func:`check` runs before the run does any work:
a name that moved fails it with an error naming the Ray version found and the supported range.
"""

from __future__ import annotations

import inspect
from typing import Any

import ray
from ray.data import DataContext, Dataset
from ray.data._internal.cluster_autoscaler import default_autoscaling_coordinator, default_cluster_autoscaler_v2
from ray.data._internal.execution import streaming_executor
from ray.data._internal.execution.backpressure_policy import ENABLED_BACKPRESSURE_POLICIES_CONFIG_KEY
from ray.data._internal.execution.execution_callback import ExecutionCallback
from ray.data._internal.execution.operators import actor_pool_map_operator
from ray.experimental import internal_kv

from curator_exec_core.errors import check_engine, engine_check

SUPPORTED = ">=2.60,<2.64"
#: the DataContext config key that holds a run's token (which run a callback belongs to)
RUN_KEY = "curator_exec.ray_data.run"
#: token -> the run that holds its actors (driver process)
RUNS: dict[str, Any] = {}


def _source_has(module: Any, *names: str) -> bool | None:
    text = inspect.getsource(module)
    return all(n in text for n in names) or None


@engine_check
def check() -> None:
    check_engine("Ray Data", ray.__version__, SUPPORTED, {
        "StreamingExecutor._topology and ._data_context":
            lambda: _source_has(streaming_executor, "self._topology", "self._data_context"),
        "ActorPoolMapOperator.get_autoscaling_actor_pools":  # its own, not the base class's empty one
            lambda: actor_pool_map_operator.ActorPoolMapOperator.__dict__.get("get_autoscaling_actor_pools"),
        "_ActorPool._running_actors / ._pending_actors":
            lambda: _source_has(actor_pool_map_operator, "self._running_actors", "self._pending_actors"),
        "ActorHandle._actor_id": lambda: _source_has(ray.actor, "self._actor_id"),
        "DataContext.custom_execution_callback_classes":
            lambda: "custom_execution_callback_classes" in DataContext.__dataclass_fields__ or None,
        "config key 'backpressure_policies.enabled'":
            lambda: ENABLED_BACKPRESSURE_POLICIES_CONFIG_KEY == "backpressure_policies.enabled" or None,
        "Dataset.map_batches(ray_remote_args_fn=...)":
            lambda: "ray_remote_args_fn" in inspect.signature(Dataset.map_batches).parameters or None,
        "StreamingExecutor._dataset_id": lambda: _source_has(streaming_executor, "self._dataset_id"),
        "AutoscalingCoordinator actor (name, namespace, requester 'data-<dataset id>', cancel_request)":
            lambda: _source_has(default_autoscaling_coordinator, f'name="{COORDINATOR}"',
                                f'namespace="{COORDINATOR}"', "def cancel_request")
            and _source_has(default_cluster_autoscaler_v2, 'f"data-{execution_id}"'),
        "ray.experimental.internal_kv (_internal_kv_put/_list/_del)": lambda: all(
            hasattr(internal_kv, n) for n in ("_internal_kv_put", "_internal_kv_list", "_internal_kv_del")) or None,
    }, package="ray[data]")


# -- a killed driver's resource request in Ray Data's AutoscalingCoordinator -------------------------
#
# Ray Data's detached AutoscalingCoordinator actor keeps each execution's resource request (requester
# "data-<dataset id>") until the execution cancels it or it expires (180 s). A driver killed mid-run
# never cancels it, and the next run on the cluster is given only what is left. Each of our runs writes
# its requester and its driver's job id into the cluster's KV store; the next run cancels the requests
# of those whose job has ended.

COORDINATOR = "AutoscalingCoordinator"  # the actor's name and namespace
_KV_NAMESPACE = "curator_exec"
_KV_PREFIX = b"ray_data/request/"


def requester_id(executor: Any) -> str:
    """The requester id a Ray Data execution asks the AutoscalingCoordinator for resources under."""
    return f"data-{executor._dataset_id}"


def remember_request(requester: str) -> None:
    job = ray.get_runtime_context().get_job_id()
    internal_kv._internal_kv_put(_KV_PREFIX + requester.encode(), job.encode(), overwrite=True,
                                 namespace=_KV_NAMESPACE)


def forget_request(requester: str) -> None:
    internal_kv._internal_kv_del(_KV_PREFIX + requester.encode(), namespace=_KV_NAMESPACE)


def release_dead_requests() -> list[str]:
    """Cancel the coordinator requests of our executions whose driver (job) has ended; returns them."""
    from curator_exec_ray import _compat as ray_compat

    keys = internal_kv._internal_kv_list(_KV_PREFIX, namespace=_KV_NAMESPACE)
    if not keys:
        return []
    dead = ray_compat.dead_jobs()
    stale = []
    for key in keys:
        job = internal_kv._internal_kv_get(key, namespace=_KV_NAMESPACE)
        if job is not None and job.decode() in dead:
            stale.append(key)
    if not stale:
        return []
    try:
        coordinator = ray.get_actor(COORDINATOR, namespace=COORDINATOR)
    except ValueError:  # no coordinator (it was never created, or was removed): nothing is held
        coordinator = None
    released = []
    for key in stale:
        requester = key[len(_KV_PREFIX):].decode()
        if coordinator is not None:
            ray.get(coordinator.cancel_request.remote(requester), timeout=30)
        internal_kv._internal_kv_del(key, namespace=_KV_NAMESPACE)
        released.append(requester)
    return released


def disable_backpressure(ctx: DataContext) -> None:
    """Switch Ray Data's backpressure policies off for the runs of ``ctx`` (an empty policy list)."""
    ctx.set_config(ENABLED_BACKPRESSURE_POLICIES_CONFIG_KEY, [])


def pool_handles(executor: Any) -> list[Any]:
    """The actor handles (running and pending) of every actor pool of a streaming executor."""
    handles: list[Any] = []
    for op in executor._topology or ():
        for pool in op.get_autoscaling_actor_pools():
            handles += list(pool._running_actors.keys()) + list(pool._pending_actors.values())
    return handles


def actor_key(handle: Any) -> str:
    return handle._actor_id.hex()


class KeepActorsAlive(ExecutionCallback):
    """Holds the run's actor-pool handles, so Ray Data's release does not end them before teardown."""

    def _hold(self, executor: Any) -> None:
        run = RUNS.get(executor._data_context.get_config(RUN_KEY, ""))
        if run is not None:
            run.hold(pool_handles(executor))

    def before_execution_starts(self, executor: Any) -> None:
        run = RUNS.get(executor._data_context.get_config(RUN_KEY, ""))
        if run is not None:
            run.track_request(requester_id(executor))
        self._hold(executor)

    def on_execution_step(self, executor: Any) -> None:
        self._hold(executor)

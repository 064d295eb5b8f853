"""Every private or undocumented Ray Data name this plugin uses, in one place, checked once.

Imported when a run starts (it imports Ray Data). :func:`check` runs before the run does any work:
a name that moved fails it with an error naming the Ray version found and the supported range.
"""

from __future__ import annotations

import inspect
from typing import Any

import ray
from ray.data import DataContext, Dataset
from ray.data._internal.execution import streaming_executor
from ray.data._internal.execution.backpressure_policy import ENABLED_BACKPRESSURE_POLICIES_CONFIG_KEY
from ray.data._internal.execution.execution_callback import ExecutionCallback
from ray.data._internal.execution.operators import actor_pool_map_operator

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
    }, package="ray[data]")


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
        self._hold(executor)

    def on_execution_step(self, executor: Any) -> None:
        self._hold(executor)

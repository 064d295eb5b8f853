"""The Ray Data execution callback that keeps a run's stage actors alive until teardown.

A module of its own because it subclasses a Ray Data class (imported here, not by
the registration path) and must pickle by reference (it travels in the DataContext).
"""

from __future__ import annotations

from typing import Any

from ray.data._internal.execution.execution_callback import ExecutionCallback


class KeepActorsAlive(ExecutionCallback):
    """Holds the run's actor-pool handles so Ray Data's release does not end them before teardown."""

    def _hold(self, executor: Any) -> None:
        from curator_exec_raydata import executor as mod

        run = mod._RUNS.get(executor._data_context.get_config(mod._RUN_KEY, ""))
        if run is not None:
            run.hold(executor)

    def before_execution_starts(self, executor: Any) -> None:
        self._hold(executor)

    def on_execution_step(self, executor: Any) -> None:
        self._hold(executor)

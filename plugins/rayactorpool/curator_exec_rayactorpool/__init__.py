"""curator-exec-rayactorpool: the ``ray_actor_pool`` executor (stages on pools of Ray actors).

Importing this package (as the entry point does, when any executor is listed or asked for) imports
neither Ray nor the Ray layer; ``from curator_exec_rayactorpool import RayActorPoolExecutor`` loads
the executor module, and Ray is imported when an executor first attaches to it.
"""

from __future__ import annotations

from typing import Any

__all__ = ["RayActorPoolExecutor", "RayActorPoolOptions"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from curator_exec_rayactorpool import executor

        return getattr(executor, name)
    raise AttributeError(f"module 'curator_exec_rayactorpool' has no attribute {name!r}")

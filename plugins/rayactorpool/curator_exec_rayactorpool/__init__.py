"""curator-exec-rayactorpool: the ``ray_actor_pool`` executor (stages on pools of Ray actors).

Importing this package does not import Ray; Ray is imported when an executor first attaches to it.
"""

from curator_exec_rayactorpool.executor import RayActorPoolExecutor, RayActorPoolOptions

__all__ = ["RayActorPoolExecutor", "RayActorPoolOptions"]

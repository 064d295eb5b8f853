"""Entry-point module: registers ``ray_actor_pool`` without importing Ray."""

from curator_exec_core import ExecutorSpec, hookimpl


@hookimpl
def curator_exec_register_executors() -> list[ExecutorSpec]:
    return [
        ExecutorSpec(
            name="ray_actor_pool",
            factory="curator_exec_rayactorpool.executor:RayActorPoolExecutor",
            summary="Streams tasks through pools of Ray actors (one pool per stage; stateless stages as Ray "
                    "tasks), with backpressure and actor replacement.",
        )
    ]

"""Entry-point module: registers ``ray_data`` without importing Ray."""

from curator_exec_core import ExecutorSpec, hookimpl


@hookimpl
def curator_exec_register_executors() -> list[ExecutorSpec]:
    return [
        ExecutorSpec(
            name="ray_data",
            factory="curator_exec_raydata.executor:RayDataExecutor",
            summary="Ray Data streaming: a task map per stateless stage (fused where safe), an actor pool per "
                    "stage with setup, tasks grouped into blocks.",
        )
    ]

"""Entry-point module: registers ``xenna`` without importing Xenna or Ray."""

from curator_exec_core import ExecutorSpec, hookimpl


@hookimpl
def curator_exec_register_executors() -> list[ExecutorSpec]:
    return [
        ExecutorSpec(
            name="xenna",
            factory="curator_exec_xenna.executor:XennaExecutor",
            summary="Cosmos-Xenna on Ray: streaming (autoscaled, all stages at once) or batch (stage after stage).",
        )
    ]

"""Entry-point module: registers ``local`` without importing the executor."""

from curator_exec_core import ExecutorSpec, hookimpl


@hookimpl
def curator_exec_register_executors() -> list[ExecutorSpec]:
    return [
        ExecutorSpec(
            name="local",
            factory="curator_exec_local.executor:LocalExecutor",
            summary="In-process, sequential, streaming; the embedded default (no Ray).",
        )
    ]

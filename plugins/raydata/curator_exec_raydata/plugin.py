"""Entry-point module: registers ``ray_data`` without importing Ray."""

from curator_exec_core import executor_registration

curator_exec_register_executors = executor_registration(
    "ray_data", "curator_exec_raydata.executor:RayDataExecutor",
    "Ray Data streaming: a task map per stateless stage (fused where safe), an actor pool per stage with setup, tasks grouped into blocks.")

"""Entry-point module: registers ``ray_actor_pool`` without importing Ray."""

from curator_exec_core import executor_registration

curator_exec_register_executors = executor_registration(
    "ray_actor_pool", "curator_exec_rayactorpool.executor:RayActorPoolExecutor",
    "Streams tasks through pools of Ray actors (one pool per stage; stateless stages as Ray tasks), with backpressure and actor replacement.")

"""Entry-point module: registers ``xenna`` without importing Xenna or Ray."""

from curator_exec_core import executor_registration

curator_exec_register_executors = executor_registration(
    "xenna", "curator_exec_xenna.executor:XennaExecutor",
    "Cosmos-Xenna on Ray: streaming (autoscaled, all stages at once) or batch (stage after stage).")

"""Entry-point module: registers ``local`` without importing the executor."""

from curator_exec_core import executor_registration

curator_exec_register_executors = executor_registration(
    "local", "curator_exec_local.executor:LocalExecutor",
    "In-process, sequential, streaming; the embedded default (no Ray).")

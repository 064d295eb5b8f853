"""Entry-point module: registers ``slurm`` without importing the executor."""

from curator_exec_core import executor_registration

curator_exec_register_executors = executor_registration(
    "slurm", "curator_exec_slurm.executor:SlurmExecutor",
    "Slurm job arrays over a shared run directory (no Ray): one array per map segment, file-based shuffles.")

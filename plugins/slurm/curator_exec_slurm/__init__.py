"""curator-exec-slurm: the ``slurm`` executor, a pipeline as Slurm job arrays over a shared run directory."""

from curator_exec_slurm.executor import SlurmExecutor, SlurmOptions

__all__ = ["SlurmExecutor", "SlurmOptions"]

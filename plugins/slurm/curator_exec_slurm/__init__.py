"""curator-exec-slurm: the ``slurm`` executor, a pipeline as Slurm job arrays over a shared run directory.

The executor is imported on first use (``from curator_exec_slurm import SlurmExecutor``), not when the
registry lists the plugin.
"""

from __future__ import annotations

from typing import Any

__all__ = ["SlurmExecutor", "SlurmOptions"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from curator_exec_slurm import executor

        return getattr(executor, name)
    raise AttributeError(f"module 'curator_exec_slurm' has no attribute {name!r}")

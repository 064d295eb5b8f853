"""curator-exec-local: the in-process, sequential ``local`` executor (no Ray)."""

from curator_exec_local.executor import LocalExecutor

__all__ = ["LocalExecutor"]

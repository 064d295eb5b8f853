"""curator-exec-xenna: the ``xenna`` executor on Cosmos-Xenna (imports Xenna and Ray lazily)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["XennaExecutor", "XennaOptions", "XennaStageOptions"]

if TYPE_CHECKING:  # pragma: no cover
    from curator_exec_xenna.executor import XennaExecutor, XennaOptions, XennaStageOptions


def __getattr__(name: str) -> Any:
    if name in __all__:
        from curator_exec_xenna import executor

        return getattr(executor, name)
    raise AttributeError(name)

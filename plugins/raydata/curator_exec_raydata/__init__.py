"""curator-exec-raydata: the ``ray_data`` executor on Ray Data's streaming executor.

``from curator_exec_raydata import RayDataExecutor`` imports Ray; importing the
package itself (as the entry point does) does not.
"""

from __future__ import annotations

from typing import Any

__all__ = ["RayDataExecutor", "RayDataOptions"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from curator_exec_raydata import executor

        return getattr(executor, name)
    raise AttributeError(f"module 'curator_exec_raydata' has no attribute {name!r}")

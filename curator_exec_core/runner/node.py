"""Per-node, per-run scratch: the folder that holds the ``setup_on_node`` locks of a run."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Callable

__all__ = ["run_dir", "remove_run_dir", "once_per_node"]

try:  # POSIX file locks make setup_on_node once-per-node across processes
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


def run_dir(run_id: str) -> str:
    """The per-run scratch folder on this node (holds the setup_on_node locks)."""
    return os.path.join(tempfile.gettempdir(), f"curator-exec-{os.getuid() if hasattr(os, 'getuid') else 0}", run_id)


def remove_run_dir(run_id: str) -> None:
    """Remove ``run_id``'s scratch folder on this node (the run's driver does it on every node)."""
    shutil.rmtree(run_dir(run_id), ignore_errors=True)


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text)[:80]


def once_per_node(run_id: str, key: str, node_id: str, fn: Callable[[], None]) -> None:
    """Call ``fn`` unless a process of this run on this node already did for ``key`` (a file lock
    in :func:`run_dir`, so it holds across worker processes)."""
    if fcntl is None:  # pragma: no cover - Windows: once per process
        fn()
        return
    folder = run_dir(run_id)
    os.makedirs(folder, exist_ok=True)
    base = os.path.join(folder, f"{_safe(key)}-{_safe(node_id)}")
    with open(base + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not os.path.exists(base + ".done"):
                fn()
                with open(base + ".done", "w"):
                    pass
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)

"""Task id rules shared by every stage kind."""

from __future__ import annotations

__all__ = ["task_order"]


def task_order(task_id: str) -> tuple[tuple[int, int, str], ...]:
    """Sort key of a task id (``"2"`` before ``"10"``, ``"3.1"`` after ``"3"``)."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in task_id.split("."))

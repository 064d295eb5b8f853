"""Lineage arithmetic: which source tasks a task descends from, and its share of each.

A source starts with share 1; a stage that fans a task out into ``k`` gives each output ``1/k`` of
its parent's share; outputs made from a whole batch share the batch's sources. Fractions, no
rounding: a source is finished when the shares recorded for it add up to exactly 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction
from typing import Any

from curator_exec_core.tasks import Task

__all__ = ["Lineage", "shares", "split_lineage", "merge_lineage"]

Lineage = tuple[tuple[str, Any], ...]


def shares(lineage: Lineage, task_id: str) -> Lineage:
    """``((source id, share), ...)`` of a task's lineage. Empty means all of the share of the source
    whose id is the task's own: what every source task starts with, and what a chain of one-to-one
    stages keeps (they keep the id), so such tasks carry nothing."""
    return lineage or ((task_id, 1),)


def split_lineage(task: Task, k: int) -> Lineage:
    """The lineage of each of ``k`` outputs made from one ``task``."""
    own = shares(task.lineage, task.task_id)
    return own if k == 1 else tuple((s, Fraction(w) / k) for s, w in own)


def merge_lineage(tasks: Sequence[Task], k: int) -> Lineage:
    """The lineage of each of ``k`` outputs made from a whole batch (a ``process_batch`` whose
    outputs do not map one to one onto its inputs)."""
    total: dict[str, Fraction] = {}
    for task in tasks:
        for s, w in shares(task.lineage, task.task_id):
            total[s] = total.get(s, Fraction(0)) + Fraction(w)
    return tuple((s, w / k) for s, w in total.items())

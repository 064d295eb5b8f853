"""The work of one call, on a pool actor (:class:`curator_exec_ray.StageActor`) or in a Ray task.

A call returns, for a stage that feeds another, ``(meta, piece_1, ..., piece_p)`` as separate objects
(``meta`` carries the call's counts):
the driver reads only ``meta`` and hands the pieces, still in the object store, to the next stage.
The last stage returns ``(meta, outputs)``.
"""

from __future__ import annotations

import time
from typing import Any, NamedTuple

from curator_exec_core.runner import ManagedStage
from curator_exec_core.stats import Counts
from curator_exec_core.tasks import Task
from curator_exec_ray import split, stage_in_process


class Meta(NamedTuple):
    """What the driver reads of a call: the stage's counts, its seconds in the stage, each piece's size."""

    counts: Counts
    seconds: float
    sizes: tuple[int, ...]


def run_chunks(stage: ManagedStage, pieces: int, piece_size: int, *chunks: list[Task]) -> Any:
    """One call's work: the chunks through ``stage``, the output split into ``pieces`` (padded)."""
    tasks = chunks[0] if len(chunks) == 1 else [t for chunk in chunks for t in chunk]
    start = time.perf_counter()
    out, counts = stage.process_counted(tasks)
    seconds = time.perf_counter() - start
    if pieces <= 0:  # last stage: everything back to the driver in one object
        return Meta(counts, seconds, ()), out
    parts = split(out, piece_size, max_parts=pieces)
    parts += [[] for _ in range(pieces - len(parts))]
    return (Meta(counts, seconds, tuple(len(p) for p in parts)), *parts)


def process_in_task(key: tuple[str, int], stage_box: list[Any], pieces: int, piece_size: int,
                    *chunks: list[Task]) -> Any:
    """A Ray *task* for a stage without lifecycle methods: any pooled worker process runs it."""
    return run_chunks(stage_in_process(key[0], key[1], stage_box), pieces, piece_size, *chunks)

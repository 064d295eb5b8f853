"""Managed stages chained in one process: what the ``local`` executor runs, and what a batch job's
worker (a ``slurm`` array element) runs on its shard.

Stages are chained as generators, so a task goes through every stage before the next one is
pulled in: memory holds one batch per stage plus what the caller keeps, never every intermediate.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable, Iterator

from curator_exec_core.runner.stage import ManagedStage
from curator_exec_core.stages import WorkerMetadata
from curator_exec_core.tasks import Task

__all__ = ["stream_stages"]


def stream_stages(stages: list[ManagedStage], tasks: Iterable[Task], worker_prefix: str = "local") -> Iterator[Task]:
    """``tasks`` through ``stages`` (map stages), lazily: every stage's ``setup`` first (worker id
    ``"<worker_prefix>:<pid>:<stage index>"``), ``teardown`` when the generator ends, raises or is
    closed."""
    node = socket.gethostname()
    try:
        for stage in stages:
            stage.setup(WorkerMetadata(worker_id=f"{worker_prefix}:{os.getpid()}:{stage.index}", node_id=node))
        stream: Iterable[Task] = tasks
        for stage in stages:
            stream = _through(stage, stream)
        yield from stream
    finally:
        for stage in stages:
            stage.teardown()


def _through(stage: ManagedStage, upstream: Iterable[Task]) -> Iterator[Task]:
    size = stage.batch_size
    batch: list[Task] = []
    for task in upstream:
        batch.append(task)
        if len(batch) >= size:
            yield from stage.process_batch(batch)
            batch = []
    if batch:
        yield from stage.process_batch(batch)

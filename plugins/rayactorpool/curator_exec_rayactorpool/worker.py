"""The worker side: a pool actor hosting one managed stage, and the same body as a Ray task.

Plain Python (the executor wraps it with ``ray.remote``). A call returns, for a stage that feeds
another, ``(meta, piece_1, ..., piece_p)`` as separate objects: the driver reads only ``meta``
and hands the pieces, still in the object store, to the next stage. The last stage returns
``(meta, outputs)``.
"""

from __future__ import annotations

import os
import time
from collections import OrderedDict
from typing import Any

from curator_exec_core.runner import ManagedStage
from curator_exec_core.stages import WorkerMetadata
from curator_exec_core.tasks import Task
from curator_exec_ray import workers
from curator_exec_ray.chunking import split

#: (tasks in, outputs, new failure records, seconds in the stage, size of each piece)
Meta = tuple[int, int, int, float, tuple[int, ...]]


def run_chunks(stage: ManagedStage, pieces: int, piece_size: int, chunks: tuple[list[Task], ...]) -> Any:
    """One call's work: the chunks through ``stage``, the output split into ``pieces`` (padded)."""
    tasks = chunks[0] if len(chunks) == 1 else [t for chunk in chunks for t in chunk]
    start = time.perf_counter()
    out = stage.process_batch(tasks)
    seconds = time.perf_counter() - start
    if pieces <= 0:  # last stage: everything back to the driver in one object
        return (*stage.last_counts, seconds, ()), out
    parts = split(out, piece_size, max_parts=pieces)
    parts += [[] for _ in range(pieces - len(parts))]
    meta: Meta = (*stage.last_counts, seconds, tuple(len(p) for p in parts))
    return (meta, *parts)


#: stages of the most recent runs in this (pooled, reused) worker process: run id -> {stage index: stage}
_task_stages: OrderedDict[str, dict[int, ManagedStage]] = OrderedDict()
#: runs whose stages a worker process keeps (older runs' stages are dropped, so they do not pin memory)
TASK_STAGE_RUNS = 2


def process_in_task(key: tuple[str, int], stage_box: list[Any], pieces: int, piece_size: int,
                    *chunks: list[Task]) -> Any:
    """A Ray *task* for a stage without lifecycle methods: any pooled worker process runs it.

    ``stage_box`` holds the stage's object ref (boxed, so Ray does not fetch it for every call);
    the stage is fetched once per process and run.
    """
    run_id, index = key
    stages = _task_stages.get(run_id)
    if stages is None:
        stages = _task_stages[run_id] = {}
        while len(_task_stages) > TASK_STAGE_RUNS:
            _task_stages.popitem(last=False)
    stage = stages.get(index)
    if stage is None:
        import ray

        stage = ray.get(stage_box[0])
        stage.worker_id = f"{ray.get_runtime_context().get_node_id()[:12]}:{os.getpid()}"
        stages[index] = stage
    return run_chunks(stage, pieces, piece_size, chunks)


class ActorPoolWorker:
    """One actor of a stage's pool. Its stage is torn down through :mod:`curator_exec_ray.workers`."""

    def __init__(self) -> None:
        self.stage: ManagedStage | None = None

    def setup(self, stage: ManagedStage, worker_id: str) -> dict[str, Any]:
        """``stage.setup`` (which runs ``setup_on_node`` once per node) with this actor's metadata."""
        import ray

        ctx = ray.get_runtime_context()
        self.stage = stage
        workers.register(stage)
        stage.setup(WorkerMetadata(worker_id=worker_id, node_id=ctx.get_node_id(),
                                   allocation=ctx.get_assigned_resources()))
        return {"worker_id": worker_id, "node_id": ctx.get_node_id(), "pid": os.getpid()}

    def process(self, pieces: int, piece_size: int, *chunks: list[Task]) -> Any:
        assert self.stage is not None, "process() before setup()"
        return run_chunks(self.stage, pieces, piece_size, chunks)

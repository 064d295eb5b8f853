"""The body of a pool actor: hosts one :class:`~curator_exec_core.runner.ManagedStage`.

The class is plain Python; the executor wraps it with ``ray.remote`` when it
starts actors, so importing this module does not import Ray. The stage arrives
in :meth:`ActorPoolWorker.setup` (not the constructor), so a setup error comes back
as the stage's own exception, and a worker could host another stage later.

``process`` takes one or more chunks (lists of tasks; Ray resolves the object
refs the driver passes) and returns, for a stage that feeds another,
``(meta, piece_1, ..., piece_p)`` as separate return objects: the driver reads
only the small ``meta`` and hands the pieces, still in Ray's object store, to the
next stage's actors. The last stage returns ``(meta, outputs)`` as one object.

:func:`process_in_task` is the same body as a plain function, for stages without
lifecycle methods that the executor runs as Ray tasks (``stateless_as_tasks``).
"""

from __future__ import annotations

import math
import os
import time
from collections import OrderedDict
from typing import Any

from curator_exec_core.runner import ManagedStage
from curator_exec_core.stages import WorkerMetadata
from curator_exec_core.tasks import Task

#: (tasks in, tasks out, seconds in the stage, size of each piece)
Meta = tuple[int, int, float, tuple[int, ...]]


def split(tasks: list[Task], pieces: int, piece_size: int) -> list[list[Task]]:
    """``tasks`` in at most ``pieces`` near-equal parts of about ``piece_size``, padded with empty lists."""
    n = len(tasks)
    k = max(1, min(pieces, math.ceil(n / max(1, piece_size)))) if n else 1
    out: list[list[Task]] = []
    start = 0
    for i in range(k):
        end = start + (n - start) // (k - i)
        out.append(tasks[start:end])
        start = end
    return out + [[] for _ in range(pieces - k)]


def run_chunks(stage: ManagedStage, pieces: int, piece_size: int, chunks: tuple[list[Task], ...]) -> Any:
    """One call's work, on an actor or in a task: the chunks through ``stage``, the output split into pieces."""
    tasks = chunks[0] if len(chunks) == 1 else [t for chunk in chunks for t in chunk]
    start = time.perf_counter()
    out = stage.process_batch(tasks)
    seconds = time.perf_counter() - start
    if pieces <= 0:  # last stage: everything back to the driver in one object
        return (len(tasks), len(out), seconds, ()), out
    parts = split(out, pieces, piece_size)
    meta: Meta = (len(tasks), len(out), seconds, tuple(len(p) for p in parts))
    return (meta, *parts)


#: stages of the most recent runs in this (pooled, reused) worker process: run id -> {stage index: stage}
_task_stages: OrderedDict[str, dict[int, ManagedStage]] = OrderedDict()
#: runs whose stages a worker process keeps (older runs' stages are dropped, so they do not pin memory)
TASK_STAGE_RUNS = 2


def process_in_task(key: tuple[str, int], stage_box: list[Any], pieces: int, piece_size: int,
                    *chunks: list[Task]) -> Any:
    """The body of a Ray *task* for a stage without lifecycle methods (see ``has_lifecycle``).

    Such a stage needs no dedicated actor: any of Ray's pooled worker processes can run
    it. ``stage_box`` holds the stage's object ref (boxed, so Ray does not fetch it for
    every call); the stage is fetched once per process and run and kept for the run's
    next calls (only the last ``TASK_STAGE_RUNS`` runs' stages are kept). Nothing to
    set up or tear down, so nothing is left behind.
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
    """One actor of a stage's pool."""

    def __init__(self) -> None:
        self.stage: ManagedStage | None = None
        self.info: dict[str, Any] = {}

    def setup(self, stage: ManagedStage, worker_id: str) -> dict[str, Any]:
        """``stage.setup`` (which runs ``setup_on_node`` once per node) with this actor's metadata."""
        import ray

        ctx = ray.get_runtime_context()
        node_id = ctx.get_node_id()
        try:
            allocation = ctx.get_assigned_resources()
        except Exception:  # pragma: no cover - older Ray
            allocation = None
        self.stage = stage
        stage.setup(WorkerMetadata(worker_id=worker_id, node_id=node_id, allocation=allocation))
        self.info = {"worker_id": worker_id, "node_id": node_id, "pid": os.getpid(),
                     "gpu_ids": list(ray.get_gpu_ids())}
        return self.info

    def process(self, pieces: int, piece_size: int, *chunks: list[Task]) -> Any:
        assert self.stage is not None, "process() before setup()"
        return run_chunks(self.stage, pieces, piece_size, chunks)

    def teardown(self) -> dict[str, Any]:
        """``stage.teardown`` (once; only if setup ran), then forget the stage."""
        stage, self.stage = self.stage, None
        if stage is not None:
            stage.teardown()
        return self.info

    def ping(self) -> int:
        return os.getpid()

"""The ``local`` executor: one worker per stage, in this process, tasks streamed depth-first.

Stages are chained as generators, so a task goes through every stage before the
next one is pulled in: memory holds one batch per stage plus the final outputs,
not every intermediate. Everything else (ids, failures, retries, setup on node,
counts) comes from the core's managed stages.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable, Iterator

from curator_exec_core import BaseExecutor, Capacity, ExecutorOptions, Task, WorkerMetadata
from curator_exec_core.capacity import local_capacity
from curator_exec_core.runner import ManagedStage


class LocalExecutor(BaseExecutor):
    """Runs a pipeline sequentially in the calling process.

    Options: those of every executor (``ignore_failures``, ``max_retries``,
    ``show_progress``, ``progress_interval``, ``ignore_head_node``). The capacity
    is this machine; the plan has one worker per stage.
    """

    name = "local"
    Options = ExecutorOptions
    concurrent_stages = False

    def capacity(self) -> Capacity:
        cap = local_capacity()
        return cap.without_head() if self.ignore_head_node else cap

    def plan_options(self) -> dict:
        return {"max_workers_per_stage": 1}

    def execute(self, stages: list[ManagedStage], initial_tasks: list[Task]) -> list[Task]:
        if not self.is_prepared(stages):  # called directly with plain stages: the whole lifecycle
            return self.execute_unprepared(stages, initial_tasks)
        node = socket.gethostname()
        try:
            for stage in stages:
                stage.setup(WorkerMetadata(worker_id=f"local:{os.getpid()}:{stage.index}", node_id=node))
            stream: Iterable[Task] = initial_tasks
            for stage in stages:
                stream = _through(stage, stream)
            return list(stream)
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

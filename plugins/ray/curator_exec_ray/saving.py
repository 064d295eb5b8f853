"""A barrier's outputs saved into a checkpoint, and read back, by Ray workers, not by the driver.

In a checkpointed run the core saves each barrier's outputs (a resume starts after the last one
saved). On Ray they are chunks in the object store; each chunk goes to a Ray task that Ray places
where the chunk is (it schedules a task near its arguments), which writes it into the barrier's
store (:class:`~curator_exec_core.checkpoint.barrier.BarrierStore`: a file of blocks under the
checkpoint, which every node sees) and returns the block references. The driver receives only those
references and writes the outputs file that names them. The part after the barrier gets them back
as :class:`~curator_exec_core.checkpoint.barrier.StoredBlock` items (the Ray executors declare
``loads_stored_blocks``), each loaded into the object store by a Ray task (:func:`stored_chunks`).

Both kinds of task take no CPU of the plan's (they are I/O, and the stages' workers may hold every
CPU), carry the run's ``runtime_env`` (they unpickle the user's data), keep to the nodes the
schedule allows the stage they serve, and are retried like any Ray task (a retried writer writes a
new file; the file the outputs file does not name is removed).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import Any

from curator_exec_core.checkpoint import BarrierStore, BlockRef, StoredBlock
from curator_exec_core.runner import ManagedStage
from curator_exec_core.tasks import Task
from curator_exec_ray.actors import remote
from curator_exec_ray.chunking import TaskChunk
from curator_exec_ray.context import RayRun
from curator_exec_ray.placement import node_selector, remote_options

__all__ = ["WRITERS_IN_FLIGHT", "save_chunks", "stored_chunks"]

#: chunks being written, and blocks being loaded, at a time (each such task holds one chunk or block; they
#: take no CPU, so without a bound Ray would start a worker process for each)
WRITERS_IN_FLIGHT = 4


def _write(store: BarrierStore, tasks: list[Any]) -> list[BlockRef]:
    return store.write(tasks)


def _load(block: StoredBlock, *after: Any) -> tuple[list[Task], None]:
    """A stored block's tasks, and a marker the next load of its lane waits for (``after``)."""
    return block.load(), None


def _options(ray_run: RayRun, stage: ManagedStage) -> dict[str, Any]:
    """A saving or loading task's ``.options``: no CPU, the run's runtime env, the stage's nodes."""
    selector = node_selector(*ray_run.allowed_nodes(stage))
    return remote_options(runtime_env=ray_run.runtime_env, max_retries=3,
                          **({"label_selector": selector} if selector else {}))


def save_chunks(ray_run: RayRun, stage: ManagedStage, chunks: list[TaskChunk], store: BarrierStore) -> Iterator[BlockRef]:
    """The tasks of ``chunks`` (the barrier ``stage``'s outputs) written through ``store`` where they
    are (at most :data:`WRITERS_IN_FLIGHT` at a time); their block references, in chunk order. A chunk
    held here (not in the object store) is written by this process."""
    import ray

    writer = remote(_write).options(**_options(ray_run, stage))
    pending: deque[Any] = deque()
    chunks.reverse()
    while chunks or pending:
        while chunks and len(pending) < WRITERS_IN_FLIGHT:
            chunk = chunks.pop()
            pending.append(writer.remote(store, chunk.ref) if chunk.in_store else store.write(chunk.tasks or []))
        head = pending.popleft()
        yield from head if isinstance(head, list) else ray.get(head)


def stored_chunks(ray_run: RayRun, stage: ManagedStage, items: list[Any]) -> list[TaskChunk]:
    """``items`` (tasks and stored blocks, the input of ``stage``) as chunks: the tasks as they are,
    each stored block as the object ref of a Ray task that loads it (the driver never reads it)."""
    tasks = [t for t in items if not isinstance(t, StoredBlock)]
    blocks = [b for b in items if isinstance(b, StoredBlock)]
    chunks = [TaskChunk(tasks)] if tasks else []
    if blocks:
        loader = remote(_load).options(num_returns=2, **_options(ray_run, stage))
        lanes: list[Any] = [None] * WRITERS_IN_FLIGHT  # block i waits for block i - WRITERS_IN_FLIGHT's marker
        for i, block in enumerate(blocks):
            lane = i % WRITERS_IN_FLIGHT
            ref, lanes[lane] = loader.remote(block, *([lanes[lane]] if lanes[lane] is not None else []))
            chunks.append(TaskChunk(ref=ref, n=block.count))
    return chunks

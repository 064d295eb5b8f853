"""A barrier's outputs saved into a checkpoint, and read back, by Ray workers, not by the driver.

In a checkpointed run the core saves each barrier's outputs (a resume starts after the last one
saved). On Ray they are chunks in the object store; each chunk goes to a Ray task that Ray places
where the chunk is (it schedules a task near its arguments), which writes it into the barrier's
store (:class:`~curator_exec_core.checkpoint.barrier.BarrierStore`: a file of blocks under the
checkpoint, which every node sees) and returns the block references. The driver receives only those
references and writes the outputs file that names them. The part after the barrier gets them back
as :class:`~curator_exec_core.checkpoint.barrier.StoredBlock` items (the Ray executors declare
``loads_stored_blocks``), each loaded into the object store by a Ray task (:func:`stored_chunks`).
"""

from __future__ import annotations

import functools
from collections import deque
from collections.abc import Iterator
from typing import Any

from curator_exec_core.checkpoint import BarrierStore, BlockRef, StoredBlock
from curator_exec_core.tasks import Task
from curator_exec_ray.chunking import TaskChunk

__all__ = ["WRITERS_IN_FLIGHT", "save_chunks", "stored_chunks"]

#: chunks being written at a time (each writer holds one chunk; they take no CPU of the plan's)
WRITERS_IN_FLIGHT = 4


def _write(store: BarrierStore, tasks: list[Any]) -> list[BlockRef]:
    return store.write(tasks)


def _load(block: StoredBlock) -> list[Task]:
    return block.load()


@functools.cache
def _remote_writer() -> Any:
    import ray

    # no CPU reserved: writing is I/O, and the stages' workers may hold every CPU; retried like any Ray task
    # (a retry writes a new file; the one the outputs file does not name is removed)
    return ray.remote(num_cpus=0, max_retries=3)(_write)


@functools.cache
def _remote_loader() -> Any:
    import ray

    return ray.remote(num_cpus=0, max_retries=3)(_load)


def stored_chunks(items: list[Any]) -> list[TaskChunk]:
    """``items`` (tasks and stored blocks) as chunks: the tasks as they are, each stored block as the
    object ref of a Ray task that loads it (the driver never reads it)."""
    tasks = [t for t in items if not isinstance(t, StoredBlock)]
    loader = _remote_loader()
    blocks = [TaskChunk(ref=loader.remote(b), n=b.count) for b in items if isinstance(b, StoredBlock)]
    return ([TaskChunk(tasks)] if tasks else []) + blocks


def save_chunks(chunks: list[TaskChunk], store: BarrierStore) -> Iterator[BlockRef]:
    """The tasks of ``chunks`` written through ``store`` where they are (at most
    :data:`WRITERS_IN_FLIGHT` at a time); their block references, in chunk order. A chunk held here
    (not in the object store) is written by this process."""
    import ray

    writer = _remote_writer()
    pending: deque[Any] = deque()
    chunks.reverse()
    while chunks or pending:
        while chunks and len(pending) < WRITERS_IN_FLIGHT:
            chunk = chunks.pop()
            pending.append(writer.remote(store, chunk.ref) if chunk.in_store else store.write(chunk.tasks or []))
        head = pending.popleft()
        yield from head if isinstance(head, list) else ray.get(head)

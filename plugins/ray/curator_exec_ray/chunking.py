"""One rule for how many tasks travel together, one splitter, and the one chunk type.

Every Ray engine pays a fixed cost per call or block (a scheduling round, a ``ray.put``), so tasks
travel in chunks. :func:`auto_chunk_size` sizes the first chunks from the input size and the widest
stage (enough chunks to keep every worker busy); :class:`ChunkSizer` then refines a stage's size
from measured per-task time, aiming at :data:`TARGET_CHUNK_SECONDS` of work per call.
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Iterator, Sequence
from typing import Any, TypeVar

from curator_exec_core.stats import StageCounts, add_counts

__all__ = ["TARGET_CHUNK_SECONDS", "MAX_CHUNK", "auto_chunk_size", "split", "put_chunks", "ChunkSizer", "TaskChunk",
           "chunks", "ARROW_COLUMN", "encode_chunks", "arrow_table", "chunks_of_table"]

T = TypeVar("T")

#: measured sizing aims at this much stage time per call ...
TARGET_CHUNK_SECONDS = 0.2
#: ... and never above this many tasks (an engine may allow more)
MAX_CHUNK = 256
#: at least this many chunks per run, or this many per worker of the widest stage
MIN_CHUNKS = 16
CHUNKS_PER_WORKER = 4


def auto_chunk_size(n_tasks: int, widest: int, *, min_size: int = 1, max_size: int = MAX_CHUNK) -> int:
    """Tasks per chunk for ``n_tasks`` inputs: ``max(16, 4 x widest)`` chunks, within the bounds."""
    chunks = max(MIN_CHUNKS, CHUNKS_PER_WORKER * max(1, widest))
    return max(1, min_size, min(max_size, math.ceil(n_tasks / chunks)))


def split(items: Sequence[T], size: int, max_parts: int | None = None) -> list[list[T]]:
    """``items`` in near-equal parts of at most ``size`` (more when ``max_parts`` caps the count); no empty part."""
    n = len(items)
    if not n:
        return []
    k = math.ceil(n / max(1, size))
    if max_parts is not None:
        k = max(1, min(k, max_parts))
    out, start = [], 0
    for i in range(k):
        end = start + (n - start) // (k - i)
        out.append(list(items[start:end]))
        start = end
    return out


def put_chunks(tasks: Sequence[Any], widest: int) -> list[TaskChunk]:
    """``tasks`` in the object store, in chunks of :func:`auto_chunk_size`."""
    import ray

    return [TaskChunk(ref=ray.put(part), n=len(part)) for part in split(tasks, auto_chunk_size(len(tasks), widest))]


class ChunkSizer:
    """Per-stage chunk sizes: ``fixed`` if given, else from measured seconds per task."""

    def __init__(self, stages: int, fixed: int | None = None, first: int = 4, max_size: int = MAX_CHUNK) -> None:
        self.fixed = fixed
        self.first = first
        self.max_size = max_size
        self.per_task: list[float | None] = [None] * stages

    def observe(self, stage: int, tasks: int, seconds: float) -> None:
        """Fold one call's timing into the stage's estimate (an even moving average)."""
        if tasks:
            now = seconds / tasks
            old = self.per_task[stage]
            self.per_task[stage] = now if old is None else 0.5 * old + 0.5 * now

    def size(self, stage: int) -> int:
        if self.fixed:
            return self.fixed
        per_task = self.per_task[stage]
        size = self.first if per_task is None else int(TARGET_CHUNK_SECONDS / max(per_task, 1e-7))
        return max(1, min(self.max_size, size))


class TaskChunk:
    """Tasks travelling as one unit between the driver, the object store and the workers: the tasks
    themselves, or (``ref``) an object ref of them left in the object store, with their count ``n``;
    and ``counts``, the per-stage counts (stage index -> tasks in, out, failed) of the work that made
    them, not yet reported to the driver's run stats (``None``: nothing to report). The one chunk type
    of the ``execute_chunks`` contract, the shuffle and every plugin. Short repr: engines log items."""

    __slots__ = ("tasks", "ref", "n", "counts")

    def __init__(self, tasks: list[Any] | None = None, ref: Any = None, n: int | None = None,
                 counts: StageCounts | None = None) -> None:
        self.tasks, self.ref = tasks, ref
        self.n = len(tasks) if n is None and tasks is not None else (n or 0)
        self.counts = counts

    @property
    def in_store(self) -> bool:
        """Whether the tasks are in the object store (``ref``) rather than here."""
        return self.tasks is None

    def resolve(self) -> list[Any]:
        """The tasks (fetched from the object store if they are there)."""
        if self.tasks is None:
            import ray

            return ray.get(self.ref)
        return self.tasks

    def add_counts(self, index: int, counts: Sequence[int]) -> None:
        self.counts = add_counts(self.counts if self.counts is not None else {}, index, counts)

    def __len__(self) -> int:
        return self.n

    def __getstate__(self) -> tuple:
        return self.tasks, self.ref, self.n, self.counts

    def __setstate__(self, state: tuple) -> None:
        self.tasks, self.ref, self.n, self.counts = state if len(state) == 4 else (*state, None)

    def __repr__(self) -> str:
        return f"<Chunk of {self.n} tasks{' in the object store' if self.tasks is None else ''}>"


def chunks(tasks: list[Any], size: int) -> list[TaskChunk]:
    """``tasks`` as chunks of at most ``size`` (no empty chunk)."""
    return [TaskChunk(part) for part in split(tasks, size)]


# -- the Arrow form of chunks (engines that move Arrow blocks, such as Ray Data) ----------------

#: the one column of a chunk table: each row one chunk, pickled as ``(counts, [Task, ...])``
ARROW_COLUMN = "tasks"
_PROTOCOL = pickle.HIGHEST_PROTOCOL


def _fit(counts: StageCounts | None, part: list[Any], max_bytes: int) -> Iterator[bytes]:
    """``(counts, part)`` pickled, split in halves until every piece is at most ``max_bytes``."""
    data = pickle.dumps((counts, part), protocol=_PROTOCOL)
    if len(data) <= max_bytes or len(part) <= 1:
        yield data
        return
    for j, piece in enumerate(split(part, math.ceil(len(part) / math.ceil(len(data) / max_bytes)))):
        yield from _fit(counts if j == 0 else None, piece, max_bytes)


def encode_chunks(tasks: list[Any], counts: StageCounts | None, per_chunk: int, max_bytes: int) -> Iterator[bytes]:
    """``tasks`` as rows of a chunk table: chunks of at most ``per_chunk`` tasks and (unless one task
    alone is larger) ``max_bytes``; ``counts`` travel with the first row only (a row of no tasks when
    there are only counts to send)."""
    if not tasks:
        if counts:
            yield pickle.dumps((counts, []), protocol=_PROTOCOL)
        return
    for j, part in enumerate(split(tasks, per_chunk)):
        yield from _fit(counts if j == 0 else None, part, max_bytes)


def arrow_table(rows: list[bytes]) -> Any:
    """A chunk table of encoded rows (:func:`encode_chunks`)."""
    import pyarrow as pa

    return pa.Table.from_arrays([pa.array(rows, type=pa.large_binary())], names=[ARROW_COLUMN])


def chunks_of_table(table: Any) -> Iterator[TaskChunk]:
    """The chunks of a chunk table, with their counts."""
    for row in table.column(ARROW_COLUMN).to_pylist():
        counts, tasks = pickle.loads(row)
        yield TaskChunk(tasks, counts=counts or None)

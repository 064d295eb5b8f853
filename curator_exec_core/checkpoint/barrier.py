"""A barrier's outputs in a checkpoint, written by whichever process holds them.

A barrier segment's outputs file (``DIR/part-<p>.outputs``) is a sequence of blocks
(:func:`~curator_exec_core.checkpoint.journal.write_frame`: ``magic | length | crc32 | body``), made
visible atomically once whole (temporary name, fsync, rename), and ends with a trailer block, the
pickle of ``{"count": outputs, "files": {name: bytes}}``. A block's body is either

- the pickles of at most :data:`BARRIER_BLOCK` tasks (about :data:`BARRIER_BLOCK_BYTES`), one after
  the other (the driver wrote them: an in-process executor, or one whose outputs reach the driver), or
- the pickles of :class:`BlockRef` records: blocks of the same form in files of
  ``DIR/part-<p>.blocks/`` that the *workers* wrote (:class:`BarrierStore`, which an executor gets from
  ``Run.barrier_store(stage)``), so the outputs of a barrier never pass through the driver to be saved;
  an executor that loads them in its workers too (``loads_stored_blocks``) gets them for the next part
  as :class:`StoredBlock` items, so they do not pass through the driver to be read back either.

A worker's blocks file is written under a temporary name, fsynced and renamed, so it is there whole
or not at all; the outputs file that names it is written after it, by the driver. Files in the
blocks folder that the outputs file does not name (a writer the engine retried, an attempt that was
killed) are removed once it is written. The trailer names every blocks file with its least size, so
a missing or cut file makes the barrier unfinished (:func:`barrier_count` is None) and it runs again.
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from curator_exec_core.checkpoint.journal import HEADER_SIZE, block_length, unframe, write_frame
from curator_exec_core.tasks import Task

__all__ = ["BARRIER_BLOCK", "BARRIER_BLOCK_BYTES", "BlockRef", "BarrierStore", "StoredBlock", "pack_blocks",
           "write_outputs", "barrier_count", "read_barrier_blocks", "read_barrier", "read_block", "blocks_folder",
           "loaded"]

#: at most this many tasks, and about this many bytes (or one task), per block of a barrier's outputs
BARRIER_BLOCK = 256
BARRIER_BLOCK_BYTES = 8 << 20
#: block references per block of an outputs file
REFS_PER_BLOCK = 1024
_PROTOCOL = pickle.HIGHEST_PROTOCOL
_FILE_MODE = 0o600


@dataclass(frozen=True)
class BlockRef:
    """One block of a barrier's outputs in a file a worker wrote: the file (its name in the barrier's
    blocks folder), where the block starts, its body's length, and how many tasks it holds."""

    file: str
    offset: int
    length: int
    count: int

    @property
    def end(self) -> int:
        return self.offset + HEADER_SIZE + self.length


def pack_blocks(tasks: Iterable[Task]) -> Iterator[tuple[bytes, int]]:
    """``tasks`` as block bodies (each the tasks' pickles one after the other: no copy of a block to
    frame it) with their task counts, at most :data:`BARRIER_BLOCK` tasks and about
    :data:`BARRIER_BLOCK_BYTES` each."""
    pickles: list[bytes] = []
    size = 0
    for task in tasks:
        pickles.append(pickle.dumps(task, protocol=_PROTOCOL))
        size += len(pickles[-1])
        if len(pickles) >= BARRIER_BLOCK or size >= BARRIER_BLOCK_BYTES:
            yield b"".join(pickles), len(pickles)
            pickles, size = [], 0
    if pickles:
        yield b"".join(pickles), len(pickles)


class BarrierStore:
    """Where the workers of one barrier stage write its outputs in a checkpointed run: picklable (a
    folder and the run attempt's name), so an executor ships it to the process that holds the
    outputs, which calls :meth:`write` and sends back only the :class:`BlockRef` records. The driver
    saves what its executor's ``stream_barrier`` returned, tasks and block references alike."""

    def __init__(self, folder: str, attempt: str) -> None:
        self.folder = folder
        self.attempt = attempt

    def write(self, tasks: Iterable[Task]) -> list[BlockRef]:
        """``tasks`` into a new file of blocks (whole or not at all: temporary name, fsync, rename);
        their references, in order. Nothing is written for no tasks."""
        name = f"{self.attempt}-{uuid.uuid4().hex}.blocks"
        path = os.path.join(self.folder, name)
        tmp = f"{path}.tmp"
        refs: list[BlockRef] = []
        offset = 0
        os.makedirs(self.folder, mode=0o700, exist_ok=True)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, _FILE_MODE)
            with open(fd, "wb") as f:
                for body, count in pack_blocks(tasks):
                    write_frame(f, body)
                    refs.append(BlockRef(name, offset, len(body), count))
                    offset += HEADER_SIZE + len(body)
                f.flush()
                os.fsync(f.fileno())
            if refs:
                os.replace(tmp, path)
            else:
                os.remove(tmp)
        except BaseException:
            with contextlib.suppress(OSError):
                os.remove(tmp)
            raise
        return refs

    def __repr__(self) -> str:
        return f"BarrierStore({self.folder!r})"


def blocks_folder(path: str) -> str:
    """The folder of the blocks files the outputs file ``path`` may name."""
    return f"{path.removesuffix('.outputs')}.blocks"


def write_outputs(path: str, attempt: str, outputs: Iterable[Task | BlockRef]) -> int:
    """A barrier's outputs, as they come (tasks, and references to blocks its workers wrote), into its
    outputs file ``path`` (atomically, once whole); then the blocks folder keeps only the files the
    outputs file names. Returns the number of outputs."""
    tmp = f"{path}.tmp-{attempt}"
    count = 0
    files: dict[str, int] = {}
    refs: list[BlockRef] = []

    def tasks_and_refs() -> Iterator[Task]:
        for item in outputs:
            if isinstance(item, BlockRef):
                refs.append(item)
                if len(refs) >= REFS_PER_BLOCK:
                    flush_refs()
            else:
                yield item

    def flush_refs() -> None:
        nonlocal refs, count
        if refs:
            write_frame(f, b"".join(pickle.dumps(r, protocol=_PROTOCOL) for r in refs))
            for r in refs:
                files[r.file] = max(files.get(r.file, 0), r.end)
                count += r.count
            refs = []

    try:
        with open(tmp, "wb") as f:
            for body, n in pack_blocks(tasks_and_refs()):
                write_frame(f, body)
                count += n
            flush_refs()
            write_frame(f, pickle.dumps({"count": count, "files": files}))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    _keep_only(blocks_folder(path), files)
    return count


def _keep_only(folder: str, files: dict[str, int]) -> None:
    """Remove what the outputs file does not name from its blocks folder."""
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        if name not in files:
            with contextlib.suppress(OSError):
                os.remove(os.path.join(folder, name))


def _frames(path: str) -> Iterator[bytes]:
    """The block bodies of an outputs file; raises ValueError at a damaged one."""
    with open(path, "rb") as f:
        while True:
            head = f.read(HEADER_SIZE)
            if not head:
                return
            body = f.read(block_length(head))
            if unframe(head + body) is None:
                raise ValueError(f"{path} is damaged")
            yield body


def _objects(body: bytes) -> Iterator[Any]:
    """The pickles of one block, one after the other."""
    stream = io.BytesIO(body)
    while stream.tell() < len(body):
        yield pickle.load(stream)  # a new unpickler each: every pickle has its own memo


def barrier_count(path: str) -> int | None:
    """How many outputs a barrier's outputs file holds (checking every block's checksum and that the
    blocks files it names are there whole, unpickling only the trailer); None if it is damaged or a
    file is missing. A file of format 2 (one block, the list) is unpickled."""
    try:
        last = None
        blocks = 0
        for body in _frames(path):
            last, blocks = body, blocks + 1
        if last is None:
            return None
        value = pickle.loads(last)
    except (OSError, ValueError, pickle.UnpicklingError, EOFError):
        return None
    if isinstance(value, dict):
        folder = blocks_folder(path)
        for name, size in value.get("files", {}).items():
            try:
                if os.path.getsize(os.path.join(folder, name)) < size:
                    return None
            except OSError:
                return None
        return int(value["count"])
    return len(value) if blocks == 1 and isinstance(value, list) else None


def _read_ref(folder: str, ref: BlockRef) -> bytes:
    path = os.path.join(folder, ref.file)
    with open(path, "rb") as f:
        f.seek(ref.offset)
        data = f.read(HEADER_SIZE + ref.length)
    body = unframe(data)
    if body is None:
        raise ValueError(f"{path} is damaged at offset {ref.offset}")
    return body


def _tasks(body: bytes) -> list[Task]:
    return [v for v in _objects(body) if isinstance(v, Task)]


def read_block(folder: str, ref: BlockRef) -> list[Task]:
    """The tasks of one block a worker wrote (any process that sees the checkpoint may read it)."""
    return _tasks(_read_ref(folder, ref))


@dataclass(frozen=True)
class StoredBlock:
    """A block of a saved barrier's outputs that an executor's workers load (:meth:`load`), so that
    the next part's input does not pass through the driver either (an executor that declares
    ``loads_stored_blocks`` gets these among the tasks of ``execute`` and ``stream_barrier``)."""

    folder: str
    ref: BlockRef

    @property
    def count(self) -> int:
        return self.ref.count

    def load(self) -> list[Task]:
        """The block's tasks, as source tasks of the part after the barrier (no lineage)."""
        tasks = read_block(self.folder, self.ref)
        for task in tasks:
            task.lineage = ()
        return tasks


def loaded(items: Iterable[Task | StoredBlock]) -> Iterator[Task]:
    """``items`` with every :class:`StoredBlock` loaded here."""
    for item in items:
        if isinstance(item, StoredBlock):
            yield from item.load()
        else:
            yield item


def read_barrier_blocks(path: str, stored: bool = False) -> Iterator[tuple[list[Any], int]]:
    """The outputs of a barrier's outputs file, block by block (those its workers wrote too):
    (tasks, the block's size in bytes). ``stored``: a block a worker wrote comes as one
    :class:`StoredBlock`, not read here."""
    folder = blocks_folder(path)
    for body in _frames(path):
        tasks: list[Task] = []
        for value in _objects(body):
            if isinstance(value, BlockRef):
                if stored:
                    yield [StoredBlock(folder, value)], value.length
                    continue
                block = _read_ref(folder, value)
                yield _tasks(block), len(block)
            elif isinstance(value, list):  # format 2: one block, the list
                tasks += value
            elif isinstance(value, Task):
                tasks.append(value)
        if tasks:
            yield tasks, len(body)


def read_barrier(path: str) -> Iterator[Task]:
    """The outputs of a barrier's outputs file, one by one."""
    for tasks, _ in read_barrier_blocks(path):
        yield from tasks

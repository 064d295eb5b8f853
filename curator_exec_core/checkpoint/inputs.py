"""The initial tasks' fingerprint: their ids *and* their content, digested as the source is read.

:class:`InputLedger` is given the initial tasks window by window as the run reads them: one pass,
nothing kept per task in memory but the distinct-id check's reference to the id. Each task gives one
fixed-size record, the digest of its id and of its content (:func:`content_digest`), kept in source
order in a side file of the checkpoint directory, :data:`DIGESTS_FILE` (a header, then :data:`RECORD`
records: 24 bytes a task), which grows as runs read the source. A task at a position the file
records is compared with that record (the file is read in windows of :data:`WINDOW` records), so a
mismatch names the changed task without holding any digest as a Python object. Once a run has read
the source to its end, the manifest keeps the count, the ids' sha256 (as format 1 did), and the
blake2b of all the records with the file's name.

**Same content.** A task's content is its ``data``, ``dataset_name`` and ``metadata``. Plain data
(``None``, ``bool``, ``int``, ``float``, ``str``, ``bytes``, ``bytearray``, ``list``, ``tuple``,
``dict``, ``set``, ``frozenset``, exactly these types) is digested by value with its type: ``1``,
``1.0`` and ``True`` differ, a ``list`` differs from a ``tuple``; a dict's key order counts (a stage
can see it), a set's order does not (it varies between processes with ``PYTHONHASHSEED``); which
objects are shared does not. Any other object (a NumPy array, a DataFrame, an attrs class) is
digested by its pickle (protocol 5, out-of-band buffers included): the same class and state give
the same digest, across processes too, unless its pickle holds a set of strings or depends on how
objects are shared.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import struct
from collections.abc import Iterable
from typing import Any, BinaryIO

from curator_exec_core.errors import CheckpointError
from curator_exec_core.tasks import Task

__all__ = ["DIGESTS_FILE", "DIGESTS_MAGIC", "RECORD", "WINDOW", "InputLedger", "content_digest"]

logger = logging.getLogger("curator_exec")

#: the side file of a checkpoint directory holding one record per initial task, in source order
DIGESTS_FILE = "inputs.digests"
DIGESTS_MAGIC = _MAGIC = b"CXDIGv1\n"
#: one record: blake2b-64 of the task id, blake2b-128 of its content
RECORD = struct.Struct("<8s16s")
#: records written, and read from the previous file, at a time (96 KiB)
WINDOW = 4096

_LEN = struct.Struct("<Q")
_FLOAT = struct.Struct("<d")


def _feed(update: Any, x: Any) -> None:
    """Feed ``x``'s canonical encoding (type tag, length, bytes) to ``update``."""
    t = type(x)
    if t is str:
        b = x.encode("utf-8", "surrogatepass")
        update(b"s" + _LEN.pack(len(b)))
        update(b)
    elif x is None:
        update(b"N")
    elif t is bool:
        update(b"T" if x else b"F")
    elif t is int:
        b = x.to_bytes((x.bit_length() + 8) // 8, "little", signed=True)
        update(b"i" + _LEN.pack(len(b)) + b)
    elif t is float:
        update(b"f" + _FLOAT.pack(x))
    elif t is bytes or t is bytearray:
        update((b"b" if t is bytes else b"y") + _LEN.pack(len(x)))
        update(x)
    elif t is list or t is tuple:
        update((b"l" if t is list else b"t") + _LEN.pack(len(x)))
        for item in x:
            _feed(update, item)
    elif t is dict:
        update(b"d" + _LEN.pack(len(x)))
        for key, value in x.items():  # insertion order: a stage can see it
            _feed(update, key)
            _feed(update, value)
    elif t is set or t is frozenset:  # iteration order varies between processes: sorted element digests
        update((b"e" if t is set else b"z") + _LEN.pack(len(x)))
        for d in sorted(_digest(item) for item in x):
            update(d)
    else:
        _feed_pickle(update, x)


def _feed_pickle(update: Any, x: Any) -> None:
    buffers: list[pickle.PickleBuffer] = []
    body = pickle.dumps(x, protocol=5, buffer_callback=buffers.append)
    update(b"P" + _LEN.pack(len(body)) + _LEN.pack(len(buffers)))
    update(body)
    for buf in buffers:  # out-of-band (a NumPy array's data): hashed in place, not copied
        try:
            view = buf.raw()
        except (ValueError, BufferError):  # not contiguous
            view = memoryview(memoryview(buf).tobytes())
        update(_LEN.pack(view.nbytes))
        update(view)


def _digest(x: Any) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    try:
        _feed(h.update, x)
    except RecursionError:  # nested too deeply (or a container that holds itself): by its pickle
        h = hashlib.blake2b(digest_size=16)
        h.update(b"R")
        _feed_pickle(h.update, x)
    return h.digest()


def content_digest(task: Task) -> bytes:
    """16 bytes that change when the task's ``data``, ``dataset_name`` or ``metadata`` changes (see
    the module docstring for what "the same content" is)."""
    return _digest((task.data, task.dataset_name, task.metadata))


def _id_digest(task_id: str) -> bytes:
    return hashlib.blake2b(task_id.encode("utf-8", "surrogatepass"), digest_size=8).digest()


class InputLedger:
    """The initial tasks' records in a checkpoint directory, kept as the source is read.

    ``DIR/inputs.digests`` holds one :data:`RECORD` per initial task, in source order: every task a
    run has read, over all its attempts (a file that only grows, truncated only when a run starts
    over). :meth:`check` is given the tasks a run has read, window by window, *before* their work
    starts: a task at a position the file already records must give the same record (same id, same
    content), else the run is refused naming it; a task past the end is appended, and the window's
    new records reach the file (written, not buffered) before :meth:`check` returns. So the work a
    journal records is always of a task whose record is on file, and a resume trusts a finished task
    only once the task read now gave the same record (see :class:`~curator_exec_core.checkpoint.Checkpoint`).

    ``expected``: the manifest's ``initial_tasks`` entry when an earlier attempt read the source to its
    end (``count``, ids' ``sha256``, ``content`` digest): more tasks than ``count`` are refused when
    read, fewer at the end (:meth:`finish`). ``collect``: do not raise at the first difference; count
    them (:attr:`first_changed`, :attr:`changed`, :attr:`first_other_id`) and write nothing until
    :meth:`finish` accepts the whole source (a source read whole before any work: a list, or a
    checkpoint whose records are missing).

    Memory: a window of old records, the records not yet written, and the distinct-id check's set (a
    reference to each id string).
    """

    def __init__(self, folder: str, error: Any = CheckpointError, *, fresh: bool = False,
                 expected: dict[str, Any] | None = None, collect: bool = False, refuse: Any = None) -> None:
        self.path = os.path.join(folder, DIGESTS_FILE)
        self._error = error
        #: the error for other inputs than the recorded ones (``error`` if not given)
        self._refuse = refuse or error
        self.expected = expected if expected and "count" in expected else None
        self.collect = collect
        self._f: BinaryIO = open(self.path, "w+b" if fresh or not os.path.exists(self.path) else "r+b")
        head = self._f.read(len(_MAGIC))
        size = os.fstat(self._f.fileno()).st_size
        if head != _MAGIC:  # new, emptied, or not ours: records start again
            self._f.seek(0)
            self._f.truncate()
            self._f.write(_MAGIC)
            size = len(_MAGIC)
        #: records the file held when this run opened it (a torn last record of a killed run is cut)
        self.recorded = (size - len(_MAGIC)) // RECORD.size
        if size != len(_MAGIC) + self.recorded * RECORD.size and not collect:
            self._f.truncate(len(_MAGIC) + self.recorded * RECORD.size)
        self._window = b""
        self._window_start = 0
        self._pending = bytearray()
        self._ids = hashlib.sha256()
        self._all = hashlib.blake2b(digest_size=32)
        self._seen: set[str] = set()
        self.count = 0
        #: (position, task id) of the first task whose id is not the one recorded at its position
        self.first_other_id: tuple[int, str] | None = None
        #: (position, task id) of the first task with the recorded id and other content; ``changed``: how many
        self.first_changed: tuple[int, str] | None = None
        self.changed = 0

    def _old(self, position: int) -> bytes:
        """The record on file at ``position`` (< :attr:`recorded`), read in windows."""
        offset = position - self._window_start
        if not 0 <= offset * RECORD.size < len(self._window):
            self._f.seek(len(_MAGIC) + position * RECORD.size)
            self._window = self._f.read(min(WINDOW, self.recorded - position) * RECORD.size)
            self._window_start, offset = position, 0
        return self._window[offset * RECORD.size: (offset + 1) * RECORD.size]

    def check(self, tasks: Iterable[Task]) -> None:
        """Record (or compare) ``tasks``, the next ones the run read; see the class docstring."""
        for task in tasks:
            self._add(task)
        if self._pending and not self.collect:
            self._write()

    def _add(self, task: Task) -> None:
        task_id = task.task_id
        position = self.count
        if task_id in self._seen:
            raise self._error(f"the initial tasks must have distinct task_ids to be resumable; {task_id!r} "
                              "appears more than once")
        self._seen.add(task_id)
        if self.expected is not None and position >= int(self.expected["count"]) and not self.collect:
            raise self._refuse(f"there are more initial tasks than the {self.expected['count']} it recorded (task "
                              f"{task_id!r} at position {position}): these are other inputs")
        try:
            record = RECORD.pack(_id_digest(task_id), content_digest(task))
        except Exception as exc:
            raise self._error(f"cannot digest the content of initial task {task_id!r} ({type(exc).__name__}: "
                              f"{exc}); a checkpointed run needs initial tasks whose data pickles") from exc
        if position < self.recorded:
            old = self._old(position)
            if old != record:
                self._differs(position, task_id, old[:8] != record[:8])
        else:
            self._pending += record
        if position:
            self._ids.update(b"\0")
        self._ids.update(task_id.encode())
        self._all.update(record)
        self.count += 1

    def _differs(self, position: int, task_id: str, other_id: bool) -> None:
        if other_id:
            if self.first_other_id is None:
                self.first_other_id = (position, task_id)
            if not self.collect:
                raise self._refuse(f"initial task {task_id!r} at position {position} is not the task it recorded "
                                  "there (another id): these are other inputs")
            return
        self.changed += 1
        if self.first_changed is None:
            self.first_changed = (position, task_id)
        if not self.collect:
            raise self._refuse(self.describe_change())

    def _write(self) -> None:
        self._f.seek(0, os.SEEK_END)
        self._f.write(self._pending)
        self._f.flush()  # in the kernel before the work starts: a killed process cannot lose it
        self._pending = bytearray()
        self.recorded = max(self.recorded, self.count)

    def finish(self) -> dict[str, Any]:
        """The source was read to its end: the manifest's ``initial_tasks`` entry (count, ids' sha256,
        content digest). A source that ends before the records on file is refused (they were of more
        tasks); so is, in ``collect`` mode, any difference found."""
        if self.count < self.recorded and (self.expected is None or not self.collect):
            raise self._refuse(f"the initial tasks end after {self.count}, but it recorded {self.recorded} read by an "
                              "earlier run: these are other inputs")
        return {"count": self.count, "sha256": self._ids.hexdigest(),
                "content": {"blake2b": self._all.hexdigest(), "file": DIGESTS_FILE}}

    def keep(self) -> None:
        """Write what :meth:`check` held back (``collect`` mode, once the inputs are accepted)."""
        if self._pending:
            self._write()

    def close(self) -> None:
        self._seen = set()
        self._f.close()

    def describe_change(self) -> str:
        """What changed in the content of the inputs (their ids are the same), for an error."""
        if self.first_changed is not None:
            position, task_id = self.first_changed
            more = f" (the first of {self.changed} changed tasks)" if self.changed > 1 else ""
            return (f"the content of initial task {task_id!r} (position {position}) changed{more}; the ids "
                    "are the same")
        return ("the content of the initial tasks changed (their ids are the same; the previous digests, "
                f"{DIGESTS_FILE}, are missing or damaged, so the changed task cannot be named)")

"""The initial tasks' fingerprint: their ids *and* their content, digested as the source is read.

:class:`SourceDigest` is fed the initial tasks one by one (``add``) and finishes at the end
(``finish``): one pass over the tasks as they are read, nothing kept per task in memory but the
distinct-id check's reference to the id. Each task gives one fixed-size record, the digest of its
id and of its content (:func:`content_digest`), written in source order to a side file of the
checkpoint directory, :data:`DIGESTS_FILE` (a header, then :data:`RECORD` records: 24 bytes a task).
The manifest keeps the count, the ids' sha256 (as format 1 did), and the blake2b of all the records
with the file's name. When the previous checkpoint's file is there, each new record is compared with
the old one at the same position while the tasks are read (the old file is read in windows of
:data:`WINDOW` records), so a mismatch names the first changed task without holding any digest as
a Python object.

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
from typing import Any, BinaryIO

from curator_exec_core.errors import CheckpointError
from curator_exec_core.tasks import Task

__all__ = ["DIGESTS_FILE", "RECORD", "WINDOW", "SourceDigest", "content_digest"]

logger = logging.getLogger("curator_exec")

#: the side file of a checkpoint directory holding one record per initial task, in source order
DIGESTS_FILE = "inputs.digests"
_MAGIC = b"CXDIGv1\n"
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


class _Records:
    """The records of a previous digests file, read in windows of :data:`WINDOW`."""

    def __init__(self, path: str, count: int) -> None:
        self._f: BinaryIO | None = None
        self._buf = b""
        self._pos = 0
        try:
            f = open(path, "rb")  # closed by close()
        except OSError:
            return
        if f.read(len(_MAGIC)) != _MAGIC or os.fstat(f.fileno()).st_size != len(_MAGIC) + count * RECORD.size:
            f.close()  # damaged or of another format: cannot name a change
            return
        self._f = f

    @property
    def usable(self) -> bool:
        return self._f is not None

    def next(self) -> bytes | None:
        if self._pos >= len(self._buf):
            if self._f is None:
                return None
            self._buf, self._pos = self._f.read(WINDOW * RECORD.size), 0
            if len(self._buf) < RECORD.size:
                self.close()
                return None
        record = self._buf[self._pos: self._pos + RECORD.size]
        self._pos += RECORD.size
        return record

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


class SourceDigest:
    """The fingerprint of the initial tasks, built as they are read: :meth:`add` each task in source
    order, then :meth:`finish`. Writes the records to a temporary file in ``folder`` that
    :meth:`keep` makes the checkpoint's :data:`DIGESTS_FILE` (or :meth:`discard` removes).

    ``previous``: the ``initial_tasks`` entry of the checkpoint's manifest, if it has one; its
    records are compared with the new ones as they are made (:attr:`first_changed`,
    :attr:`changed`, :attr:`first_other_id`).

    Memory: a window of records, and the distinct-id check's set (a reference to each id string).
    """

    def __init__(self, folder: str, attempt: str, previous: dict[str, Any] | None = None,
                 error: Any = CheckpointError) -> None:
        self.folder = folder
        self._error = error
        self.tmp_path = os.path.join(folder, f"{DIGESTS_FILE}.tmp-{attempt}")
        self._out: BinaryIO | None = None
        self._buf = bytearray(_MAGIC)
        self._ids = hashlib.sha256()
        self._all = hashlib.blake2b(digest_size=32)
        self._seen: set[str] = set()
        self.count = 0
        #: (position, task id) of the first task whose id is not the one recorded at its position
        self.first_other_id: tuple[int, str] | None = None
        #: (position, task id) of the first task with the recorded id and other content; ``changed``: how many
        self.first_changed: tuple[int, str] | None = None
        self.changed = 0
        content = (previous or {}).get("content")
        self._old: _Records | None = None
        if isinstance(content, dict) and isinstance(content.get("file"), str):
            self._old = _Records(os.path.join(folder, os.path.basename(content["file"])),
                                 int((previous or {}).get("count", 0)))

    @property
    def compared(self) -> bool:
        """Whether the previous checkpoint's records were there to compare with."""
        return self._old is not None and self._old.usable

    def add(self, task: Task) -> None:
        task_id = task.task_id
        if task_id in self._seen:
            self.discard()
            raise self._error(f"the initial tasks must have distinct task_ids to be resumable; {task_id!r} "
                              "appears more than once")
        self._seen.add(task_id)
        if self.count:
            self._ids.update(b"\0")
        self._ids.update(task_id.encode())
        try:
            record = RECORD.pack(_id_digest(task_id), content_digest(task))
        except Exception as exc:
            self.discard()
            raise self._error(f"cannot digest the content of initial task {task_id!r} ({type(exc).__name__}: "
                              f"{exc}); a checkpointed run needs initial tasks whose data pickles") from exc
        if self._old is not None:
            old = self._old.next()
            if old is not None and self.first_other_id is None:
                if old[:8] != record[:8]:
                    self.first_other_id = (self.count, task_id)
                elif old != record:
                    self.changed += 1
                    if self.first_changed is None:
                        self.first_changed = (self.count, task_id)
        self._all.update(record)
        self._buf += record
        self.count += 1
        if len(self._buf) >= WINDOW * RECORD.size:
            self._write()

    def _write(self) -> None:
        if self._out is None:
            self._out = open(self.tmp_path, "wb")  # closed by finish() or discard()
        self._out.write(self._buf)
        self._buf = bytearray()

    def finish(self) -> dict[str, Any]:
        """The manifest's ``initial_tasks`` entry: count, ids' sha256 (format 1's), content digest."""
        self._write()
        assert self._out is not None
        self._out.close()
        self._out = None
        if self._old is not None:
            self._old.close()
        self._seen = set()
        return {"count": self.count, "sha256": self._ids.hexdigest(),
                "content": {"blake2b": self._all.hexdigest(), "file": DIGESTS_FILE}}

    def keep(self) -> None:
        """The records become the checkpoint's :data:`DIGESTS_FILE` (atomically: a rename)."""
        os.replace(self.tmp_path, os.path.join(self.folder, DIGESTS_FILE))

    def discard(self) -> None:
        for f in (self._out, self._old):
            if f is not None:
                f.close()
        self._out = None
        try:
            os.remove(self.tmp_path)
        except FileNotFoundError:
            pass

    def describe_change(self) -> str:
        """What changed in the content of the inputs (their ids are the same), for an error."""
        if self.first_changed is not None:
            position, task_id = self.first_changed
            more = f" (the first of {self.changed} changed tasks)" if self.changed > 1 else ""
            return (f"the content of initial task {task_id!r} (position {position}) changed{more}; the ids "
                    "are the same")
        return ("the content of the initial tasks changed (their ids are the same; the previous digests, "
                f"{DIGESTS_FILE}, are missing or damaged, so the changed task cannot be named)")

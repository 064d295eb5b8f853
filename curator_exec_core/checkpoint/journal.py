"""The journal: what left one map part of a checkpointed run, written wherever the stage runs.

:class:`Journal` is the runner's observer (:class:`~curator_exec_core.runner.RunnerObserver`) in a
checkpointed run. It gives every output its lineage, and records the shares of what leaves the
part: dropped tasks, and the part's outputs with their data. A worker process writes its records
when its ``process_batch`` call returns (before the engine hands the outputs on); the driver
process (in-process executors) buffers at most :data:`FLUSH_SECONDS` of records.

A journal file (``DIR/part-<p>/<attempt>-<host>-<pid>.journal``) is a sequence of blocks
``magic | length | crc32 | pickle`` (:func:`frame`); a block cut short or damaged by a kill is
detected by its length and checksum and ignored with everything after it, never trusted.
"""

from __future__ import annotations

import logging
import os
import pickle
import socket
import struct
import time
import zlib
from typing import TYPE_CHECKING, Any, NamedTuple

from curator_exec_core.checkpoint.lineage import Lineage, merge_lineage, split_lineage
from curator_exec_core.tasks import Task

if TYPE_CHECKING:  # pragma: no cover
    from curator_exec_core.runner import ManagedStage

__all__ = ["FLUSH_SECONDS", "Journal", "Dropped", "Output", "Record", "read_journal", "frame", "unframe",
           "HEADER_SIZE", "block_length", "write_frame"]

logger = logging.getLogger("curator_exec")

#: at most this long between journal writes in the driver process
FLUSH_SECONDS = 0.5
_MAGIC = b"CXJ1"
_HEADER = struct.Struct("<4sII")  # magic, payload length, crc32 of the payload
HEADER_SIZE = _HEADER.size
_PROCESS = f"{socket.gethostname()}:{os.getpid()}"


class Dropped(NamedTuple):
    """A task dropped by stage ``key``'s stage (``"<stage index>:<task id>"``)."""

    key: str
    lineage: Lineage
    task_id: str


class Output(NamedTuple):
    """An output of the part, and its lineage."""

    task_id: str
    lineage: Lineage
    task: Task


Record = Dropped | Output


def _process_token() -> str:
    global _PROCESS
    if not _PROCESS.endswith(f":{os.getpid()}"):  # forked
        _PROCESS = f"{socket.gethostname()}:{os.getpid()}"
    return _PROCESS


def frame(body: bytes) -> bytes:
    """One block: ``magic | length | crc32 | body`` (journals and barrier files)."""
    return _HEADER.pack(_MAGIC, len(body), zlib.crc32(body)) + body


def write_frame(f: Any, body: bytes) -> None:
    """Write one block to the file ``f`` (the header, then the body: no copy of the body)."""
    f.write(_HEADER.pack(_MAGIC, len(body), zlib.crc32(body)))
    f.write(body)


def block_length(header: bytes) -> int:
    """The body length a block's header announces (0 for a header cut short)."""
    if len(header) < _HEADER.size:
        return 0
    return int(_HEADER.unpack_from(header)[1])


def unframe(data: bytes, pos: int = 0) -> bytes | None:
    """The body of the block at ``pos``, or None if it is cut short or damaged."""
    if len(data) - pos < _HEADER.size:
        return None
    magic, length, crc = _HEADER.unpack_from(data, pos)
    body = data[pos + _HEADER.size: pos + _HEADER.size + length]
    return body if magic == _MAGIC and len(body) == length and zlib.crc32(body) == crc else None


class Journal:
    """Records what leaves one map part (stages ``first``..``end`` by index) of a checkpointed run.

    Picklable and small: a worker process gets it with its stage, and writes to a file of its own.
    """

    def __init__(self, folder: str, attempt: str, end: int) -> None:
        self.folder = folder
        self.attempt = attempt
        self.end = end
        self.driver = _process_token()
        self._remote = False
        self._drops: list[tuple[Any, ...]] = []
        self._out: list[Task] = []  # outputs, encoded when written
        self._last = time.monotonic()

    def __getstate__(self) -> dict[str, Any]:
        return {"folder": self.folder, "attempt": self.attempt, "end": self.end, "driver": self.driver}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._remote = self.driver != _process_token()  # unpickled in a worker process
        self._drops = []
        self._out = []
        self._last = time.monotonic()

    # -- the runner's observer ---------------------------------------------------------------
    def derived(self, stage: ManagedStage, inputs: list[Task], outputs: list[Task]) -> None:
        if not outputs:
            for task in inputs:
                self._hold()
                self._drops.append(("d", f"{stage.index}:{task.task_id}", task.lineage, task.task_id))
        elif len(inputs) == 1 and len(outputs) == 1 and outputs[0].task_id == inputs[0].task_id:
            outputs[0].lineage = inputs[0].lineage  # kept its id: an empty lineage still means its own
        else:
            lineage = split_lineage(inputs[0], len(outputs)) if len(inputs) == 1 \
                else merge_lineage(inputs, len(outputs))
            for child in outputs:
                child.lineage = lineage

    def call_done(self, stage: ManagedStage, outputs: list[Task]) -> None:
        """A worker process writes now, the driver process at most every :data:`FLUSH_SECONDS` (and
        when ``execute`` returns)."""
        if stage.index == self.end and outputs:
            self._hold()
            self._out += outputs
        elif not self.holds_records:
            return
        if self._remote or time.monotonic() - self._last >= FLUSH_SECONDS:
            self.flush()

    # -- writing --------------------------------------------------------------------------
    def _hold(self) -> None:
        """About to buffer a record: until it is written, ``flush_all`` must find this journal."""
        if not self.holds_records:
            _pending.add(self)

    @property
    def holds_records(self) -> bool:
        return bool(self._drops or self._out)

    def flush_all(self) -> None:
        """Flush this journal and every copy of it in this process that holds records (copies of a
        stage that a backend made for its workers, e.g. in threads, even if it dropped them since)."""
        for journal in list(_pending):
            if journal.folder == self.folder and journal.attempt == self.attempt:
                journal.flush()

    def flush(self) -> None:
        """Append the buffered records as one block (a single ``write``)."""
        self._last = time.monotonic()
        _pending.discard(self)
        if not self.holds_records:
            return
        block = self._drops
        outs = self._out
        if outs:  # the outputs by column: three fast passes, and what is not a plain Task apart
            odd = {i: t for i, t in enumerate(outs) if type(t) is not Task or t.dataset_name or t.metadata}
            lineages = [t.lineage for t in outs]
            block.append(("c", [t.task_id for t in outs], lineages if any(lineages) else None,
                          [t.data for t in outs], odd))
        payload = pickle.dumps(block, protocol=pickle.HIGHEST_PROTOCOL)
        self._drops, self._out = [], []
        name = f"{self.attempt}-{_process_token().replace(':', '-')}.journal"
        fd = os.open(os.path.join(self.folder, name), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, frame(payload))
        finally:
            os.close(fd)


#: the journals of this process that hold records not written yet (a strong reference: a copy a
#: backend dropped is still written by ``flush_all``)
_pending: set[Journal] = set()


def _decode(raw: tuple[Any, ...]) -> list[Record]:
    """One on-disk record (format 1: ``("d", key, lineage, id)`` or ``("c", ids, lineages, values,
    odd)``, outputs by column) as typed records."""
    if raw[0] == "d":
        return [Dropped(raw[1], raw[2], raw[3])]
    _, ids, lineages, values, odd = raw
    lineages = lineages or [()] * len(ids)
    return [Output(ids[i], lineages[i], odd[i] if i in odd else Task(data=values[i], task_id=ids[i],
                                                                       lineage=lineages[i]))
            for i in range(len(ids))]


def read_journal(path: str) -> tuple[list[Record], bool]:
    """The records of one journal file, and whether its end was torn (ignored)."""
    with open(path, "rb") as f:
        data = f.read()
    records: list[Record] = []
    pos = 0
    while pos < len(data):
        body = unframe(data, pos)
        if body is None:
            return records, True
        try:
            for raw in pickle.loads(body):
                records += _decode(raw)
        except Exception:
            return records, True
        pos += _HEADER.size + len(body)
    return records, False

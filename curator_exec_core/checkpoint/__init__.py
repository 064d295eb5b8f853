"""Resumable runs: ``run(..., checkpoint_path=DIR)`` records finished work under ``DIR``.

The unit is the **source task**. In a checkpointed run every task carries its ``lineage``: the
sources it descends from and its share of each (a source starts with share 1; a stage that fans a
task out into ``k`` gives each output ``1/k`` of its parent's share). When a task leaves the
pipeline (an output of the last stage, or dropped by a filter) the stage runner appends a record
with its shares (and, for an output, the task itself) to a journal under ``DIR``. A source is done
when the shares recorded for it add up to exactly 1 (fractions, no rounding): every descendant has
left. No service is involved: the runner writes the journal in whatever process runs the stage,
one file per process and run attempt.

A journal file is a sequence of blocks ``magic | length | crc32 | pickle``. A block cut short or
damaged by a kill is detected by its length and checksum and ignored with everything after it, never
trusted. A worker process writes its block when its call of ``process_batch`` returns (before the
engine hands the outputs on, so an output that reached the driver is on disk); the driver process
(in-process executors such as ``local``) buffers at most :data:`FLUSH_SECONDS` of records and writes
them when ``execute`` returns. Records repeated by an engine that re-ran a chunk (a worker died) are
recognised by their key (the stage and task id) and counted once.

Barrier stages (shuffle, gang) split the pipeline into parts. A map part's sources are the tasks that
enter it: the initial tasks for the first part, the barrier's outputs after one. Once a barrier stage
finished, its outputs are written as one file (atomically: temporary file, fsync, rename), so a
resumed run starts after the last finished barrier and redoes nothing before it.

``DIR/manifest.json`` holds the format version and the fingerprint of the pipeline (stage classes,
names, order, each stage's :meth:`~curator_exec_core.stages.ProcessingStage.fingerprint`,
``ignore_failures``) and of the initial task ids. ``DIR/lock`` is held (``flock``) for the whole
run, so a second run on the same checkpoint is refused instead of interleaved.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import shutil
import socket
import struct
import time
import uuid
import zlib
from collections.abc import Callable, Sequence
from fractions import Fraction
from typing import Any

from curator_exec_core.errors import CheckpointError
from curator_exec_core.tasks import Task

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["FORMAT_VERSION", "Checkpoint", "Journal", "read_journal", "split_lineage", "merge_lineage"]

logger = logging.getLogger("curator_exec")

#: the checkpoint layout this version writes and reads; a newer one is refused
FORMAT_VERSION = 1
#: at most this long between journal writes in the driver process
FLUSH_SECONDS = 0.5
_MAGIC = b"CXJ1"
_HEADER = struct.Struct("<4sII")  # magic, payload length, crc32 of the payload
_PROCESS = f"{socket.gethostname()}:{os.getpid()}"


def _process_token() -> str:
    global _PROCESS
    if not _PROCESS.endswith(f":{os.getpid()}"):  # forked
        _PROCESS = f"{socket.gethostname()}:{os.getpid()}"
    return _PROCESS


# -- lineage -----------------------------------------------------------------------------------


Lineage = tuple[tuple[str, Any], ...]


def shares(lineage: Lineage, task_id: str) -> Lineage:
    """``((source id, share), ...)`` of a task's lineage. Empty means all of the share of the source
    whose id is the task's own: what every source task starts with, and what a chain of one-to-one
    stages keeps (they keep the id), so such tasks carry nothing."""
    return lineage or ((task_id, 1),)


def split_lineage(task: Task, k: int) -> Lineage:
    """The lineage of each of ``k`` outputs made from one ``task``."""
    own = shares(task.lineage, task.task_id)
    return own if k == 1 else tuple((s, Fraction(w) / k) for s, w in own)


def merge_lineage(tasks: Sequence[Task], k: int) -> Lineage:
    """The lineage of each of ``k`` outputs made from a whole batch (a ``process_batch`` whose
    outputs do not map one to one onto its inputs)."""
    total: dict[str, Fraction] = {}
    for task in tasks:
        for s, w in shares(task.lineage, task.task_id):
            total[s] = total.get(s, Fraction(0)) + Fraction(w)
    return tuple((s, w / k) for s, w in total.items())


# -- the journal (runs wherever the stage runs) --------------------------------------------------


class Journal:
    """Where the stage runner records what left one map part of a checkpointed run.

    Picklable and small: a worker process gets it with its stage, and writes to a file of its own
    (``DIR/part-<p>/<attempt>-<host>-<pid>.journal``) when its ``process_batch`` call returns.
    """

    def __init__(self, folder: str, attempt: str) -> None:
        self.folder = folder
        self.attempt = attempt
        self.driver = _process_token()
        self._remote = False
        self._buffer: list[tuple[Any, ...]] = []  # drop records
        self._out: list[Task] = []  # outputs, encoded when written
        self._last = time.monotonic()

    def __getstate__(self) -> dict[str, Any]:
        return {"folder": self.folder, "attempt": self.attempt, "driver": self.driver}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._remote = self.driver != _process_token()  # unpickled in a worker process
        self._buffer = []
        self._out = []
        self._last = time.monotonic()

    def dropped(self, stage_index: int, task: Task) -> None:
        """``task`` was dropped by stage ``stage_index`` (a filter, or an empty fan-out)."""
        self._hold()
        self._buffer.append(("d", f"{stage_index}:{task.task_id}", task.lineage, task.task_id))

    def _hold(self) -> None:
        """About to buffer a record: until it is written, ``flush_all`` must find this journal."""
        if not self.holds_records:
            _pending.add(self)

    @property
    def holds_records(self) -> bool:
        """Whether records wait to be written (a stage that is not the last one has nothing else to
        tell the journal after a call)."""
        return bool(self._buffer or self._out)

    def after_call(self, outputs: list[Task] | None = None) -> None:
        """Called by the runner when a ``process_batch`` call ends, with its ``outputs`` if its stage
        ends the part: a worker process writes now, the driver process at most every
        :data:`FLUSH_SECONDS` (and when ``execute`` returns)."""
        if outputs:
            self._hold()
            self._out += outputs
        if self._remote or time.monotonic() - self._last >= FLUSH_SECONDS:
            self.flush()

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
        outs = self._out
        if outs:  # the outputs by column: three fast passes, and what is not a plain Task apart
            odd = {i: t for i, t in enumerate(outs) if type(t) is not Task or t.dataset_name or t.metadata}
            lineages = [t.lineage for t in outs]
            self._buffer.append(("c", [t.task_id for t in outs], lineages if any(lineages) else None,
                                 [t.data for t in outs], odd))
        payload = pickle.dumps(self._buffer, protocol=pickle.HIGHEST_PROTOCOL)
        self._buffer, self._out = [], []
        name = f"{self.attempt}-{_process_token().replace(':', '-')}.journal"
        fd = os.open(os.path.join(self.folder, name), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, _frame(payload))
        finally:
            os.close(fd)


#: the journals of this process that hold records not written yet (a strong reference: a copy a
#: backend dropped is still written by ``flush_all``)
_pending: set[Journal] = set()


def _frame(body: bytes) -> bytes:
    """One block: ``magic | length | crc32 | body`` (journals and barrier files)."""
    return _HEADER.pack(_MAGIC, len(body), zlib.crc32(body)) + body


def _unframe(data: bytes, pos: int = 0) -> bytes | None:
    """The body of the block at ``pos``, or None if it is cut short or damaged."""
    if len(data) - pos < _HEADER.size:
        return None
    magic, length, crc = _HEADER.unpack_from(data, pos)
    body = data[pos + _HEADER.size: pos + _HEADER.size + length]
    return body if magic == _MAGIC and len(body) == length and zlib.crc32(body) == crc else None


def read_journal(path: str) -> tuple[list[tuple[Any, ...]], bool]:
    """The records of one journal file, and whether its end was torn (ignored)."""
    with open(path, "rb") as f:
        data = f.read()
    records: list[tuple[Any, ...]] = []
    pos = 0
    while pos < len(data):
        body = _unframe(data, pos)
        if body is None:
            return records, True
        try:
            for r in pickle.loads(body):
                if r[0] == "c":  # outputs by column (Journal.flush)
                    _, ids, lineages, values, odd = r
                    lineages = lineages or [()] * len(ids)
                    records.extend(("O", ids[i], lineages[i], odd[i]) if i in odd
                                   else ("o", ids[i], lineages[i], values[i]) for i in range(len(ids)))
                else:
                    records.append(r)
        except Exception:
            return records, True
        pos += _HEADER.size + len(body)
    return records, False


def _restore(record: tuple[Any, ...]) -> Task:
    if record[0] == "o":
        _, task_id, lineage, data = record
        return Task(data=data, task_id=task_id, lineage=lineage)
    return record[3]


def _finished(folder: str, sources: set[str]) -> tuple[set[str], list[Task], int]:
    """From the journals of one part: the sources that are done, their outputs, and how many
    journal files had a torn end."""
    by_attempt: dict[str, dict[Any, tuple[Any, ...]]] = {}
    torn = 0
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else ():
        if not name.endswith(".journal"):
            continue
        records, cut = read_journal(os.path.join(folder, name))
        if cut:
            torn += 1
            logger.warning("checkpoint: ignoring the torn end of %s (a run was killed while writing it)",
                           os.path.join(folder, name))
        keep = by_attempt.setdefault(name.split("-", 1)[0], {})
        for r in records:  # a record an engine repeated (a re-run chunk) counts once
            keep.setdefault((r[0] == "d", r[1]), (*r[:2], shares(r[2], r[3] if r[0] == "d" else r[1]), *r[3:]))
    owner: dict[str, str] = {}  # source -> the (earliest) attempt in which it finished
    for attempt in sorted(by_attempt):
        share: dict[str, Fraction] = {}
        for r in by_attempt[attempt].values():
            for s, w in r[2]:
                share[s] = share.get(s, Fraction(0)) + w
        for s, total in share.items():
            if total == 1 and s in sources and s not in owner:
                owner[s] = attempt
    while True:  # an output shared by several sources counts only if all of them finished in its attempt
        bad: set[str] = set()
        for attempt, recs in by_attempt.items():
            for r in recs.values():
                mine = [s for s, _ in r[2] if owner.get(s) == attempt]
                if mine and len(mine) != len(r[2]):
                    bad.update(mine)
        if not bad:
            break
        for s in bad:
            del owner[s]
    outputs = [_restore(r) for attempt, recs in by_attempt.items() for r in recs.values()
               if r[0] != "d" and r[2] and owner.get(r[2][0][0]) == attempt]
    return set(owner), outputs, torn


# -- the checkpoint (driver side) ----------------------------------------------------------------


def _write_atomic(path: str, data: bytes, durable: bool = True) -> None:
    """Write ``path`` so that a reader sees the old file or the whole new one (never a part of it);
    ``durable``: also fsync, so it survives a machine crash, not only a killed process."""
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    with open(tmp, "wb") as f:
        f.write(data)
        if durable:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)
    if not durable:
        return
    try:
        fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:  # pragma: no cover - directories cannot be fsynced everywhere
        pass


def pipeline_fingerprint(stages: Sequence[Any], task_ids: Sequence[str], ignore_failures: bool) -> dict[str, Any]:
    """What identifies a run for its checkpoint: the stages and the initial task ids."""
    users = [getattr(s, "stage", s) for s in stages]
    digest = hashlib.sha256("\0".join(task_ids).encode()).hexdigest()
    return {
        "stages": [{"class": f"{type(u).__module__}.{type(u).__qualname__}", "name": u.name,
                    "fingerprint": str(u.fingerprint())} for u in users],
        "ignore_failures": bool(ignore_failures),
        "initial_tasks": {"count": len(task_ids), "sha256": digest},
    }


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    out: list[str] = []
    a, b = old.get("stages", []), new["stages"]
    if len(a) != len(b):
        out.append(f"the pipeline had {len(a)} stages ({', '.join(s['name'] for s in a)}), now {len(b)} "
                   f"({', '.join(s['name'] for s in b)})")
    else:
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            for field in ("class", "name", "fingerprint"):
                if x.get(field) != y[field]:
                    out.append(f"stage {i} {field}: {x.get(field)!r} -> {y[field]!r}")
    if old.get("ignore_failures") != new["ignore_failures"]:
        out.append(f"ignore_failures: {old.get('ignore_failures')} -> {new['ignore_failures']}")
    x, y = old.get("initial_tasks", {}), new["initial_tasks"]
    if x != y:
        out.append(f"initial tasks: {x.get('count')} tasks (ids sha256 {str(x.get('sha256'))[:12]}) -> "
                   f"{y['count']} tasks (ids sha256 {y['sha256'][:12]})")
    return out


class Checkpoint:
    """One run's use of a checkpoint directory (driver side): checks it, locks it, and resumes.

    ``open`` raises :class:`CheckpointError` before any work for a path that cannot be a checkpoint,
    one written for another pipeline or inputs (unless ``overwrite``), a newer format, or one that
    another run holds.
    """

    def __init__(self, path: str | os.PathLike[str], overwrite: bool = False) -> None:
        self.path = os.path.abspath(os.fspath(path))
        self.overwrite = overwrite
        self.attempt = f"{time.time_ns():020d}{uuid.uuid4().hex[:6]}"
        self._lock_fd: int | None = None
        #: filled as the run goes: initial tasks whose work was resumed, the barrier resumed after
        self.resumed = 0
        self.resumed_after: str | None = None

    def _error(self, what: str) -> CheckpointError:
        return CheckpointError(f"checkpoint {self.path}: {what}")

    def open(self, stages: Sequence[Any], tasks: Sequence[Task], ignore_failures: bool) -> None:
        ids = [t.task_id for t in tasks]
        if len(set(ids)) != len(ids):
            seen: set[str] = set()
            dup = next(i for i in ids if i in seen or seen.add(i))  # type: ignore[func-returns-value]
            raise self._error(f"the initial tasks must have distinct task_ids to be resumable; {dup!r} "
                              "appears more than once")
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise self._error("is a file, not a directory; give a directory path (it is created if missing)")
        try:
            os.makedirs(self.path, exist_ok=True)
            self._lock()  # the first write: fails here if the directory is not writable
        except OSError as exc:
            raise self._error(f"cannot be written ({exc.strerror or exc}); choose a writable directory") from exc
        try:
            self._check_manifest(pipeline_fingerprint(stages, ids, ignore_failures))
        except BaseException:
            self.close()
            raise

    def _lock(self) -> None:
        path = os.path.join(self.path, "lock")
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = os.read(fd, 200).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise self._error(f"is in use by another run ({holder}); wait for it to finish, or use "
                                  "another checkpoint directory") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}"
                     .encode())
        self._lock_fd = fd

    def _check_manifest(self, fingerprint: dict[str, Any]) -> None:
        manifest = os.path.join(self.path, "manifest.json")
        entries = [n for n in os.listdir(self.path) if n not in ("lock",)]
        if os.path.exists(manifest):
            try:
                with open(manifest) as f:
                    old = json.load(f)
                version = int(old.get("format", 0))
            except (OSError, ValueError, TypeError, AttributeError) as exc:
                raise self._error(f"manifest.json is unreadable ({exc}); pass overwrite=True (--fresh) to "
                                  "start over") from exc
            if version > FORMAT_VERSION:
                raise self._error(f"was written in checkpoint format {version} by a newer curator-exec (this one "
                                  f"reads format {FORMAT_VERSION}); upgrade curator-exec-core, or use another "
                                  "directory. Nothing was changed.")
            changes = _differences(old, fingerprint)
            if not changes:
                return
            if not self.overwrite:
                raise self._error("was written by a different pipeline or inputs: " + "; ".join(changes)
                                  + ". Pass overwrite=True (curator-exec run --fresh) to discard it and start over, "
                                    "or use another directory.")
        elif entries:
            if not self.overwrite or not all(n.startswith(("part-", ".")) for n in entries):
                raise self._error(f"is not empty and holds no curator-exec checkpoint ({len(entries)} entries, e.g. "
                                  f"{sorted(entries)[0]!r}); nothing was touched. Use an empty or new directory.")
        for name in os.listdir(self.path):  # overwrite: only what a checkpoint holds
            if name.startswith("part-") or name == "manifest.json":
                full = os.path.join(self.path, name)
                shutil.rmtree(full) if os.path.isdir(full) else os.remove(full)
        # not fsynced (a killed process cannot lose it; after a machine crash that did, the directory
        # is refused as not a checkpoint, never trusted, and --fresh starts over)
        _write_atomic(manifest, json.dumps({"format": FORMAT_VERSION, "created": time.time(), **fingerprint}
                                           ).encode(), durable=False)

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    # -- parts ---------------------------------------------------------------------------
    def _barrier_file(self, part: int) -> str:
        return os.path.join(self.path, f"part-{part}.outputs")

    def last_barrier(self, parts: Sequence[Any]) -> tuple[int, list[Task]] | None:
        """The last barrier part that finished in an earlier attempt, and its outputs."""
        for p in range(len(parts) - 1, -1, -1):
            path = self._barrier_file(p)
            if isinstance(parts[p], list) or not os.path.exists(path):
                continue
            with open(path, "rb") as f:
                data = f.read()
            body = _unframe(data)
            if body is not None and len(data) == _HEADER.size + len(body):
                self.resumed_after = parts[p].name
                return p, pickle.loads(body)
            logger.warning("checkpoint: ignoring the damaged %s", path)
        return None

    def save_barrier(self, part: int, outputs: list[Task]) -> None:
        _write_atomic(self._barrier_file(part), _frame(pickle.dumps(outputs, protocol=pickle.HIGHEST_PROTOCOL)))

    def run_part(self, part: int, stages: Sequence[Any], sources: list[Task],
                 run: Callable[[list[Task]], list[Task]], resumed: Callable[[int], None]) -> list[Task]:
        """One map part: the outputs of its finished sources from the journals, then ``run`` on the
        others with a journal attached to the part's stages."""
        folder = os.path.join(self.path, f"part-{part}")
        if not os.path.isdir(folder):
            os.makedirs(folder)
        for task in sources:
            if task.lineage:  # a source holds all of its own share: empty lineage (see shares())
                task.lineage = ()
        done, outputs, _ = _finished(folder, {t.task_id for t in sources})
        pending = [t for t in sources if t.task_id not in done]
        if part == 0:
            self.resumed = len(done)
        if done:
            logger.info("checkpoint %s: %d of %d source tasks of part %d resumed", self.path, len(done),
                        len(sources), part)
            resumed(len(done))
        if not pending:
            return outputs
        journal = Journal(folder, self.attempt)
        for stage in stages:
            stage.journal = journal
        stages[-1].journal_end = True
        try:
            return outputs + run(pending)
        finally:
            journal.flush_all()
            for stage in stages:
                stage.journal = None
                stage.journal_end = False

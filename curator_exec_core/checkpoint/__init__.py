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
enter it: the initial tasks for the first part, the barrier's outputs after one; a part takes them
window by window (:meth:`Checkpoint.run_map`). A barrier stage's outputs are written as they come to
one file of blocks, made visible atomically once whole (temporary file, fsync, rename), so a resumed
run starts after the last finished barrier and redoes nothing before it; the blocks may be in files
the workers wrote, which that file names (:mod:`.barrier`).

The package: :mod:`.barrier` (a barrier's outputs file and the workers' blocks), :mod:`.lineage` (shares), :mod:`.journal` (the runner's observer, typed records, block
framing), :mod:`.recovery` (finished sources from journals), :mod:`.inputs` (the initial tasks' ids
and content, digested in one pass), :mod:`.manifest` (fingerprint, lock, atomic writes), and
:class:`Checkpoint` here, the driver's use of a directory.

``DIR/manifest.json`` holds the format version and the fingerprint of the pipeline (stage classes,
names, order, each stage's :meth:`~curator_exec_core.stages.ProcessingStage.fingerprint`,
``ignore_failures``) and, once a run has read the source to its end, of the initial tasks: their
count, ids and the digest of their content. ``DIR/inputs.digests`` holds one 24-byte record per
initial task read so far (:class:`~.inputs.InputLedger`), written before the task's work starts and
compared with the task on every later read, so that a changed task is refused, and named, before
any of its recorded work is trusted. ``DIR/lock`` is held (``flock``) for the whole
run, so a second run on the same checkpoint is refused instead of interleaved.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from curator_exec_core.checkpoint.barrier import (
    BARRIER_BLOCK,
    BARRIER_BLOCK_BYTES,
    BarrierStore,
    BlockRef,
    StoredBlock,
    barrier_count,
    blocks_folder,
    loaded,
    read_barrier,
    read_barrier_blocks,
    write_outputs,
)
from curator_exec_core.checkpoint.inputs import DIGESTS_FILE, DIGESTS_MAGIC, RECORD, InputLedger
from curator_exec_core.checkpoint.journal import Journal, read_journal
from curator_exec_core.checkpoint.lineage import merge_lineage, split_lineage
from curator_exec_core.checkpoint.manifest import (
    FORMAT_VERSION,
    PRIVATE_MODE,
    acquire_lock,
    input_differences,
    pipeline_fingerprint,
    read_manifest,
    start_manifest,
    write_manifest,
)
from curator_exec_core.checkpoint.recovery import finished_by_source
from curator_exec_core.errors import CheckpointError
from curator_exec_core.runner.segments import BarrierSegment, MapSegment, Segment
from curator_exec_core.tasks import Task

__all__ = ["FORMAT_VERSION", "Checkpoint", "Journal", "read_journal", "split_lineage", "merge_lineage", "BarrierStore",
           "BlockRef", "StoredBlock", "BARRIER_BLOCK", "BARRIER_BLOCK_BYTES", "barrier_count", "read_barrier", "read_barrier_blocks"]

logger = logging.getLogger("curator_exec")


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
        self.inputs: InputLedger | None = None
        self.whole_source_first = False
        self._manifest: dict[str, Any] = {}
        self._expected: dict[str, Any] | None = None
        self._unnamed = False
        self._parts: dict[int, _Part] = {}

    def _error(self, what: str) -> CheckpointError:
        return CheckpointError(f"checkpoint {self.path}: {what}")

    def _refused(self, what: str) -> CheckpointError:
        return self._error(f"was written by a different pipeline or inputs: {what}. Pass overwrite=True "
                           "(curator-exec run --fresh) to discard it and start over, or use another directory.")

    def open(self, stages: Sequence[Any], ignore_failures: bool, total: int | None = None) -> None:
        """Check and lock the directory for a run of ``stages``, before any work: a checkpoint of
        another pipeline is refused (unless ``overwrite``: it starts over). The initial tasks are
        checked as the run reads them (:meth:`check_inputs`, :meth:`inputs_read`); ``total``: how many
        there are, when the source knows (a list): then they are all checked before any work
        (:attr:`whole_source_first`), as they are when the records to compare with are missing."""
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise self._error("is a file, not a directory; give a directory path (it is created if missing)")
        try:
            os.makedirs(self.path, mode=PRIVATE_MODE, exist_ok=True)
            self._lock_fd = acquire_lock(self.path, self._error)  # the first write: fails if not writable
        except OSError as exc:
            raise self._error(f"cannot be written ({exc.strerror or exc}); choose a writable directory") from exc
        try:
            old = read_manifest(self.path, self.overwrite, self._error)
            fingerprint = pipeline_fingerprint(stages, ignore_failures)
            started = start_manifest(self.path, old, fingerprint, self.overwrite, self._refused)
            fresh = started is not None
            self._manifest = started if started is not None else {**(old or {}), **fingerprint}
            entry = self._manifest.get("initial_tasks", {})
            expected = entry if "count" in entry else None
            #: the previous records cannot be trusted to name a change (format 1, or a missing or damaged
            #: digests file): the whole source is read and compared before any work
            self._unnamed = expected is not None and not _records_usable(self.path, expected)
            self.whole_source_first = total is not None or self._unnamed
            self._expected = expected
            self.inputs = InputLedger(self.path, self._error, fresh=fresh or self._unnamed, expected=expected,
                                      collect=self.whole_source_first, refuse=self._refused)
        except BaseException:
            self.close()
            raise

    def check_inputs(self, tasks: list[Task]) -> None:
        """The run read ``tasks`` (the next initial tasks), and has not started their work: record them,
        or refuse them if they are not the ones the checkpoint recorded at their positions."""
        assert self.inputs is not None, "open() first"
        self.inputs.check(tasks)

    def inputs_read(self) -> None:
        """The run read its initial tasks to the end: refuse them if they are not the recorded ones
        (fewer, or, read whole first, any difference), else complete the manifest."""
        assert self.inputs is not None, "open() first"
        entry = self.inputs.finish()
        expected = self._expected
        if expected is not None:
            changes = input_differences(expected, entry, self.inputs)
            if changes:
                raise self._refused("; ".join(changes))
        self.inputs.keep()
        if expected is not None and isinstance(expected.get("content"), dict) and not self._unnamed:
            return
        if expected is not None and not isinstance(expected.get("content"), dict):
            logger.warning(
                "checkpoint %s: written in checkpoint format %s, which recorded the initial tasks' ids but not "
                "their content; resuming with the ids checked only. If the data of a task changed since, pass "
                "overwrite=True (curator-exec run --fresh) to start over. The content is recorded from now on.",
                self.path, self._manifest.get("format", 1))
        self._manifest.update(format=FORMAT_VERSION, initial_tasks=entry)
        write_manifest(self.path, self._manifest)
        self._expected = entry

    def close(self) -> None:
        if self.inputs is not None:
            self.inputs.close()
            self.inputs = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    # -- segments ---------------------------------------------------------------------------
    def _barrier_file(self, position: int) -> str:
        return os.path.join(self.path, f"part-{position}.outputs")

    def last_barrier(self, segments: Sequence[Segment],
                     stored: bool = False) -> tuple[int, int, Iterator[tuple[list[Any], int]]] | None:
        """The last barrier segment that finished in an earlier attempt: its position, how many outputs
        it made, and the outputs (read from its file block by block as they are asked for: each block's
        tasks and its size in bytes; ``stored``: a block a worker wrote as a :class:`StoredBlock`,
        unless the barrier is the last segment, whose outputs are the run's)."""
        for segment in reversed(segments):
            path = self._barrier_file(segment.position)
            if not isinstance(segment, BarrierSegment) or not os.path.exists(path):
                continue
            count = barrier_count(path)
            if count is not None:
                self.resumed_after = segment.name
                return segment.position, count, read_barrier_blocks(path, stored and segment is not segments[-1])
            logger.warning("checkpoint: ignoring the damaged %s", path)
        return None

    def barrier_store(self, segment: BarrierSegment) -> BarrierStore:
        """Where the workers of ``segment``'s stage may write its outputs (see :mod:`.barrier`)."""
        return BarrierStore(blocks_folder(self._barrier_file(segment.position)), self.attempt)

    def save_barrier(self, segment: BarrierSegment, outputs: Iterable[Task | BlockRef],
                     stored: bool = False) -> tuple[int, Iterator[tuple[list[Any], int]]]:
        """A barrier segment's outputs, as they come (tasks, or references to blocks its workers wrote
        through :meth:`barrier_store`), into its outputs file (:func:`.barrier.write_outputs`); returns
        their count and the outputs read back block by block (tasks, bytes; ``stored``: a block a
        worker wrote as a :class:`StoredBlock`). The driver holds a block at a time, never the
        barrier's outputs."""
        path = self._barrier_file(segment.position)
        count = write_outputs(path, self.attempt, outputs)
        if os.path.isdir(blocks_folder(path)) and os.listdir(blocks_folder(path)) \
                and int(self._manifest.get("format", 0)) < FORMAT_VERSION:
            self._manifest["format"] = FORMAT_VERSION  # an older version must refuse what it cannot read
            write_manifest(self.path, self._manifest)
        return count, read_barrier_blocks(path, stored)

    def run_map(self, segment: MapSegment, sources: list[Task], run: Callable[[list[Task]], Iterable[Task]],
                resumed: Callable[[int], None]) -> Iterator[Task]:
        """One window of a map segment's sources: the outputs of those that finished in an earlier
        attempt (from the part's journals, read once per run), then ``run`` on the others with a journal
        observing the segment's stages until its outputs (a list, or an iterator) are read."""
        folder = os.path.join(self.path, f"part-{segment.position}")
        part = self._parts.get(segment.position)
        if part is None:
            os.makedirs(folder, mode=PRIVATE_MODE, exist_ok=True)
            part = self._parts[segment.position] = _Part(folder)
        for task in sources:
            if isinstance(task, Task) and task.lineage:  # a source holds all of its share (see lineage.shares)
                task.lineage = ()
        outputs, pending, done = part.take(sources)
        if segment.position == 0:
            self.resumed += done
        if done:
            logger.info("checkpoint %s: %d of %d source tasks of part %d resumed", self.path, done,
                        done + len(pending), segment.position)
            resumed(done)
        yield from outputs
        if not pending:
            return
        journal = Journal(folder, self.attempt, end=segment.stages[-1].index)
        for stage in segment.stages:
            stage.observer = journal
        try:
            yield from run(pending)
        finally:
            journal.flush_all()
            for stage in segment.stages:
                stage.observer = None


class _Part:
    """What the journals of one map part recorded as finished, read once per run: the finished
    sources and their outputs, handed out (and let go) window by window."""

    def __init__(self, folder: str) -> None:
        self.done, self.outputs, _ = finished_by_source(folder, None)

    def take(self, sources: list[Any]) -> tuple[list[Task], list[Any], int]:
        """For one window of sources: the outputs of the finished ones, the others, and how many finished."""
        if not self.done:
            return [], sources, 0
        outputs: list[Task] = []
        pending: list[Task] = []
        done = 0
        for task in loaded(sources):  # stored blocks of a part resumed midway are read here
            if task.task_id in self.done:
                outputs += self.outputs.pop(task.task_id, ())
                done += 1
            else:
                pending.append(task)
        return outputs, pending, done


def _records_usable(folder: str, expected: dict[str, Any]) -> bool:
    """Whether the digests file can name a change against ``expected`` (a complete ``initial_tasks``
    entry): the entry has a content digest (format 2 or later) and the file holds a record per task."""
    if not isinstance(expected.get("content"), dict):
        return False
    try:
        size = os.path.getsize(os.path.join(folder, DIGESTS_FILE))
    except OSError:
        return False
    if size != len(DIGESTS_MAGIC) + int(expected["count"]) * RECORD.size:
        return False
    with open(os.path.join(folder, DIGESTS_FILE), "rb") as f:
        return f.read(len(DIGESTS_MAGIC)) == DIGESTS_MAGIC

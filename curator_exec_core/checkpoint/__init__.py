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

The package: :mod:`.lineage` (shares), :mod:`.journal` (the runner's observer, typed records, block
framing), :mod:`.recovery` (finished sources from journals), :mod:`.inputs` (the initial tasks' ids
and content, digested in one pass), :mod:`.manifest` (fingerprint, lock, atomic writes), and
:class:`Checkpoint` here, the driver's use of a directory.

``DIR/manifest.json`` holds the format version and the fingerprint of the pipeline (stage classes,
names, order, each stage's :meth:`~curator_exec_core.stages.ProcessingStage.fingerprint`,
``ignore_failures``) and of the initial tasks: their ids, and the digest of their content, with one
24-byte record per task in ``DIR/inputs.digests`` so that a changed task is named. ``DIR/lock`` is held (``flock``) for the whole
run, so a second run on the same checkpoint is refused instead of interleaved.
"""

from __future__ import annotations

import logging
import os
import pickle
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from curator_exec_core.checkpoint.inputs import SourceDigest
from curator_exec_core.checkpoint.journal import HEADER_SIZE, Journal, frame, read_journal, unframe
from curator_exec_core.checkpoint.lineage import merge_lineage, split_lineage
from curator_exec_core.checkpoint.manifest import (
    FORMAT_VERSION,
    PRIVATE_MODE,
    accept_manifest,
    acquire_lock,
    pipeline_fingerprint,
    read_manifest,
    write_atomic,
)
from curator_exec_core.checkpoint.recovery import finished
from curator_exec_core.errors import CheckpointError
from curator_exec_core.runner.segments import BarrierSegment, MapSegment, Segment
from curator_exec_core.tasks import Task

__all__ = ["FORMAT_VERSION", "Checkpoint", "Journal", "read_journal", "split_lineage", "merge_lineage"]

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

    def _error(self, what: str) -> CheckpointError:
        return CheckpointError(f"checkpoint {self.path}: {what}")

    def open(self, stages: Sequence[Any], tasks: Iterable[Task], ignore_failures: bool) -> None:
        """Check, lock and (re)write the directory for a run of ``stages`` on ``tasks``: one pass over
        the tasks digests their ids and content (:class:`~.inputs.SourceDigest`)."""
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise self._error("is a file, not a directory; give a directory path (it is created if missing)")
        try:
            os.makedirs(self.path, mode=PRIVATE_MODE, exist_ok=True)
            self._lock_fd = acquire_lock(self.path, self._error)  # the first write: fails if not writable
        except OSError as exc:
            raise self._error(f"cannot be written ({exc.strerror or exc}); choose a writable directory") from exc
        try:
            old = read_manifest(self.path, self.overwrite, self._error)
            previous = old.get("initial_tasks") if old is not None and not self.overwrite else None
            inputs = SourceDigest(self.path, self.attempt, previous, self._error)
            try:
                for task in tasks:
                    inputs.add(task)
                fingerprint = pipeline_fingerprint(stages, inputs.finish(), ignore_failures)
            except BaseException:
                inputs.discard()
                raise
            accept_manifest(self.path, old, fingerprint, self.overwrite, self._error, inputs)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    # -- segments ---------------------------------------------------------------------------
    def _barrier_file(self, position: int) -> str:
        return os.path.join(self.path, f"part-{position}.outputs")

    def last_barrier(self, segments: Sequence[Segment]) -> tuple[int, list[Task]] | None:
        """The last barrier segment that finished in an earlier attempt (its position), and its outputs."""
        for segment in reversed(segments):
            path = self._barrier_file(segment.position)
            if not isinstance(segment, BarrierSegment) or not os.path.exists(path):
                continue
            with open(path, "rb") as f:
                data = f.read()
            body = unframe(data)
            if body is not None and len(data) == HEADER_SIZE + len(body):
                self.resumed_after = segment.name
                return segment.position, pickle.loads(body)
            logger.warning("checkpoint: ignoring the damaged %s", path)
        return None

    def save_barrier(self, segment: Segment, outputs: list[Task]) -> None:
        """A barrier segment finished: its outputs, as one atomic file (a map segment: nothing)."""
        if isinstance(segment, BarrierSegment):
            write_atomic(self._barrier_file(segment.position),
                         frame(pickle.dumps(outputs, protocol=pickle.HIGHEST_PROTOCOL)))

    def run_map(self, segment: MapSegment, sources: list[Task], run: Callable[[list[Task]], list[Task]],
                resumed: Callable[[int], None]) -> list[Task]:
        """One map segment: the outputs of its finished sources from the journals, then ``run`` on the
        others with a journal observing the segment's stages."""
        folder = os.path.join(self.path, f"part-{segment.position}")
        os.makedirs(folder, mode=PRIVATE_MODE, exist_ok=True)
        for task in sources:
            if task.lineage:  # a source holds all of its own share: empty lineage (see lineage.shares)
                task.lineage = ()
        done, outputs, _ = finished(folder, {t.task_id for t in sources})
        pending = [t for t in sources if t.task_id not in done]
        if segment.position == 0:
            self.resumed = len(done)
        if done:
            logger.info("checkpoint %s: %d of %d source tasks of part %d resumed", self.path, len(done),
                        len(sources), segment.position)
            resumed(len(done))
        if not pending:
            return outputs
        journal = Journal(folder, self.attempt, end=segment.stages[-1].index)
        for stage in segment.stages:
            stage.observer = journal
        try:
            return outputs + run(pending)
        finally:
            journal.flush_all()
            for stage in segment.stages:
                stage.observer = None

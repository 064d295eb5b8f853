"""One run as an object, and its driver.

A :class:`Run` holds everything one run of a pipeline has: its id, the executor and the hook relay,
the plan and the schedule, the managed stages, the stats (the one place counts go) and the progress
reporter that watches them, the checkpoint, and what must be released at its end. The executor
holds settings only; code that needs the run (the Ray layer, a plugin's ``execute``) gets it with
:meth:`Run.of` from the managed stages it was handed.

:meth:`Run.drive` is the lifecycle::

    capacity -> plan -> (checkpoint) -> schedule -> execute -> teardown (always)

The execute phase is one ``execute`` call, or, when the pipeline has barrier stages the executor
does not run itself (or a checkpoint), the pipeline's segments through the one segment loop
(:func:`curator_exec_core.runner.segments.run_segments`) with iterators between segments: map segments
through ``execute`` window by window, barriers through ``executor.stream_barrier``; with a checkpoint,
the initial tasks are checked as they are read and finished work is taken from it.
"""

from __future__ import annotations

import functools
import itertools
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from curator_exec_core.checkpoint import BarrierStore, Checkpoint, StoredBlock
from curator_exec_core.errors import FailureBudgetExceeded, find_stage_error
from curator_exec_core.lifecycle import capacity_and_plan
from curator_exec_core.progress import ProgressEvent, ProgressReporter
from curator_exec_core.registry import get_plugin_manager
from curator_exec_core.runner import ManagedStage, remove_run_dir
from curator_exec_core.runner.segments import BarrierSegment, MapSegment, needs_split, run_segments, split_segments
from curator_exec_core.scheduling import Schedule
from curator_exec_core.source import DEFAULT_WINDOW, Source
from curator_exec_core.stages import ProcessingStage
from curator_exec_core.stats import RunStats
from curator_exec_core.statslog import StatsTicker, load_earlier, snapshot, write_stats_file
from curator_exec_core.tasks import FailedTask, PipelineResult, Task

if TYPE_CHECKING:  # pragma: no cover
    import pluggy

    from curator_exec_core.executor import BaseExecutor
    from curator_exec_core.planning import ExecutionPlan

__all__ = ["Run"]

logger = logging.getLogger("curator_exec")

#: outputs handed to a sink (``Pipeline.stream``) at a time
SINK_BATCH = 64

#: failed tasks logged one by one at the end of a run (the rest are counted)
LOGGED_FAILURES = 20


class Run:
    """One run of ``stages`` on ``executor``. Create it and call :meth:`drive` (``executor.run``
    does); during the run, every managed stage's ``run`` is this object."""

    def __init__(self, executor: BaseExecutor, stages: Sequence[ProcessingStage[Any, Any]],
                 initial_tasks: Iterable[Task] | None = None, *,
                 checkpoint_path: str | os.PathLike[str] | None = None, overwrite: bool = False,
                 return_outputs: bool = True, sink: Callable[[list[Task]], None] | None = None) -> None:
        self.executor = executor
        self.stages: list[ProcessingStage[Any, Any]] = list(stages)
        if not self.stages:
            raise ValueError("a pipeline needs at least one stage")
        self.initial_tasks = initial_tasks
        #: keep the last stage's outputs for the result (False: they are dropped where they are made)
        self.return_outputs = return_outputs and sink is None
        #: where outputs go as they come (``Pipeline.stream``), instead of the result
        self.sink = sink
        #: source tasks per ``execute`` call for an executor that does not stream its input
        self.window: int = getattr(executor.options, "source_window", DEFAULT_WINDOW)
        self.source: Source | None = None
        self.id: str = uuid.uuid4().hex[:12]
        self.hook: pluggy.HookRelay = get_plugin_manager().hook
        self.stats = RunStats([s.name for s in self.stages])
        self.reporter = ProgressReporter(executor, self.id, self.stats,
                                         lambda e: self.hook.curator_exec_progress(event=e))
        self.checkpoint = Checkpoint(checkpoint_path, overwrite) if checkpoint_path is not None else None
        self.plan: ExecutionPlan | None = None
        self.schedule: Schedule | None = None
        self.managed: list[ManagedStage] = []
        #: what the engine reports about this run (chunk sizes, versions): ``result.metrics["engine"]``
        self.info: dict[str, Any] = {}
        #: set when the run must stop although no stage raised (the failure budget is spent)
        self.aborted: BaseException | None = None
        self._ticker: StatsTicker | None = None
        self._cleanups: list[Callable[[BaseException | None], None]] = []
        self._parked: dict[Any, tuple[Any, Callable[[BaseException | None], None]]] = {}
        self._deferred_keys: set[str] = set()
        self._stores: dict[int, BarrierStore] = {}
        self._started = time.perf_counter()

    @classmethod
    def of(cls, stages: Sequence[ProcessingStage[Any, Any]]) -> Run:
        """The run the managed ``stages`` belong to (on the driver)."""
        run = getattr(stages[0], "run", None) if stages else None
        if not isinstance(run, Run):
            raise RuntimeError("these stages do not belong to a run: run a pipeline with executor.run(stages, "
                               "tasks) or pipeline.run(executor), which prepare them")
        return run

    def report(self, index: int, counts: Sequence[Any]) -> None:
        """Stage ``index`` did ``counts`` (tasks in, outputs, new failure records) somewhere."""
        self.stats.add(index, counts)

    def defer(self, cleanup: Callable[[BaseException | None], None], key: str | None = None) -> None:
        """Call ``cleanup(error)`` when the run ends, whatever happened (last deferred, first called).
        With ``key``, only the first cleanup deferred under that key is kept."""
        if key is not None:
            if key in self._deferred_keys:
                return
            self._deferred_keys.add(key)
        self._cleanups.append(cleanup)

    def park(self, key: Any, workers: Any, release: Callable[[BaseException | None], None]) -> None:
        """Keep ``workers`` that an ``execute`` call set up for the next call on the same stages (``key``):
        a run that calls ``execute`` once per window of its source sets its workers up once. Whatever is
        parked is released (``release(error)``) when it is taken by :meth:`release_parked`, and at the
        latest when the run ends, before the executor's teardown."""
        old = self._parked.pop(key, None)
        if old is not None:
            old[1](None)
        self._parked[key] = (workers, release)

    def unpark(self, key: Any) -> Any:
        """The workers parked under ``key`` (None if there are none); they are the caller's now."""
        entry = self._parked.pop(key, None)
        return None if entry is None else entry[0]

    def release_parked(self, keep: Any = None, error: BaseException | None = None) -> None:
        """Release every parked worker but those under ``keep``: before other work needs their resources
        (another segment's workers, a barrier's)."""
        first: Exception | None = None
        for key in [k for k in self._parked if k != keep]:
            _, release = self._parked.pop(key)
            try:
                release(error)
            except Exception as exc:  # the others are released all the same
                if error is None and first is None:
                    first = exc
                else:
                    logger.exception("releasing parked workers of run %s failed", self.id)
        if first is not None:
            raise first

    # -- the lifecycle ----------------------------------------------------------------------
    def drive(self) -> PipelineResult:
        self.source = source = Source(self.initial_tasks)
        if source.empty():
            return PipelineResult([], executor=self.executor.executor_name)
        error: BaseException | None = None
        results: list[Task] = []
        failed: list[FailedTask] = []
        try:
            self._prepare(source)
            self._collect(self._execute(source), results, failed)
            if self.aborted is not None:  # an engine swallowed the abort (it reached a thread of its own)
                raise self.aborted
        except BaseException as exc:
            error = exc
            if self.aborted is not None and exc is not self.aborted:
                error = self.aborted
                raise self.aborted from exc
            stage_error = find_stage_error(exc)
            if stage_error is not None and stage_error is not exc:
                error = stage_error
                raise stage_error from exc
            raise
        finally:
            self._finish(error)
        return self._result(results, failed)

    def _collect(self, outputs: Iterable[Task], results: list[Task], failed: list[FailedTask]) -> None:
        """The last stage's outputs as they come: failure records to ``failed``; outputs to the sink (in
        batches), to ``results`` (``return_outputs``), or nowhere."""
        sink, keep = self.sink, self.return_outputs
        batch: list[Task] = []
        try:
            for task in outputs:
                if isinstance(task, FailedTask):
                    failed.append(task)
                elif sink is not None:
                    batch.append(task)
                    if len(batch) >= SINK_BATCH:
                        sink(batch)
                        batch = []
                elif keep:
                    results.append(task)
            if batch and sink is not None:
                sink(batch)
        finally:  # an executor's output generator (and the stages it holds) ends now, not when collected
            close = getattr(outputs, "close", None)
            if close is not None:
                close()

    def _prepare(self, source: Source) -> None:
        """Capacity, plan, checkpoint, managed stages, schedule; then ``run_started``."""
        executor, hook = self.executor, self.hook
        _, self.plan = capacity_and_plan(hook, executor, self.stages)
        if self.checkpoint is not None:
            checkpoint = self.checkpoint
            checkpoint.open(self.stages, executor.options.ignore_failures, source.total)
            # every initial task is checked against the checkpoint's record of it before its work
            source.checker = (checkpoint.check_inputs, checkpoint.inputs_read)
            if checkpoint.whole_source_first:  # a list (already in memory), or no records to name a change
                source.all()
            executor.check_shared_path(checkpoint.path)
            load_earlier(checkpoint.path, self.stats)
        self.managed = executor.managed_stages(self.stages, self.plan, self.id)
        for stage in self.managed:
            stage.run, stage.stats = self, self.stats
        if not self.return_outputs and self.sink is None:  # dropped where they are made, not shipped here
            self.managed[-1].keep_outputs = False
        schedule = hook.curator_exec_schedule(executor=executor, plan=self.plan)
        self.schedule = schedule if isinstance(schedule, Schedule) else Schedule.unpinned(self.plan)
        if executor.options.max_failed_tasks is not None:
            self.stats.listen(self._check_budget)
        hook.curator_exec_progress(event=ProgressEvent(kind="run_started", executor=executor, run_id=self.id,
                                                       stages=tuple(s.name for s in self.stages), total=source.total))
        self._ticker = StatsTicker(executor.options.progress_interval, self._send_stats)

    def _check_budget(self, index: int) -> None:
        """A stats listener: the first time more tasks failed than ``max_failed_tasks`` allows, abort the
        run (raise, in whatever reported the counts; the run raises it too if that was swallowed). A
        fraction is of the source's size, or (a generator) of the source tasks read so far."""
        if self.aborted is not None or self.source is None:
            return
        source_tasks = self.source.total if self.source.total is not None else self.source.read
        limit = self.executor.options.failure_limit(source_tasks)
        if limit is None:
            return
        failed = self.stats.failed
        if failed <= limit:
            return
        budget = self.executor.options.max_failed_tasks
        described = f"max_failed_tasks={budget!r}" + (
            f" ({limit} of {source_tasks} source tasks)" if isinstance(budget, float) else "")
        self.aborted = FailureBudgetExceeded(described, failed, self.stats.first_errors())
        raise self.aborted

    def _send_stats(self, *, finished: bool = False, error: BaseException | None = None) -> None:
        """The ``"stats"`` event (and ``stats.json`` with a checkpoint)."""
        snap = snapshot(self.id, self.stats, time.perf_counter() - self._started, finished=finished, error=error)
        if self.checkpoint is not None:
            try:
                write_stats_file(self.checkpoint.path, snap)
            except OSError as exc:
                logger.warning("could not write the run's statistics to %s: %s", self.checkpoint.path, exc)
        self.hook.curator_exec_progress(event=ProgressEvent(kind="stats", executor=self.executor, run_id=self.id,
                                                            seconds=snap["seconds"], stats=snap))

    def _execute(self, source: Source) -> Iterable[Task]:
        """The source through ``execute`` (an executor that streams its input gets it whole and lazily,
        one that takes lists gets it window by window), or the segments (see the module docstring)."""
        executor = self.executor
        if self.checkpoint is None and not needs_split(self.managed, executor.native_stage_kinds):
            if executor.streams_input:  # a list stays a list; a generator is read as the executor goes
                return self.call_execute(self.managed, source.whole())
            if (source.total is not None and source.total <= self.window) or not self._windowable():
                return self.call_execute(self.managed, source.all())
            return itertools.chain.from_iterable(self.call_execute(self.managed, w) for w in source.windows(self.window))
        segments = split_segments(self.managed)
        if executor.streams_input and self.checkpoint is None:  # segments as iterators: nothing gathered here
            return run_segments(segments, source.whole(),
                                run_map=lambda seg, data, last: self.call_execute(list(seg.stages), data),
                                run_barrier=lambda seg, data, last: executor.stream_barrier(seg.stage, data),
                                empty=lambda data: isinstance(data, list) and not data)
        # map segments window by window, barriers through stream_barrier (with a checkpoint, their outputs
        # through a file): iterators between segments, so the driver holds a window, never the data
        data: Source | _Flow = source
        checkpoint = self.checkpoint
        stored = executor.loads_stored_blocks
        if checkpoint is not None and (found := checkpoint.last_barrier(segments, stored)) is not None:
            position, count, outputs = found
            for _ in source.windows(self.window):  # the inputs are still checked (their work is done)
                pass
            checkpoint.resumed = source.read  # every source task's work up to that barrier is done
            self.stats.resume(segments[position].first.index, count)
            segments = segments[position + 1:]
            data = _Flow.of_blocks(outputs)
        return run_segments(segments, data, run_map=self._run_map, run_barrier=self._run_barrier,
                            empty=lambda d: d.empty())

    def next_barrier(self, stages: Sequence[ManagedStage]) -> ManagedStage | None:
        """The barrier stage that the outputs of ``stages`` (one map segment) go straight into, when the
        core runs it (through ``executor.stream_barrier``); else None. ``execute`` may then return items
        of its own that only its ``stream_barrier`` understands for that stage's kind (the Ray layer:
        chunks left in the object store), so the data does not come to the driver between them."""
        after = stages[-1].index + 1 if stages else len(self.managed)
        native = frozenset() if self.checkpoint is not None else self.executor.native_stage_kinds
        if after < len(self.managed) and needs_split(self.managed[after:after + 1], native):
            return self.managed[after]
        return None

    def _windowable(self) -> bool:
        """Whether ``execute`` may take the source window by window: only a pipeline of map stages is
        per-task independent. A barrier stage the executor runs itself (a shuffle, a gang) needs every
        task of the run in one ``execute`` (window by window, it would group or share each window
        apart: a dedup of 200,000 documents in windows of 10,000 kept the duplicates across windows)."""
        return not needs_split(self.managed, frozenset())

    def _run_map(self, segment: MapSegment, data: Source | _Flow, last: bool) -> _Flow:
        """A map segment on ``data`` window by window (it is per-task independent)."""
        stages = list(segment.stages)
        checkpoint = self.checkpoint

        def outputs() -> Iterator[Task]:
            for window in data.windows(self.window):
                if checkpoint is None:
                    yield from self.call_execute(stages, window)
                else:
                    yield from checkpoint.run_map(segment, window, lambda t: self.call_execute(stages, t),
                                                  functools.partial(self.stats.resume, segment.first.index))

        return _Flow(outputs())

    def _run_barrier(self, segment: BarrierSegment, data: Source | _Flow, last: bool) -> _Flow:
        """A barrier stage on its input as it comes (``stream_barrier``); with a checkpoint its outputs
        go to a file before the next segment starts (a resume starts after it), and are read back."""
        if self.checkpoint is None:
            return _Flow(iter(self.executor.stream_barrier(segment.stage, data)))
        self._stores[segment.stage.index] = self.checkpoint.barrier_store(segment)
        try:
            outputs = self.executor.stream_barrier(segment.stage, data)
            stored = not last and self.executor.loads_stored_blocks
            return _Flow.of_blocks(self.checkpoint.save_barrier(segment, outputs, stored)[1])
        finally:
            del self._stores[segment.stage.index]

    def barrier_store(self, stage: ManagedStage) -> BarrierStore | None:
        """Where the workers of the barrier ``stage`` may write its outputs, while the core saves them
        into the run's checkpoint (None: no checkpoint, or not now). An executor whose outputs of
        ``stream_barrier`` are held by workers has them call :meth:`BarrierStore.write
        <curator_exec_core.checkpoint.barrier.BarrierStore.write>` and returns the
        :class:`~curator_exec_core.checkpoint.barrier.BlockRef` records it sends back instead of the
        tasks: the outputs are saved without passing through the driver."""
        return self._stores.get(stage.index)

    def call_execute(self, stages: list[ManagedStage], tasks: Iterable[Task]) -> Iterable[Task]:
        """The execute phase (its hook) on ``stages``: the outputs, a list or (an executor that streams)
        an iterator."""
        outputs: Iterable[Task] | None = self.hook.curator_exec_execute(executor=self.executor, stages=stages,
                                                                        initial_tasks=tasks)
        if outputs is None:
            raise TypeError(f"executor {self.executor.executor_name!r}: execute() returned None, expected a list "
                            "of tasks")
        return outputs

    def _finish(self, error: BaseException | None) -> None:
        """Teardown, whatever happened: in-process workers, parked workers, the executor's hook, what
        was deferred. A teardown that fails after a successful run fails the run."""
        if self._ticker is not None:
            self._ticker.stop()
        if self.checkpoint is not None:
            self.checkpoint.close()
        failed: Exception | None = None
        try:
            self.release_parked(error=error)
        except Exception as exc:  # (after an error, release_parked logs and goes on)
            failed = exc
        for stage in self.managed:  # workers that live in this process and ran setup
            if stage.is_set_up:
                try:
                    stage.teardown()
                except Exception:
                    logger.exception("teardown of stage %r failed", stage.name)
        try:
            self.hook.curator_exec_teardown(executor=self.executor, error=error)
        except Exception:
            if error is None:
                raise
            logger.exception("executor teardown failed after an error")
        finally:
            self._release(error)
        if failed is not None:
            raise failed

    def _release(self, error: BaseException | None) -> None:
        while self._cleanups:
            try:
                self._cleanups.pop()(error)
            except Exception:
                logger.exception("releasing what run %s acquired failed", self.id)
        self.reporter.flush()
        if self._ticker is not None:
            try:
                self._send_stats(finished=True, error=error)
            except Exception:
                logger.exception("the final stats event failed")
        self.hook.curator_exec_progress(event=ProgressEvent(
            kind="run_finished", executor=self.executor, run_id=self.id,
            seconds=time.perf_counter() - self._started, error=error))
        remove_run_dir(self.id)
        for stage in self.managed:
            stage.run = None

    def _result(self, results: list[Task], failed: list[FailedTask]) -> PipelineResult:
        for f in failed[:LOGGED_FAILURES]:
            logger.warning("task %s failed in stage %r after %d attempt(s): %s", f.task_id, f.stage, f.attempts,
                           f.error)
        if len(failed) > LOGGED_FAILURES:
            logger.warning("... and %d more failed tasks (see result.failed_tasks)", len(failed) - LOGGED_FAILURES)
        metrics = self.metrics()
        name = self.executor.executor_name
        logger.info("%s: %d tasks out, %d failed in %.2fs", name, len(results), len(failed), metrics["seconds"])
        for key, counts in metrics["stages"].items():
            logger.info("  stage %-24s in=%d out=%d failed=%d", key, counts["tasks_in"], counts["tasks_out"],
                        counts["tasks_failed"])
        return PipelineResult(results, failed_tasks=failed, metrics=metrics, plan=self.plan, executor=name)

    def metrics(self) -> dict[str, Any]:
        """``result.metrics``: seconds, per-stage counts, and the checkpoint's and engine's figures."""
        metrics: dict[str, Any] = {"seconds": time.perf_counter() - self._started, "stages": self.stats.metrics(),
                                   "stats": self.stats.perf_metrics()}
        if self.checkpoint is not None:
            cp = self.checkpoint
            read = self.source.read if self.source is not None else 0
            metrics["checkpoint"] = {"path": cp.path, "source_tasks": read, "resumed_tasks": cp.resumed,
                                     "resumed_after": cp.resumed_after}
        if self.info:
            metrics["engine"] = dict(self.info)
        return metrics

    def __repr__(self) -> str:
        return f"<Run {self.id} of {len(self.stages)} stages on {self.executor!r}>"


#: bytes of a barrier's outputs (as pickled in its file) per window of the map segment after it, at most,
#: when the driver reads them; and when its workers load them (stored blocks: in the engine's memory, not here)
WINDOW_BYTES = 64 << 20
STORED_WINDOW_BYTES = 1 << 30


class _Flow(Iterator[Task]):
    """The tasks between two segments, as an iterator that can say whether it is empty (by reading one
    ahead) and hand itself out in windows. Made from blocks of a barrier's outputs file
    (:meth:`of_blocks`), a window also ends at about :data:`WINDOW_BYTES` of them, so large tasks make
    small windows."""

    def __init__(self, tasks: Iterator[Task] | None, blocks: Iterator[tuple[list[Task], int]] | None = None) -> None:
        self._tasks = tasks
        self._blocks = blocks
        self._head: list[Task] = []  # read ahead, next last (a block's tasks, reversed)
        self._head_bytes = 0

    @classmethod
    def of_blocks(cls, blocks: Iterator[tuple[list[Task], int]]) -> _Flow:
        return cls(None, blocks)

    def _fill(self) -> bool:
        """Read ahead: one task, or the next block of tasks."""
        if self._blocks is None:
            assert self._tasks is not None
            self._head, self._head_bytes = list(itertools.islice(self._tasks, 1)), 0
            return bool(self._head)
        for tasks, nbytes in self._blocks:
            if tasks:
                self._head, self._head_bytes = tasks[::-1], nbytes
                return True
        return False

    def empty(self) -> bool:
        return not self._head and not self._fill()

    def __next__(self) -> Task:
        if self._head:
            return self._head.pop()
        if self._blocks is None:
            assert self._tasks is not None
            return next(self._tasks)
        if not self._fill():
            raise StopIteration
        return self._head.pop()

    def windows(self, size: int) -> Iterator[list[Task]]:
        """Lists of at most ``size`` tasks (and, from blocks, about :data:`WINDOW_BYTES` read here or
        :data:`STORED_WINDOW_BYTES` of stored blocks; a stored block is not split, so a window of them
        may pass ``size`` by less than a block)."""
        size = max(1, size)
        if self._blocks is None:
            while True:
                window = list(itertools.islice(self, size))
                if not window:
                    return
                yield window
        window, nbytes, stored = [], 0, 0  # stored: bytes of stored blocks (the engine's memory, not the driver's)
        held = 0  # tasks in the window (a stored block counts its tasks)
        head = [(self._head[::-1], self._head_bytes)] if self._head else []
        self._head = []
        for tasks, block_bytes in itertools.chain(head, self._blocks):
            window += tasks
            held += _weight(tasks)
            if any(isinstance(item, StoredBlock) for item in tasks):
                stored += block_bytes
            else:
                nbytes += block_bytes
            while held >= size and len(window) > 1 and held == len(window):  # tasks: cut at size
                yield window[:size]
                window, nbytes = window[size:], 0
                held = len(window)
            if held >= size or nbytes >= WINDOW_BYTES or stored >= STORED_WINDOW_BYTES:
                yield window
                window, nbytes, held, stored = [], 0, 0, 0
        if window:
            yield window

    def close(self) -> None:
        for it in (self._tasks, self._blocks):
            close = getattr(it, "close", None)
            if close is not None:
                close()


def _weight(items: list[Any]) -> int:
    """How many tasks ``items`` stand for (a :class:`StoredBlock` for its tasks)."""
    return sum(item.count if isinstance(item, StoredBlock) else 1 for item in items)

"""The one stage runner every backend's workers call.

:class:`ManagedStage` wraps a user's :class:`ProcessingStage` and is itself a
``ProcessingStage``, so any executor (including a third party's that only calls
``stage.setup()``, ``stage.process()`` and ``stage.teardown()``) gets the shared
semantics without doing anything:

* batching to the stage's ``batch_size`` whatever chunk the engine hands over,
* fan-out (a list) and filtering (``None``), and deterministic task ids
  (a single output keeps its parent's id; output ``i`` of a list gets
  ``"<parent>.<i>"``),
* per-stage timing (:class:`StagePerf` on every output task),
* failures (:mod:`curator_exec_core.runner.retry`): ``max_retries`` retries, then either
  :class:`StageFailedError` naming the stage and task with the original exception chained
  (default), or, with ``ignore_failures``, a :class:`FailedTask` record that flows through the
  rest of the pipeline untouched and is reported on the result,
* ``setup_on_node`` exactly once per node per stage per run, called by ``setup``,
* ``teardown`` once per worker that ran ``setup``,
* counts: every call ends with :class:`~curator_exec_core.stats.Counts` for the stage
  (``last_counts``, and :meth:`process_counted` returns them with the outputs). In the driver
  process they go straight to the run's stats (``stats``); a worker process hands them back
  with its outputs.

This module holds what every stage kind shares (the *host*: identity, plan, lifecycle, failure
policy, counts) and the map kind's batch path. Shuffle and gang stages
(:mod:`curator_exec_core.shuffle`, :mod:`curator_exec_core.gang`) are hosts with a work path of
their own.
"""

from __future__ import annotations

import functools
import os
import socket
import time
from typing import TYPE_CHECKING, Any, ClassVar

from curator_exec_core.errors import StageContractError, StageFailedError, TaskTimeoutError
from curator_exec_core.runner.node import once_per_node, run_dir
from curator_exec_core.runner.retry import FailurePolicy, retry
from curator_exec_core.runner.timeout import call_limited, killed_tasks, record_killed
from curator_exec_core.stages import NodeInfo, ProcessingStage, Resources, WorkerMetadata, has_lifecycle
from curator_exec_core.stats import FIRST_ERRORS, CallPerf, Counts
from curator_exec_core.tasks import FailedTask, StagePerf, Task

if TYPE_CHECKING:  # pragma: no cover
    from curator_exec_core.planning import StagePlan
    from curator_exec_core.run import Run
    from curator_exec_core.runner.observer import RunnerObserver
    from curator_exec_core.stats import RunStats

__all__ = ["ManagedStage"]


#: ``Counts`` from a 4-tuple, without the NamedTuple constructor's extra call (the runner's hot path)
_counts = functools.partial(tuple.__new__, Counts)
_perf_counter, _thread_time = time.perf_counter, time.thread_time


@functools.lru_cache(maxsize=1)
def _process_worker(pid: int) -> str:
    """The worker id of a call made outside ``setup`` (a stateless stage on a pooled process)."""
    return f"{socket.gethostname()}:{pid}"


def _inherit(child: Task, parent: Task, task_id: str) -> None:
    """Give an output its id; a new task also inherits what it left empty
    (stage history, metadata, dataset name) from its parent."""
    child.task_id = task_id
    if child is not parent:
        if not child.stage_perf and parent.stage_perf:
            child.stage_perf = list(parent.stage_perf)
        if not child.metadata and parent.metadata:
            child.metadata = dict(parent.metadata)
        if not child.dataset_name:
            child.dataset_name = parent.dataset_name


class ManagedStage(ProcessingStage[Task, Task]):
    """A user stage as the core runs it. Backends receive these from the run driver.

    ``name``, ``batch_size`` and ``backend_options`` are the user's; ``resources``
    and ``num_workers()`` are the planned values; ``stage`` is the user's stage;
    ``index`` its position in the pipeline; ``kind`` its stage kind
    (:mod:`curator_exec_core.runner.kinds`).
    """

    #: the stage kind (``"map"``; ``"shuffle"``, ``"gang"`` for their managed classes)
    kind: ClassVar[str] = "map"

    def __init__(self, stage: ProcessingStage[Any, Any], *, index: int = 0, plan: StagePlan | None = None,
                 policy: FailurePolicy | None = None, run_id: str = "") -> None:
        if isinstance(stage, ManagedStage):
            raise TypeError("stage is already managed")
        self.stage = stage
        self.index = index
        self.name = stage.name
        self.batch_size = max(1, int(stage.batch_size))
        self.backend_options = stage.backend_options
        self.plan = plan
        self.resources = plan.resources if plan is not None else stage.resources
        self.policy = policy or FailurePolicy()
        self.run_id = run_id or f"adhoc-{os.getpid()}-{id(self):x}"
        self.worker_id = ""
        self._custom_batch = type(stage).process_batch is not ProcessingStage.process_batch
        self._set_up = False
        self._torn_down = False
        self._node_done: set[str] = set()
        #: the run this stage belongs to, and its stats: in the driver process only (never pickled: a
        #: worker process returns its counts with its outputs)
        self.run: Run | None = None
        self.stats: RunStats | None = None
        #: set by a checkpointed run: told what this stage makes and drops (see runner.observer)
        self.observer: RunnerObserver | None = None
        self._last: tuple[Any, ...] = (0, 0, 0, None)  # the counts of the last call (see last_counts)
        self._t0 = self._c0 = 0.0  # when the current call started: wall and thread CPU clocks
        own = getattr(stage, "task_timeout", None)
        #: seconds a call of the user's stage may run (the stage's own limit, else the executor's)
        self.task_timeout: float | None = own if own is not None else self.policy.task_timeout
        self._driver_pid = os.getpid()  # a copy in another process is a worker: it may end itself
        #: False on the last stage of a run that returns no outputs: a call returns only failure records
        #: (its outputs are counted, and journaled with a checkpoint, then dropped where they are made)
        self.keep_outputs = True

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["stats"] = state["run"] = None
        return state

    @property
    def requested(self) -> Resources:
        return self.stage.resources

    @property
    def is_set_up(self) -> bool:
        return self._set_up and not self._torn_down

    @property
    def has_lifecycle(self) -> bool:
        """Whether the user's stage overrides ``setup``, ``setup_on_node`` or ``teardown``."""
        return has_lifecycle(self.stage)

    def num_workers(self) -> int | None:
        return self.plan.workers if self.plan is not None else self.stage.num_workers()

    # -- lifecycle (every kind) --------------------------------------------
    def setup_on_node(self, node_info: NodeInfo | None = None, worker_metadata: Any = None) -> None:
        """Run the user's ``setup_on_node`` unless it already ran on this node in this run."""
        node_id = node_info.node_id if isinstance(node_info, NodeInfo) else socket.gethostname()
        if node_id in self._node_done:
            return
        call = functools.partial(self.stage.setup_on_node, NodeInfo(node_id), worker_metadata)
        once_per_node(self.run_id, f"{self.index}-{self.name}", node_id, call)
        self._node_done.add(node_id)

    def setup(self, worker_metadata: Any = None) -> None:
        """``setup_on_node`` (once per node), then the user's ``setup`` (once per worker)."""
        meta = worker_metadata if isinstance(worker_metadata, WorkerMetadata) else None
        node_id = meta.node_id if meta and meta.node_id else socket.gethostname()
        self.worker_id = meta.worker_id if meta else f"{socket.gethostname()}:{os.getpid()}"
        self.setup_on_node(NodeInfo(node_id), meta)
        self.stage.setup(worker_metadata)
        self._set_up = True
        self._torn_down = False

    def teardown(self) -> None:
        """The user's ``teardown``, once, and only if ``setup`` ran."""
        if self._set_up and not self._torn_down:
            self._torn_down = True
            self.stage.teardown()

    # -- failures and counts (every kind) -------------------------------------
    def _fail(self, task: Task, exc: BaseException, attempts: int, what: str = "") -> FailedTask:
        """Retries are spent: abort with :class:`StageFailedError`, or (``ignore_failures``) the
        failure record. ``what`` prefixes the error (``"keys()"``: which call of the stage failed)."""
        failed = FailedTask.from_exception(task, self.name, exc, attempts)
        if what:
            failed.error = f"{what}: {failed.error}"
        if not self.policy.ignore_failures:
            raise StageFailedError(self.name, task.task_id, failed.error, attempts, failed.traceback,
                                   retryable=not isinstance(exc, StageContractError)) from exc
        return failed

    def _begin(self) -> None:
        """The start of a call (its figures are measured from here to :meth:`_counted`)."""
        self._t0, self._c0 = _perf_counter(), _thread_time()

    def _counted(self, counts: tuple[int, int, int], made: list[Task] | None = None) -> None:
        """The end of a call: remember its counts (tasks in, outputs, new failure records) and figures
        (:class:`CallPerf`: wall and CPU seconds, the stage's recorded counters, the first errors of
        the failure records in ``made``) and, in the driver process, add them to the run's."""
        wall, cpu = _perf_counter() - self._t0, _thread_time() - self._c0
        errors: tuple[str, ...] = ()
        if counts[2] and made:
            errors = tuple(f"{t.task_id}: {t.error}" for t in made
                           if type(t) is FailedTask and t.stage == self.name)[:FIRST_ERRORS]
        worker = self.worker_id or _process_worker(os.getpid())
        records = self.stage.__dict__.pop("_curator_records", None)
        stats = self.stats
        if stats is not None:  # the driver process: straight into the run's stats (its figures are there)
            self._last = (counts[0], counts[1], counts[2], None)
            stats.add_call(self.index, worker, counts[0], counts[1], counts[2], wall, cpu, records, errors)
        else:  # a worker process: the figures travel back with the counts
            self._last = (counts[0], counts[1], counts[2],
                          CallPerf(worker, counts[0], counts[1], counts[2], wall, cpu, records, errors))

    def _check(self, result: Any, call: str = "process()") -> None:
        if not isinstance(result, Task):
            raise StageContractError(f"stage {self.name!r} returned {type(result).__name__}; {call} must return a "
                                     "Task, a list of Tasks, or None")

    def _validated(self, result: Any, call: str = "process()") -> Any:
        """A call's result, checked (a wrong type fails the call like an exception would)."""
        if isinstance(result, list):
            for child in result:
                self._check(child, call)
        elif result is not None:
            self._check(result, call)
        return result

    # -- time limits (every kind) ----------------------------------------------------
    def limited(self, fn: Any, what: str, tasks: list[Task], *, may_end_worker: bool = True) -> Any:
        """``fn`` (a call of the user's stage on ``tasks``) under ``task_timeout`` (as it is if none).
        ``may_end_worker``: in a worker process, a call that does not stop ends the process (the map
        path; its replacement fails those tasks without calling the stage, see :meth:`killed`)."""
        seconds = self.task_timeout
        if not seconds:
            return fn
        worker = may_end_worker and os.getpid() != self._driver_pid
        path = self._killed_path() if worker else ""
        label = f"stage {self.name!r}: {what}" + (f" on task {tasks[0].task_id!r}" if len(tasks) == 1 else
                                                  f" on {len(tasks)} tasks")

        def call(*args: Any) -> Any:
            return call_limited(functools.partial(fn, *args), seconds, label, kill=worker,
                                on_kill=functools.partial(record_killed, path, [t.task_id for t in tasks]))
        return call

    def _killed_path(self) -> str:
        return os.path.join(run_dir(self.run_id), "timed-out", f"{self.index}")

    def ended_by_timeout(self) -> set[str]:
        """The ids of the tasks whose call ended a worker of this stage on this node (task_timeout)."""
        return killed_tasks(self._killed_path()) if self.task_timeout else set()

    def killed(self, tasks: list[Task]) -> tuple[list[Task], list[Task]]:
        """``tasks`` split into those to run and failure records for those whose call ended a worker of
        this stage on this node (see :mod:`curator_exec_core.runner.timeout`)."""
        if os.getpid() == self._driver_pid:
            return tasks, []
        ended = self.ended_by_timeout()
        if not ended:
            return tasks, []
        run: list[Task] = []
        records: list[Task] = []
        for task in tasks:
            if task.task_id in ended and not isinstance(task, FailedTask):
                error = TaskTimeoutError(f"stage {self.name!r}: the call on task {task.task_id!r} ran longer than "
                                         f"task_timeout={self.task_timeout:g}s and did not stop: its worker was ended")
                records.append(self._fail(task, error, 1))
            else:
                run.append(task)
        return run, records

    # -- the map kind's work ------------------------------------------------------
    def process(self, task: Task) -> list[Task]:
        """Process one task; always returns a list (possibly empty)."""
        return self.process_batch([task])

    def process_batch(self, tasks: list[Task]) -> list[Task]:
        """Process any number of tasks in ``batch_size`` chunks. FailedTasks pass through. The call's
        counts are ``last_counts`` (and go to the run's stats in the driver process)."""
        self._begin()
        out: list[Task] = []
        pending: list[Task] = []
        size, retries = self.batch_size, self.policy.max_retries
        passed = new_failed = 0
        for task in tasks:
            if isinstance(task, FailedTask):
                out.append(task)
                passed += 1
                continue
            pending.append(task)
            if len(pending) >= size:
                new_failed += self._run_into(pending, out, retries)
                pending = []
        if pending:
            new_failed += self._run_into(pending, out, retries)
        return self._call_done((len(tasks) - passed, len(out) - passed - new_failed, new_failed), out)

    def process_counted(self, tasks: list[Task]) -> tuple[list[Task], Counts]:
        """:meth:`process_batch` and the call's counts (what a worker sends back with the outputs)."""
        out = self.process_batch(tasks)
        return out, _counts(self._last)

    @property
    def last_counts(self) -> Counts:
        """The counts of the last call (tasks in, outputs, new failure records)."""
        return _counts(self._last)

    @last_counts.setter
    def last_counts(self, counts: Counts) -> None:
        self._last = (*counts[:3], counts[3] if len(counts) > 3 else None)

    def run_once(self, batch: list[Task]) -> list[Task]:
        """``batch`` as one call of the user's stage, without retries (a gang rank's share)."""
        self._begin()
        out: list[Task] = []
        failed = self._run_into(batch, out, 0) if batch else 0
        return self._call_done((len(batch), len(out) - failed, failed), out)

    def _call_done(self, counts: tuple[int, int, int], out: list[Task]) -> list[Task]:
        """The end of a map call: its counts, and the observer told what it returned."""
        self._counted(counts, out)
        if self.observer is not None:
            self.observer.call_done(self, out)
        return out if self.keep_outputs else self.failures_only(out)

    @staticmethod
    def failures_only(out: list[Task]) -> list[Task]:
        """The failure records of ``out`` (what a call of a last stage that keeps no outputs returns)."""
        return [t for t in out if isinstance(t, FailedTask)]

    def _run_into(self, batch: list[Task], out: list[Task], retries: int) -> int:
        """Run ``batch``, append its outputs to ``out``; returns how many failure records it made."""
        if not self.task_timeout:
            return self._run_into_timed(batch, out, retries)
        batch, ended = self.killed(batch)
        out.extend(ended)
        return len(ended) + (self._run_into_timed(batch, out, retries) if batch else 0)

    def _run_into_timed(self, batch: list[Task], out: list[Task], retries: int) -> int:
        start = time.perf_counter()
        made = self._batch_path(batch, retries) if self._custom_batch else self._task_path(batch, retries)
        if made:
            perf = StagePerf(self.name, time.perf_counter() - start, len(batch), self.worker_id)
            for task in made:
                if type(task) is not FailedTask:
                    task.stage_perf.append(perf)
            out.extend(made)
        if not self.policy.ignore_failures:
            return 0
        return sum(1 for t in made if isinstance(t, FailedTask))

    def _task_path(self, batch: list[Task], retries: int) -> list[Task]:
        """The user's ``process`` on every task (fast path: one call, retries only after an error)."""
        out: list[Task] = []
        process, observer = self.stage.process, self.observer
        for task in batch:
            if self.task_timeout:
                process = self.limited(self.stage.process, "process()", [task])
            try:
                result = process(task)
                if type(result) is not Task:
                    self._validated(result)
            except Exception as exc:
                def again(t: Task = task, call: Any = process) -> Any:
                    return self._validated(call(t))

                attempt = retry(again, retries, exc)
                if attempt.error is not None:
                    out.append(self._fail(task, attempt.error, attempt.attempts))
                    continue
                result = attempt.value
            if result is None:
                if observer is not None:
                    observer.derived(self, [task], [])
            elif isinstance(result, list):
                for i, child in enumerate(result):
                    _inherit(child, task, f"{task.task_id}.{i}")
                if observer is not None:
                    observer.derived(self, [task], result)
                out.extend(result)
            else:
                _inherit(result, task, task.task_id)
                if observer is not None:
                    observer.derived(self, [task], [result])
                out.append(result)
        return out

    def _batch_path(self, batch: list[Task], retries: int) -> list[Task]:
        """The user's ``process_batch`` on the whole batch (a failure fails every task of it)."""
        process_batch = self.limited(self.stage.process_batch, "process_batch()", batch)

        def call() -> list[Task]:
            result = process_batch(list(batch)) or []
            for child in result:
                self._check(child, "process_batch()")
            return result

        attempt = retry(call, retries)
        if attempt.error is not None:
            if not self.policy.ignore_failures:
                self._fail(batch[0], attempt.error, attempt.attempts)
            return [FailedTask.from_exception(t, self.name, attempt.error, attempt.attempts) for t in batch]
        result = attempt.value or []
        observer = self.observer
        if len(result) == len(batch):
            for child, parent in zip(result, batch, strict=True):
                _inherit(child, parent, parent.task_id)
                if observer is not None:
                    observer.derived(self, [parent], [child])
        else:
            for i, child in enumerate(result):
                _inherit(child, batch[0], f"{batch[0].task_id}.{i}")
            if observer is not None:
                observer.derived(self, batch, result)
        return result

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.index}:{self.name!r} {self.resources.describe()} " \
               f"batch_size={self.batch_size}>"

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
* failures: ``max_retries`` retries, then either :class:`StageFailedError` naming
  the stage and task with the original exception chained (default), or, with
  ``ignore_failures``, a :class:`FailedTask` record that flows through the rest of
  the pipeline untouched and is reported on the result,
* ``setup_on_node`` exactly once per node per stage per run (a file lock on the
  node, so it holds across worker processes), called by ``setup``,
* ``teardown`` once per worker that ran ``setup``.
"""

from __future__ import annotations

import os
import re
import socket
import tempfile
import time
from collections.abc import Callable
from typing import Any

import attrs

from curator_exec_core.checkpoint import merge_lineage, split_lineage
from curator_exec_core.errors import StageFailedError
from curator_exec_core.stages import NodeInfo, ProcessingStage, Resources, WorkerMetadata, has_lifecycle
from curator_exec_core.tasks import FailedTask, StagePerf, Task

__all__ = ["FailurePolicy", "ManagedStage", "run_dir"]

try:  # POSIX file locks make setup_on_node once-per-node across processes
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


@attrs.frozen
class FailurePolicy:
    ignore_failures: bool = False
    max_retries: int = 0


def run_dir(run_id: str) -> str:
    """The per-run scratch folder on this node (holds the setup_on_node locks)."""
    return os.path.join(tempfile.gettempdir(), f"curator-exec-{os.getuid() if hasattr(os, 'getuid') else 0}", run_id)


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text)[:80]


def _inherit(child: Task, parent: Task, task_id: str) -> None:
    """Give an output its id; a new task also inherits what it left empty
    (stage history, metadata, dataset name) from its parent."""
    child.task_id = task_id
    if child is not parent:
        child.lineage = parent.lineage
        if not child.stage_perf and parent.stage_perf:
            child.stage_perf = list(parent.stage_perf)
        if not child.metadata and parent.metadata:
            child.metadata = dict(parent.metadata)
        if not child.dataset_name:
            child.dataset_name = parent.dataset_name


class ManagedStage(ProcessingStage):
    """A user stage as the core runs it. Backends receive these from ``BaseExecutor.run``.

    ``name``, ``batch_size`` and ``backend_options`` are the user's; ``resources``
    and ``num_workers()`` are the planned values; ``stage`` is the user's stage.
    """

    def __init__(
        self,
        stage: ProcessingStage,
        *,
        index: int = 0,
        plan: Any = None,
        policy: FailurePolicy | None = None,
        run_id: str = "",
    ) -> None:
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
        self.progress: Callable[[ManagedStage, int, int, int], None] | None = None  # driver-side only
        #: (tasks in, outputs, new failure records) of the last process_batch call
        self.last_counts: tuple[int, int, int] = (0, 0, 0)

    #: set by a checkpointed run (``curator_exec_core.checkpoint``): where this stage records the
    #: tasks it drops and, if it ends its part of the pipeline (``journal_end``), its outputs
    journal: Any = None
    journal_end: bool = False

    # -- pickling: the progress callback is the driver's and never travels --
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["progress"] = None
        return state

    #: the barrier kind of this stage ("shuffle", "gang"), or "" for a map stage
    barrier: str = ""

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

    # -- lifecycle ---------------------------------------------------------
    def setup_on_node(self, node_info: NodeInfo | None = None, worker_metadata: Any = None) -> None:
        """Run the user's ``setup_on_node`` unless it already ran on this node in this run."""
        node_id = node_info.node_id if isinstance(node_info, NodeInfo) else socket.gethostname()
        if node_id in self._node_done:
            return
        if fcntl is None:
            self.stage.setup_on_node(NodeInfo(node_id), worker_metadata)
            self._node_done.add(node_id)
            return
        folder = run_dir(self.run_id)
        os.makedirs(folder, exist_ok=True)
        base = os.path.join(folder, f"{self.index}-{_safe(self.name)}-{_safe(node_id)}")
        with open(base + ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                if not os.path.exists(base + ".done"):
                    self.stage.setup_on_node(NodeInfo(node_id), worker_metadata)
                    with open(base + ".done", "w"):
                        pass
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
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

    # -- work --------------------------------------------------------------
    def process(self, task: Task) -> list[Task]:  # type: ignore[override]
        """Process one task; always returns a list (possibly empty)."""
        return self.process_batch([task])

    def process_batch(self, tasks: list[Task]) -> list[Task]:
        """Process any number of tasks in ``batch_size`` chunks. FailedTasks pass through."""
        out: list[Task] = []
        pending: list[Task] = []
        size = self.batch_size
        passed = new_failed = 0
        for task in tasks:
            if isinstance(task, FailedTask):
                out.append(task)
                passed += 1
                continue
            pending.append(task)
            if len(pending) >= size:
                new_failed += self._run_into(pending, out)
                pending = []
        if pending:
            new_failed += self._run_into(pending, out)
        self.last_counts = counts = (len(tasks) - passed, len(out) - passed - new_failed, new_failed)
        journal = self.journal
        if journal is not None and (self.journal_end or journal.holds_records):
            journal.after_call(out if self.journal_end else None)
        if self.progress is not None:
            self.progress(self, *counts)
        return out

    def _run_into(self, batch: list[Task], out: list[Task]) -> int:
        """Run ``batch``, append its outputs to ``out``; returns how many failure records it made."""
        result = self._run_batch(batch)
        out.extend(result)
        return sum(1 for t in result if isinstance(t, FailedTask)) if self.policy.ignore_failures else 0

    def _fail(self, task: Task, exc: BaseException, attempts: int, what: str = "") -> FailedTask:
        """Retries are spent: abort with :class:`StageFailedError`, or (``ignore_failures``) the
        failure record. ``what`` prefixes the error (``"keys()"``: which call of the stage failed)."""
        failed = FailedTask.from_exception(task, self.name, exc, attempts)
        if what:
            failed.error = f"{what}: {failed.error}"
        if not self.policy.ignore_failures:
            raise StageFailedError(self.name, task.task_id, failed.error, attempts, failed.traceback) from exc
        return failed

    def _share(self, outputs: list[Task], inputs: list[Task]) -> None:
        """Checkpointed runs: ``outputs`` made from ``inputs`` (not one to one) share their lineage;
        no outputs means the inputs were dropped."""
        if not outputs:
            for task in inputs:
                self.journal.dropped(self.index, task)
            return
        lineage = split_lineage(inputs[0], len(outputs)) if len(inputs) == 1 \
            else merge_lineage(inputs, len(outputs))
        for child in outputs:
            child.lineage = lineage

    def _check(self, result: Any) -> None:
        if not isinstance(result, Task):
            raise TypeError(
                f"stage {self.name!r} returned {type(result).__name__}; process() must return a Task, "
                "a list of Tasks, or None"
            )

    def _run_batch(self, batch: list[Task]) -> list[Task]:
        start = time.perf_counter()
        out: list[Task] = []
        if not self._custom_batch:
            process = self.stage.process
            for task in batch:
                attempts = 0
                while True:
                    attempts += 1
                    try:
                        result = process(task)
                        if result is None:
                            if self.journal is not None:
                                self.journal.dropped(self.index, task)
                            break
                        if isinstance(result, list):
                            for i, child in enumerate(result):
                                self._check(child)
                                _inherit(child, task, f"{task.task_id}.{i}")
                            if self.journal is not None:  # new ids: the lineage says whose they are
                                self._share(result, [task])
                            out.extend(result)
                        else:
                            self._check(result)
                            _inherit(result, task, task.task_id)
                            out.append(result)
                        break
                    except Exception as exc:
                        if attempts <= self.policy.max_retries:
                            continue
                        out.append(self._fail(task, exc, attempts))
                        break
        else:
            attempts = 0
            while True:
                attempts += 1
                try:
                    result = self.stage.process_batch(list(batch))
                    if result is None:
                        result = []
                    for child in result:
                        self._check(child)
                    if len(result) == len(batch):
                        for child, parent in zip(result, batch, strict=True):
                            _inherit(child, parent, parent.task_id)
                    else:
                        for i, child in enumerate(result):
                            _inherit(child, batch[0], f"{batch[0].task_id}.{i}")
                        if self.journal is not None:
                            self._share(result, batch)
                    out.extend(result)
                    break
                except Exception as exc:
                    if attempts <= self.policy.max_retries:
                        continue
                    if not self.policy.ignore_failures:
                        self._fail(batch[0], exc, attempts)
                    out.extend(FailedTask.from_exception(t, self.name, exc, attempts) for t in batch)
                    break
        if out:
            perf = StagePerf(self.name, time.perf_counter() - start, len(batch), self.worker_id)
            for task in out:
                if not isinstance(task, FailedTask):
                    task.stage_perf.append(perf)
        return out

    def __repr__(self) -> str:
        return f"<ManagedStage {self.index}:{self.name!r} {self.resources.describe()} batch_size={self.batch_size}>"

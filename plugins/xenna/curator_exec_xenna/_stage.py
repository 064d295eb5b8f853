"""The Xenna side: the stage adapter that runs inside Xenna's ``StageWorker`` actors.

Imported only when a run starts (it imports ``cosmos_xenna`` and ``ray``).

Data model: one Xenna item is a :class:`Chunk` of curator tasks, so Xenna's
per-item cost (a ``ray.put``, a scheduling round, about 5 ms here) is paid per
chunk, not per task. Each managed stage becomes one :class:`CuratorStage`
with ``stage_batch_size = 1`` (one chunk per call); the core's
:class:`~curator_exec_core.runner.ManagedStage` re-batches the chunk's tasks to
the user's ``batch_size``, assigns ids, retries, and turns failures into
:class:`~curator_exec_core.tasks.FailedTask` records (``ignore_failures``) or
raises :class:`~curator_exec_core.errors.StageFailedError` (abort), so Xenna
never has to drop anything.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import ray
from cosmos_xenna.pipelines import v1 as xenna

from curator_exec_core.runner import ManagedStage
from curator_exec_core.stages import WorkerMetadata
from curator_exec_core.tasks import Task

__all__ = ["Chunk", "CuratorStage", "RunCoordinator", "teardown_in_worker", "COORDINATOR_NAMESPACE"]

COORDINATOR_NAMESPACE = "curator_exec_xenna"

# Adapters that ran setup in this process (inside a StageWorker actor), for teardown on request.
_LIVE: list[CuratorStage] = []
_LIVE_LOCK = threading.Lock()
_CLOSING: dict[str, bool] = {}  # run ids whose workers in this process are being stopped


class Chunk:
    """A list of tasks travelling as one Xenna item. Short repr: Xenna logs its spec."""

    __slots__ = ("tasks",)

    def __init__(self, tasks: list[Task]) -> None:
        self.tasks = tasks

    def __len__(self) -> int:
        return len(self.tasks)

    def __getstate__(self) -> list[Task]:
        return self.tasks

    def __setstate__(self, state: list[Task]) -> None:
        self.tasks = state

    def __repr__(self) -> str:
        return f"<Chunk of {len(self.tasks)} tasks>"


def split(tasks: list[Task], size: int) -> list[Chunk]:
    """``tasks`` as chunks of at most ``size`` (no empty chunk)."""
    size = max(1, size)
    return [Chunk(tasks[i:i + size]) for i in range(0, len(tasks), size)]


class RunCoordinator:
    """A small actor (``num_cpus=0``), one per driver process, shared by its runs: per run, the
    per-stage task counts for the driver's progress and the workers that registered before
    their setup (so that the driver can tear them down)."""

    def __init__(self) -> None:
        self.runs: dict[str, dict[str, Any]] = {}
        self.finished: set[str] = set()  # closed runs: late workers are refused

    def ping(self) -> bool:
        return True

    def _run(self, run_id: str, num_stages: int = 0) -> dict[str, Any] | None:
        if run_id in self.finished:
            return None
        run = self.runs.setdefault(run_id, {"in": [], "out": [], "workers": []})
        while len(run["in"]) < num_stages:
            run["in"].append(0)
            run["out"].append(0)
        return run

    def open(self, run_id: str, num_stages: int) -> None:
        self._run(run_id, num_stages)

    def add(self, run_id: str, index: int, tasks_in: int, tasks_out: int) -> None:
        run = self._run(run_id, index + 1)
        if run is not None:
            run["in"][index] += tasks_in
            run["out"][index] += tasks_out

    def register(self, run_id: str, index: int, worker_id: str, node_id: str, pid: int, handle: list[Any]) -> bool:
        """A worker asks before its setup; once the run is closed the answer is no."""
        run = self._run(run_id, index + 1)
        if run is None:
            return False
        run["workers"].append((index, worker_id, node_id, pid, handle))
        return True

    def close(self, run_id: str) -> list[tuple[int, str, str, int, list[Any]]]:
        """End of run: no more registrations; returns every worker that registered."""
        run = self._run(run_id)
        self.finished.add(run_id)
        return list(run["workers"]) if run else []

    def counts(self, run_id: str) -> tuple[list[int], list[int]]:
        run = self.runs.get(run_id)
        return (list(run["in"]), list(run["out"])) if run else ([], [])

    def forget(self, run_id: str) -> None:
        self.finished.add(run_id)
        self.runs.pop(run_id, None)


class CuratorStage(xenna.Stage):
    """A managed stage as a Xenna stage (pickled to every ``StageWorker``)."""

    def __init__(self, managed: ManagedStage, cpus: float, gpus: float, chunk_size: int, coordinator: str) -> None:
        self.managed = managed
        self.cpus = float(cpus)
        self.gpus = float(gpus)
        self.chunk_size = max(1, int(chunk_size))
        self.coordinator = coordinator  # name of the driver's RunCoordinator actor
        self._coord: Any = None
        self._lock: threading.Lock | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_coord"] = None
        state["_lock"] = None
        return state

    def __repr__(self) -> str:
        return f"<CuratorStage {self.managed.index}:{self.managed.name!r}>"

    @property
    def required_resources(self) -> xenna.Resources:
        gpus: float | int = int(self.gpus) if self.gpus >= 1 else self.gpus
        return xenna.Resources(cpus=self.cpus, gpus=gpus)

    @property
    def stage_batch_size(self) -> int:
        return 1  # one chunk per call; the chunk holds many tasks

    def _coordinator(self) -> Any:
        if self._coord is None:
            self._coord = ray.get_actor(self.coordinator, namespace=COORDINATOR_NAMESPACE)
        return self._coord

    def setup_on_node(self, node_info: xenna.NodeInfo, worker_metadata: xenna.WorkerMetadata) -> None:
        # ManagedStage.setup runs the user's setup_on_node once per node itself (file lock per node).
        return None

    def setup(self, worker_metadata: xenna.WorkerMetadata) -> None:
        ctx = ray.get_runtime_context()
        node_id = ctx.get_node_id()
        worker_id = str(getattr(worker_metadata, "worker_id", "") or f"{node_id[:8]}:{os.getpid()}")
        try:
            handle = ctx.current_actor
        except Exception:  # not in an actor (should not happen)
            handle = None
        # Register before the user's setup, so that the driver can always tear this worker down;
        # a worker that starts after the run ended (coordinator closed or gone) does not set up.
        try:
            accepted = ray.get(self._coordinator().register.remote(
                self.managed.run_id, self.managed.index, worker_id, node_id, os.getpid(), [handle]))  # list: pass the handle as a value
        except Exception:  # the coordinator is gone: the run is over
            accepted = False
        # The lock is held through setup, so a teardown request (which may arrive while
        # Xenna is still setting the worker up, right before it kills it) waits for it.
        self._lock = threading.Lock()
        with self._lock:
            with _LIVE_LOCK:
                if not accepted or _CLOSING.get(self.managed.run_id):
                    _CLOSING[self.managed.run_id] = True
                    return  # this worker is being stopped before it started: no setup, no teardown
                _LIVE.append(self)
            self.managed.setup(WorkerMetadata(worker_id=worker_id, node_id=node_id,
                                              allocation=getattr(worker_metadata, "allocation", None)))

    def process_data(self, in_data: list[Chunk]) -> list[Chunk]:
        if not self.managed.is_set_up:
            raise RuntimeError(f"stage {self.managed.name!r}: worker was not set up (its run had ended)")
        tasks: list[Task] = []
        for chunk in in_data:
            tasks.extend(chunk.tasks)
        lock = self._lock or threading.Lock()
        with lock:
            out = self.managed.process_batch(tasks)
        try:
            self._coordinator().add.remote(self.managed.run_id, self.managed.index, len(tasks), len(out))
        except Exception:  # the run is over (coordinator gone): counts no longer matter
            pass
        return split(out, self.chunk_size)

    def teardown(self) -> None:
        """The user's teardown, once per worker (idempotent), never during a ``process_data``."""
        lock = self._lock
        held = lock.acquire(timeout=120) if lock is not None else False
        try:
            self.managed.teardown()
        finally:
            if held and lock is not None:
                lock.release()
            with _LIVE_LOCK:
                if self in _LIVE:
                    _LIVE.remove(self)

    # Xenna >= 0.5 calls destroy() before it kills a worker.
    def destroy(self) -> None:
        self.teardown()


def teardown_in_worker(_actor_self: Any = None, run_id: str | None = None) -> int:
    """Run inside a ``StageWorker`` (via ``__ray_call__``): tear down this process's adapters."""
    with _LIVE_LOCK:
        if run_id is not None:
            _CLOSING[run_id] = True
        live = [s for s in _LIVE if run_id is None or s.managed.run_id == run_id]
    for stage in live:
        stage.teardown()
    return len(live)

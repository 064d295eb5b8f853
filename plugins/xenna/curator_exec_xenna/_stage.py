"""The Xenna side: the stage adapter that runs inside Xenna's ``StageWorker`` actors.

One Xenna item is a :class:`Chunk` of tasks (Xenna's per-item cost is paid per chunk); the core's
``ManagedStage`` re-batches it to the user's ``batch_size`` and owns ids, retries and failures, so
Xenna never drops anything. Imported only when a run starts (it imports ``cosmos_xenna`` and ``ray``).
"""

from __future__ import annotations

import os
import threading
from typing import Any

import ray
from cosmos_xenna.pipelines import v1 as xenna

from curator_exec_core.runner import ManagedStage
from curator_exec_core.stages import WorkerMetadata
from curator_exec_ray import TaskChunk, WorkerLink, chunks, register, unregister
from curator_exec_ray import _compat as ray_compat

__all__ = ["Chunk", "CuratorStage", "chunks", "stage_adapter"]

Chunk = TaskChunk  # one Xenna item: a chunk of tasks (or of tasks left in the object store)


class CuratorStage(xenna.Stage):
    """A managed stage as a Xenna stage (pickled to every ``StageWorker``)."""

    def __init__(self, managed: ManagedStage, cpus: float, gpus: float, chunk_size: int, coordinator: str,
                 segment: int | str = 0, sink: bool = False) -> None:
        self.managed = managed
        self.cpus = float(cpus)
        self.gpus = float(gpus)
        self.chunk_size = max(1, int(chunk_size))
        self.sink = sink  # the last stage of a part whose outputs stay in the object store
        # to the driver's RunCoordinator, for this execute call (one segment, or one window of the source)
        self.link = WorkerLink(coordinator, f"{managed.run_id}:{segment}", managed.index)
        self._lock: threading.Lock | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_lock": None}

    def __reduce__(self) -> tuple[Any, ...]:
        # an instance of a class named after the user's stage (:func:`stage_adapter`) is rebuilt from
        # its name, so plain pickle and deepcopy work as well as cloudpickle
        return _rebuild, (type(self).__name__, self.__getstate__())

    def __repr__(self) -> str:
        return f"<CuratorStage {self.managed.index}:{self.managed.name!r}>"

    @property
    def run_id(self) -> str:
        return self.managed.run_id

    @property
    def index(self) -> int:
        return self.managed.index

    @property
    def required_resources(self) -> xenna.Resources:
        return xenna.Resources(cpus=self.cpus, gpus=int(self.gpus) if self.gpus >= 1 else self.gpus)

    @property
    def stage_batch_size(self) -> int:
        return 1  # one chunk per call; the chunk holds many tasks

    def setup_on_node(self, node_info: xenna.NodeInfo, worker_metadata: xenna.WorkerMetadata) -> None:
        return None  # ManagedStage.setup runs the user's setup_on_node once per node itself

    def setup(self, worker_metadata: xenna.WorkerMetadata) -> None:
        # Xenna's StageWorker is an async actor: Ray would warn about the ray.get in process_data
        ray_compat.quiet_blocking_get_warning()
        ctx = ray.get_runtime_context()
        node_id = ctx.get_node_id()
        worker_id = str(getattr(worker_metadata, "worker_id", "") or f"{node_id[:8]}:{os.getpid()}")
        # Register before the user's setup, so that the driver can always tear this worker down;
        # a worker that starts after the run ended (coordinator closed or gone) does not set up.
        accepted = self.link.register()
        # The lock is held through setup, so a teardown request (which may arrive while Xenna is
        # still setting the worker up, right before it kills it) waits for it.
        self._lock = threading.Lock()
        with self._lock:
            if accepted and register(self):
                self.managed.setup(WorkerMetadata(worker_id=worker_id, node_id=node_id,
                                                  allocation=getattr(worker_metadata, "allocation", None)))

    def process_data(self, in_data: list[Chunk]) -> list[Chunk]:
        if not self.managed.is_set_up:
            raise RuntimeError(f"stage {self.managed.name!r}: worker was not set up (its run had ended)")
        tasks = [t for chunk in in_data for t in chunk.resolve()]
        with self._lock or threading.Lock():
            out, counts = self.managed.process_counted(tasks)
        self.link.count(counts)
        if self.sink:  # owned by the driver's coordinator actor, so it outlives this worker
            return [TaskChunk(ref=self.link.keep(out), n=len(out))] if out else []
        return chunks(out, self.chunk_size)

    def teardown(self) -> None:
        """The user's teardown, once per worker (idempotent), never during a ``process_data``."""
        lock = self._lock
        held = lock.acquire(timeout=120) if lock is not None else False
        try:
            self.managed.teardown()
        finally:
            if held and lock is not None:
                lock.release()
            unregister(self)

    def destroy(self) -> None:  # Xenna >= 0.5 calls it before it kills a worker
        self.teardown()


_NAMED: dict[str, type[CuratorStage]] = {}


def _named_class(name: str) -> type[CuratorStage]:
    """A subclass of :class:`CuratorStage` called ``name``: Xenna names a stage, in its logs, tables and
    actor names, after the class of its ``Stage`` ("Stage 00 - <class name>")."""
    if name == CuratorStage.__name__:
        return CuratorStage
    cls = _NAMED.get(name)
    if cls is None:
        cls = _NAMED[name] = type(name, (CuratorStage,), {"__module__": __name__, "__qualname__": name,
                                                         "__doc__": CuratorStage.__doc__})
    return cls


def _rebuild(name: str, state: dict[str, Any]) -> CuratorStage:
    obj = _named_class(name).__new__(_named_class(name))
    obj.__dict__.update(state)
    return obj


def stage_adapter(managed: ManagedStage, **kwargs: Any) -> CuratorStage:
    """The Xenna stage of ``managed``, its class named after the user's stage."""
    return _named_class(str(managed.name) or CuratorStage.__name__)(managed, **kwargs)

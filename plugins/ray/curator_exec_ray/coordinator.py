"""For engines that create the workers themselves (Xenna, a third party's engine on Ray): a small
named actor per driver process through which those workers register (so the driver can tear them
down) and report their per-stage counts (so the driver's progress bars move).

Driver: ``coord = Coordinator.for_this_process()``; hand ``coord.name`` to the workers;
:class:`ProgressPoller` feeds the run's stats (:class:`~curator_exec_ray.context.RayRun`); ``coord.close(run_id)`` returns the handles
of the workers that registered. Worker: ``WorkerLink(name, run_id, index)``; its ``keep(value)``
puts a value in the object store that outlives the worker (owned by the coordinator).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from curator_exec_ray.context import RayRun

__all__ = ["RunCoordinator", "Coordinator", "WorkerLink", "ProgressPoller", "NAMESPACE"]

NAMESPACE = "curator_exec"
logger = logging.getLogger("curator_exec.ray")


class RunCoordinator:
    """The actor (``num_cpus=0``): per run, the per-stage (in, out, failed) counts and the workers' handles."""

    def __init__(self) -> None:
        self.runs: dict[str, dict[str, Any]] = {}
        self.finished: set[str] = set()  # closed runs: late workers are refused

    def ping(self) -> bool:
        return True

    def _run(self, run_id: str, num_stages: int = 0) -> dict[str, Any] | None:
        if run_id in self.finished:
            return None
        run = self.runs.setdefault(run_id, {"counts": [], "perf": [], "workers": []})
        while len(run["counts"]) < num_stages:
            run["counts"].append([0, 0, 0])
            run["perf"].append(None)
        return run

    def add(self, run_id: str, index: int, counts: tuple[Any, ...]) -> None:
        """A worker's call of stage ``index``: its counts, and its figures (a ``CallPerf``) if any."""
        run = self._run(run_id, index + 1)
        if run is not None:
            total = run["counts"][index]
            total[0] += counts[0]
            total[1] += counts[1]
            total[2] += counts[2]
            if len(counts) > 3 and counts[3] is not None:
                from curator_exec_core.stats import StageStats

                if run["perf"][index] is None:
                    run["perf"][index] = StageStats()
                run["perf"][index].fold(counts[3])

    def register(self, run_id: str, index: int, handle: list[Any]) -> bool:
        """A worker asks before its setup; once the run is closed the answer is no."""
        run = self._run(run_id, index + 1)
        if run is not None:
            run["workers"].append(handle[0])
        return run is not None

    def close(self, run_id: str) -> list[Any]:
        """End of run: no more registrations; returns the handles of every worker that registered."""
        run = self._run(run_id)
        self.finished.add(run_id)
        return list(run["workers"]) if run else []

    def keep(self, value: Any) -> list[Any]:
        """Put ``value`` in the object store, owned by this actor (it outlives the worker that made it)."""
        import ray

        return [ray.put(value)]  # in a list, so that the caller gets the ref, not the value

    def counts(self, run_id: str) -> list[tuple[list[int], Any]]:
        """Per stage: the counts so far, and the figures (a ``StageStats``) since the last call."""
        run = self.runs.get(run_id)
        if not run:
            return []
        perf, run["perf"] = run["perf"], [None] * len(run["perf"])
        return [(list(c), p) for c, p in zip(run["counts"], perf, strict=True)]

    def forget(self, run_id: str) -> None:
        self.finished.add(run_id)
        self.runs.pop(run_id, None)


_COORDINATORS: dict[tuple[str, int], Coordinator] = {}


class Coordinator:
    """The driver's handle on this process's :class:`RunCoordinator` on the current cluster."""

    def __init__(self, handle: Any, name: str) -> None:
        self.handle = handle
        self.name = name

    @classmethod
    def for_this_process(cls) -> Coordinator:
        """Created once per driver process and cluster, reused by later runs (checked alive)."""
        import ray

        key = (ray.get_runtime_context().gcs_address, os.getpid())
        cached = _COORDINATORS.get(key)
        if cached is not None:
            try:
                ray.get(cached.handle.ping.remote(), timeout=30)
                return cached
            except Exception:
                _COORDINATORS.pop(key, None)
        name = f"coordinator-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        handle = ray.remote(num_cpus=0)(RunCoordinator).options(name=name, namespace=NAMESPACE).remote()
        _COORDINATORS[key] = coordinator = cls(handle, name)
        return coordinator

    def close(self, run_id: str, timeout: float) -> list[Any]:
        """End of ``run_id``: refuse late workers; the handles of those that registered ([] if lost)."""
        import ray

        try:
            return [h for h in ray.get(self.handle.close.remote(run_id), timeout=timeout) if h is not None]
        except Exception as exc:  # pragma: no cover - the coordinator is gone
            logger.warning("could not list the run's workers: %s", exc)
            return []

    def forget(self, run_id: str) -> None:
        try:
            self.handle.forget.remote(run_id)
        except Exception:  # the cluster is gone
            pass


class WorkerLink:
    """A worker's side: register before setup, report counts after every batch (fire and forget)."""

    def __init__(self, name: str, run_id: str, index: int) -> None:
        self.name, self.run_id, self.index = name, run_id, index
        self._handle: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_handle": None}

    def _actor(self) -> Any:
        import ray

        if self._handle is None:
            self._handle = ray.get_actor(self.name, namespace=NAMESPACE)
        return self._handle

    def register(self) -> bool:
        """Whether the run still accepts this worker (False: the run is over, do not set up)."""
        import ray

        try:  # the handle goes in a list, so that it travels as a value
            return bool(ray.get(self._actor().register.remote(self.run_id, self.index,
                                                               [ray.get_runtime_context().current_actor])))
        except Exception:  # the coordinator is gone: the run is over
            return False

    def keep(self, value: Any) -> Any:
        """An object ref of ``value`` that outlives this worker (an engine may kill it when its run ends)."""
        import ray

        return ray.get(self._actor().keep.remote(value))[0]

    def count(self, counts: tuple[Any, ...]) -> None:
        try:
            self._actor().add.remote(self.run_id, self.index, counts)
        except Exception:  # the run is over (coordinator gone): counts no longer matter
            pass


class ProgressPoller:
    """Feeds the run's stats from the coordinator's counts: every ``progress_interval`` (0.5-2 s) while
    progress is shown, and once more at the end (so the counts are exact either way)."""

    def __init__(self, ray_run: RayRun, coordinator: Coordinator, token: str, indices: list[int]) -> None:
        self.ray_run = ray_run
        self.coordinator = coordinator
        self.token = token
        self.seen = {i: [0, 0, 0] for i in indices}  # stage index -> counts reported so far
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.interval = min(max(ray_run.progress_interval, 0.5), 2.0)

    def __enter__(self) -> ProgressPoller:
        if self.ray_run.show_progress:
            self._thread = threading.Thread(target=self._loop, name="curator-exec-progress", daemon=True)
            self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.poll()
            except Exception:  # the run aborted itself (a failure budget): the driver raises it at the end
                return

    def poll(self, timeout: float = 10.0) -> None:
        import ray

        try:
            counts = ray.get(self.coordinator.handle.counts.remote(self.token), timeout=timeout)
        except Exception:
            return
        for i, (now, perf) in enumerate(counts):
            if i not in self.seen:
                continue
            delta = [a - b for a, b in zip(now, self.seen[i], strict=True)]
            if any(delta) or perf is not None:
                self.seen[i] = now
                self.ray_run.report(i, (*delta, perf))

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=15)
        time.sleep(0.05)  # the workers' last counts are fire-and-forget calls: give them a moment to land
        self.poll(timeout=30.0)

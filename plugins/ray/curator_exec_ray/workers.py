"""Stage workers: the in-worker registry of live stages, and the driver's "teardown, then kill".

Inside a worker process (an actor of ours, of Ray Data or of Xenna), whatever ran a stage's
``setup`` calls :func:`register`; :func:`teardown_live` (called through the actor, or at exit) runs
``teardown`` once on every live stage of a run. On the driver, :func:`stop_workers` asks every
actor to do that, waits at most ``timeout`` seconds, then kills the actors.
"""

from __future__ import annotations

import atexit
import functools
import logging
import os
import threading
import traceback
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from curator_exec_core.runner import ManagedStage
from curator_exec_core.stages import WorkerMetadata
from curator_exec_ray import _compat as ray_compat

__all__ = ["LiveStage", "StageActor", "stage_in_process", "register", "unregister", "closing", "teardown_live",
           "teardown_workers", "stop_workers", "kill", "remote", "start_timeout", "start_timeout_error", "warm_up"]

logger = logging.getLogger("curator_exec.ray")


class LiveStage(Protocol):
    """What the registry holds: a set-up stage of a run (a ``ManagedStage``, or an engine adapter)."""

    run_id: str
    index: int  # the stage's position in the pipeline

    def teardown(self) -> None: ...


_LIVE: list[LiveStage] = []
_LOCK = threading.Lock()
#: (run id, stage index) whose workers in this process are being stopped; index None: the whole run
_CLOSING: set[tuple[str, int | None]] = set()
_atexit = False


def register(stage: LiveStage) -> bool:
    """Record a stage about to be set up in this process; False if it is already being stopped here."""
    global _atexit
    with _LOCK:
        if _closed(stage.run_id, stage.index):
            return False
        _LIVE.append(stage)
        if not _atexit:  # last resort: a worker that exits without being asked still tears down
            _atexit = True
            atexit.register(teardown_live)
    return True


def unregister(stage: LiveStage) -> None:
    with _LOCK:
        if stage in _LIVE:
            _LIVE.remove(stage)


def _closed(run_id: str, index: int) -> bool:
    return (run_id, None) in _CLOSING or (run_id, index) in _CLOSING


def closing(run_id: str, index: int) -> bool:
    """Whether the driver asked this process to stop stage ``index`` of ``run_id``."""
    with _LOCK:
        return _closed(run_id, index)


def teardown_live(_actor: Any = None, run_id: str | None = None, indices: Sequence[int] | None = None) -> list[str]:
    """In a worker: ``teardown`` once on every live stage of ``run_id`` (all runs if None), or only
    on its stages at ``indices`` (one segment of a pipeline); later registrations of those are
    refused. Returns the failures as text."""
    with _LOCK:
        if run_id is not None:
            _CLOSING.update([(run_id, None)] if indices is None else [(run_id, i) for i in indices])
        live = [s for s in _LIVE if run_id is None or (s.run_id == run_id and (indices is None or s.index in indices))]
    problems = []
    for stage in live:
        try:
            stage.teardown()
        except Exception:
            problems.append(f"teardown of stage {getattr(stage, 'name', stage)!r} failed:\n{traceback.format_exc()}")
        finally:
            unregister(stage)
    return problems


class StageActor:
    """The body of an actor that hosts one managed stage (wrap it with ``ray.remote``): ``setup``
    runs the stage's setup (``setup_on_node`` once per node) with this actor's metadata and
    registers it for teardown; ``run(fn, *args)`` calls ``fn(stage, *args)`` in the actor."""

    def __init__(self) -> None:
        self.stage: ManagedStage | None = None

    def setup(self, stage: ManagedStage, worker_id: str, gang: tuple[int, Any] | None = None) -> dict[str, Any]:
        """``stage.setup``; for a gang rank (``gang``: its rank and rank 0's root), ``setup_rank``."""
        import ray

        ctx = ray.get_runtime_context()
        self.stage = stage
        register(stage)
        if gang is not None:
            stage.setup_rank(gang[0], gang[1], worker_id, ctx.get_node_id(), ctx.get_assigned_resources())
        else:
            stage.setup(WorkerMetadata(worker_id=worker_id, node_id=ctx.get_node_id(),
                                       allocation=ctx.get_assigned_resources()))
        return {"worker_id": worker_id, "node_id": ctx.get_node_id(), "pid": os.getpid()}

    def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        assert self.stage is not None, "run() before setup()"
        return fn(self.stage, *args)


#: stages of the most recent runs in this (pooled, reused) worker process: run id -> {key: stage}
_task_stages: OrderedDict[str, dict[Any, ManagedStage]] = OrderedDict()
#: runs whose stages a worker process keeps (older runs' are dropped, so they do not pin memory)
TASK_STAGE_RUNS = 2


def stage_in_process(run_id: str, key: Any, stage_box: list[Any]) -> ManagedStage:
    """In a Ray task: the stage of ``stage_box`` (its object ref, boxed so that Ray does not fetch it
    for every call), fetched once per worker process and run. For stages without lifecycle
    methods, which any pooled worker process may run."""
    stages = _task_stages.get(run_id)
    if stages is None:
        stages = _task_stages[run_id] = {}
        while len(_task_stages) > TASK_STAGE_RUNS:
            _task_stages.popitem(last=False)
    stage = stages.get(key)
    if stage is None:
        import ray

        stage = ray.get(stage_box[0])
        stage.worker_id = f"{ray.get_runtime_context().get_node_id()[:12]}:{os.getpid()}"
        stages[key] = stage
    return stage


#: seconds a worker of a stage may take to start, for executors without an ``actor_start_timeout`` option
DEFAULT_START_TIMEOUT = 300.0


def start_timeout(options: Any) -> float:
    """The executor's ``actor_start_timeout``, else :data:`DEFAULT_START_TIMEOUT`."""
    return float(getattr(options, "actor_start_timeout", DEFAULT_START_TIMEOUT))


@functools.cache
def remote(obj: Any) -> Any:
    """``ray.remote(obj)`` (a function or an actor class), made once per process: every ``ray.remote``
    call exports the function to the cluster again. Give resources with ``.options(...)``."""
    import ray

    return ray.remote(obj)


def start_timeout_error(stage: ManagedStage, timeout: float, cls: type[Exception] | None = None) -> Exception:
    """The error (``cls``, default ``CuratorExecError``) for a stage whose workers Ray could not start
    within ``timeout`` seconds (the ``actor_start_timeout`` option where the executor has it)."""
    import ray

    from curator_exec_core.errors import CuratorExecError

    return (cls or CuratorExecError)(
        f"stage {stage.name!r}: no actor started within actor_start_timeout={timeout:g}s (each asks Ray for "
        f"{stage.resources.describe()}; Ray has {ray.available_resources()} free). Is the cluster busy, or a node gone?")


_warmed: set[Any] = set()


def _import(*modules: str) -> None:
    import importlib

    for module in modules:
        importlib.import_module(module)


def warm_up(session: Any, *modules: str) -> None:
    """On a Ray this process just started (once per session): let its idle worker processes import
    ``modules`` now (fire and forget, one task per CPU), instead of in the first run's first tasks."""
    import ray

    if session.how != "started" or (session.token, modules) in _warmed:
        return
    _warmed.add((session.token, modules))
    try:
        fn = ray.remote(num_cpus=1, max_retries=0)(_import)
        for _ in range(max(1, int(ray.cluster_resources().get("CPU", 1)))):
            fn.remote(*modules)
    except Exception as exc:  # only a speed-up
        logger.debug("warming the workers failed: %r", exc)


def kill(handles: Sequence[Any]) -> None:
    import ray

    for handle in handles:
        try:
            ray.kill(handle, no_restart=True)
        except Exception:  # already gone
            pass


def teardown_workers(handles: Sequence[Any], run_id: str | None, timeout: float,
                     log: logging.Logger | None = None, indices: Sequence[int] | None = None,
                     ) -> tuple[list[Any], list[str]]:
    """Teardown of ``run_id``'s stages (all runs' if None) in every actor of ``handles``, waiting at most
    ``timeout`` seconds. Returns (the handles whose teardown succeeded, the problems seen, also
    logged as errors on ``log`` if given)."""
    import ray

    calls = {}
    for handle in handles:
        try:
            calls[ray_compat.call_in_actor(handle, teardown_live, run_id, indices)] = handle
        except Exception:  # an unusable handle: nothing to tear down
            continue
    problems: list[str] = []
    ok: list[Any] = []
    if calls:
        done, pending = ray.wait(list(calls), num_returns=len(calls), timeout=timeout)
        for ref in done:
            try:
                failed = ray.get(ref)
            except ray.exceptions.RayActorError:
                continue  # died (killed, or its setup failed): nothing left to tear down
            except Exception as exc:
                problems.append(f"teardown call failed: {exc!r}")
                continue
            problems += failed
            if not failed:
                ok.append(calls[ref])
        if pending:
            problems.append(f"{len(pending)} worker(s) did not finish teardown within teardown_timeout="
                            f"{timeout:g}s; killed")
    for problem in problems if log is not None else ():
        log.error("%s", problem)
    return ok, problems


def stop_workers(handles: Sequence[Any], run_id: str | None, timeout: float, *, spare: bool = False,
                 log: logging.Logger | None = None, indices: Sequence[int] | None = None,
                 ) -> tuple[list[Any], list[str]]:
    """:func:`teardown_workers`, then kill the actors. With ``spare``, those whose teardown succeeded
    are left alive (to be reused) and returned. Returns (spared handles, problems seen)."""
    ok, problems = teardown_workers(handles, run_id, timeout, log, indices)
    spared = ok if spare else []
    kill([h for h in handles if not any(h is s for s in spared)])
    return spared, problems

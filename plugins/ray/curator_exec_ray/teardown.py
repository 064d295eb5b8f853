"""Stage workers' teardown: the in-worker registry of live stages, and the driver's "teardown, then kill".

Inside a worker process (an actor of ours, of Ray Data or of Xenna), whatever ran a stage's
``setup`` calls :func:`register`; :func:`teardown_live` (called through the actor, or at exit) runs
``teardown`` once on every live stage of a run. On the driver, :func:`stop_workers` asks every
actor to do that, waits at most ``timeout`` seconds, then kills the actors.
"""

from __future__ import annotations

import atexit
import logging
import threading
import traceback
from collections.abc import Sequence
from typing import Any, Protocol

from curator_exec_ray import _compat as ray_compat

__all__ = ["LiveStage", "register", "unregister", "closing", "teardown_live", "teardown_workers", "stop_workers",
           "kill"]

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

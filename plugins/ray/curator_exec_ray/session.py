"""Ray session ownership: reuse a running Ray, start one only when none exists, stop only our own.

* Ray already initialised in this process: reuse it, never shut it down.
* ``RAY_ADDRESS`` set, or a cluster started with ``ray start`` here: connect, never shut it down.
* Otherwise start a local Ray and own it; it stays up for the rest of the process and
  :func:`shutdown_if_owned` (or the exit handler) stops it, with every process it started.

A session is tied to one Ray connection (cluster session name + job id), so a session of an
earlier connection is never taken for ours.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import attrs

from curator_exec_ray import _compat as ray_compat
from curator_exec_ray import reaper

__all__ = ["RaySession", "ensure_ray", "current_session", "shutdown_if_owned", "temporary_env", "preserved_env"]

logger = logging.getLogger("curator_exec.ray")

_lock = threading.Lock()
_session: RaySession | None = None


@attrs.frozen
class RaySession:
    """How this process is attached to Ray. ``owned``: we started the cluster."""

    address: str
    owned: bool
    how: str  # "existing" | "connected" | "started"
    #: identifies the Ray connection this session belongs to (cluster session name, job id)
    token: tuple[str, str] = ("", "")


def _connection_token() -> tuple[str, str]:
    import ray

    ctx = ray.get_runtime_context()
    try:
        session_name = ray_compat.session_name()
    except Exception:  # the GCS address still tells clusters apart
        session_name = ctx.gcs_address
    return str(session_name), str(ctx.get_job_id())


def _live_session() -> RaySession | None:
    """``_session`` if it still describes the current Ray connection, else None (and forget it)."""
    global _session
    import ray

    if _session is None or not ray.is_initialized():
        _session = None
        return None
    try:
        token = _connection_token()
    except Exception:
        return _session
    if token != _session.token:
        _session = None
    return _session


def _reachable(address: str, timeout: float = 2.0) -> bool:
    """Whether something listens at ``host:port`` (a stale address file points nowhere)."""
    import socket

    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        return True  # not host:port (e.g. ray://...): let Ray judge
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            return True
    except OSError:
        return False


@contextmanager
def preserved_env(keys: Sequence[str]) -> Iterator[None]:
    """Restore the environment variables ``keys`` (set or unset) as they were, whatever ran inside."""
    saved = {k: os.environ.get(k) for k in keys}
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextmanager
def temporary_env(env: Mapping[str, str] | None) -> Iterator[None]:
    """Set ``env`` for the duration of a block only (e.g. a Ray start, whose children inherit it)."""
    with preserved_env(list(env or ())):
        os.environ.update({k: str(v) for k, v in (env or {}).items()})
        yield


def _existing_address() -> str | None:
    """Address of a cluster we would connect to (RAY_ADDRESS or ``ray start``), else None.

    ``RAY_ADDRESS`` is the user's explicit choice. The ``ray_current_cluster`` file is only a
    hint: it outlives the cluster that wrote it, so an address nothing listens on is ignored.
    """
    env = os.environ.get("RAY_ADDRESS")
    if env:
        return None if env == "local" else env
    try:
        address = ray_compat.bootstrap_address()
    except Exception:  # a malformed file: start our own
        return None
    if address and not _reachable(address):
        logger.info("ignoring stale Ray address %s (ray_current_cluster): nothing listens there", address)
        return None
    return address


def hash_seed_env() -> dict[str, str]:
    """``PYTHONHASHSEED`` for the Ray processes of a cluster we start: ``hash()`` of a ``str`` or
    ``bytes`` is salted per process, so shuffle keys built with it would differ between workers and
    split groups silently. Every worker of the cluster inherits one seed: the driver's if it set one,
    else a random one per cluster."""
    import random

    return {"PYTHONHASHSEED": os.environ.get("PYTHONHASHSEED") or str(random.randrange(1, 2**32 - 1))}


def ensure_ray(runtime_env: Mapping[str, Any] | None = None, *, start_env: Mapping[str, str] | None = None,
               **init_kwargs: Any) -> RaySession:
    """Attach to Ray as described in the module doc and return the session.

    ``start_env``: environment variables the Ray processes we start must see (set only
    around ``ray.init``). ``init_kwargs`` go to ``ray.init`` when we start or connect.
    """
    global _session
    import ray

    ray_compat.check()
    with _lock:
        if ray.is_initialized():
            if _live_session() is None:
                _session = RaySession(address=ray.get_runtime_context().gcs_address, owned=False, how="existing",
                                      token=_connection_token())
            return _session
        _session = None
        _reap_dead_drivers_once()
        explicit = init_kwargs.pop("address", None)
        address = explicit if explicit not in (None, "auto") else _existing_address()
        if explicit == "auto" and not address:
            address = "auto"  # let Ray find (or fail to find) a running cluster, as the caller asked
        if address == "local":
            address = None
        kwargs: dict[str, Any] = {"ignore_reinit_error": True, "log_to_driver": True, **init_kwargs}
        if runtime_env:
            kwargs["runtime_env"] = dict(runtime_env)
        if address:
            for key in ("num_cpus", "num_gpus", "resources", "object_store_memory", "include_dashboard"):
                kwargs.pop(key, None)  # node options: only for a cluster we start
            ray.init(address=address, **kwargs)
            how, owned = "connected", False
        else:
            with temporary_env({**hash_seed_env(), **(start_env or {})}):
                ray.init(address="local", **kwargs)  # a new cluster even if a ray_current_cluster file names one
            how, owned = "started", True
            _register_exit_reaper()
            reaper.record_started_cluster()
        _session = RaySession(address=ray.get_runtime_context().gcs_address, owned=owned, how=how,
                              token=_connection_token())
        logger.info("Ray %s at %s", how, _session.address)
        return _session


def current_session() -> RaySession | None:
    """The session :func:`ensure_ray` set up, if Ray is still initialised."""
    import sys

    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return None
    with _lock:
        return _live_session()


def shutdown_if_owned() -> bool:
    """Shut Ray down if (and only if) we started it, then kill what it left. Returns whether it did."""
    global _session
    import ray

    with _lock:
        session = _live_session()  # a session of an earlier connection is never ours to stop
        if session is None or not session.owned:
            return False
        procs = reaper.owned_processes()
        ray.shutdown()
        _session = None
    reaper.reap(procs)
    reaper.forget_started_cluster()
    return True


_reaped_dead_drivers = False


def _reap_dead_drivers_once() -> None:
    """The first attach of this process: kill what SIGKILLed drivers' clusters left on this machine."""
    global _reaped_dead_drivers
    if not _reaped_dead_drivers:
        _reaped_dead_drivers = True
        reaper.reap_dead_drivers_clusters()


_exit_registered = False


def _register_exit_reaper() -> None:
    """At exit, stop a Ray this process started and kill its stragglers (Ray's own handler leaves
    workers stuck in ``threading._shutdown``, e.g. Xenna 0.3's, alive with parent PID 1).
    Registered after ``ray.init``, so it runs before Ray's own exit handler."""
    global _exit_registered
    if not _exit_registered:
        _exit_registered = True
        atexit.register(shutdown_if_owned)

"""Processes Ray leaves behind, found by PID and killed, never by name alone.

* :func:`owned_processes` / :func:`reap`: every process of a local cluster this driver started
  (raylet, GCS, dashboard, workers), collected before ``ray.shutdown()`` and SIGKILLed if still
  alive afterwards. Workers stuck in ``threading._shutdown`` (Xenna 0.3's non-daemon threads)
  ignore SIGTERM and outlive the raylet with parent PID 1 otherwise.
* :func:`reap_run_actors`: during a session, the worker processes of a run's actors that an
  engine killed or forgot but that did not exit (Xenna 0.2/0.3), on whichever node they live.
* :func:`record_started_cluster` / :func:`reap_dead_drivers_clusters`: a driver that starts a local
  cluster writes down its processes (PID and start time) in a file of this machine's temporary
  folder; when it is SIGKILLed, Ray's ``DashboardAgent`` and ``RuntimeEnvAgent`` outlive it (parent
  PID 1) for a minute or two. The next driver of ours on the machine kills what is left of the
  clusters of drivers that are gone (only processes with the recorded start time: never a recycled PID).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import tempfile
import time
from collections.abc import Collection, Iterable, Mapping
from typing import Any

from curator_exec_ray import _compat as ray_compat

__all__ = ["owned_processes", "reap", "list_job_actors", "reap_run_actors", "record_started_cluster",
           "forget_started_cluster", "reap_dead_drivers_clusters", "records_dir"]

logger = logging.getLogger("curator_exec.ray")


def owned_processes(nodes: list[Any] | None = None) -> list[Any]:
    """The processes (psutil) of the local cluster this driver started (or of ``nodes``, a
    ``Cluster``'s), with all their descendants."""
    import psutil

    found: dict[int, Any] = {}
    try:
        roots = ray_compat.cluster_pids(nodes)
    except Exception as exc:  # pragma: no cover - checked by ray_compat.check()
        logger.debug("cannot list the cluster's processes: %r", exc)
        return []
    for pid in roots:
        try:
            root = psutil.Process(pid)
            for p in [root, *root.children(recursive=True)]:
                found.setdefault(p.pid, p)
        except psutil.Error:
            continue
    found.pop(os.getpid(), None)
    return list(found.values())


def reap(procs: Iterable[Any], grace: float = 3.0) -> list[int]:
    """Give ``procs`` ``grace`` seconds to exit, then SIGKILL those still running. Returns the killed PIDs."""
    import psutil

    procs = list(procs)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_running(p) for p in procs):
        time.sleep(0.05)
    killed = []
    for p in procs:
        if _running(p):  # is_running() also checks the creation time: never a recycled PID
            try:
                p.send_signal(signal.SIGKILL)
                killed.append(p.pid)
            except psutil.Error:
                continue
    if killed:
        logger.info("killed %d Ray process(es) left after shutdown: %s", len(killed), killed)
        psutil.wait_procs([p for p in procs if p.pid in killed], timeout=5)
    return killed


def _running(p: Any) -> bool:
    import psutil

    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def list_job_actors(*, limit: int = 10000, filters: Iterable[tuple[str, str, str]] = (), **kwargs: Any) -> list[Any]:
    """This job's actors from the state API (needs the dashboard), on the cluster we are attached to."""
    import ray
    from ray.util.state import list_actors

    job = ray.get_runtime_context().get_job_id()
    # never rely on auto-discovery: other Ray clusters may run on this host
    return list(list_actors(address=ray.get_runtime_context().gcs_address, limit=limit,
                            filters=[("job_id", "=", job), *filters], raise_on_missing_output=False, **kwargs))


def _kill_on_node(pids: list[int], since: float) -> list[int]:
    """Runs on a node: SIGKILL the listed ``ray::`` processes started after ``since``."""
    import psutil

    procs = []
    for pid in pids:
        try:
            p = psutil.Process(pid)
            if p.create_time() >= since - 5 and " ".join(p.cmdline()).startswith("ray::"):
                procs.append(p)
        except psutil.Error:
            continue
    return reap(procs, grace=0.0) if procs else []


def reap_run_actors(before: Collection[str], since: float, classes: Collection[str], timeout: float,
                    actors: Mapping[str, Any] | None = None) -> int:
    """Kill the processes of this job's actors of ``classes`` created after ``before`` (their ids)
    that are still alive, on every node. Returns how many were killed."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    try:
        found = actors if actors is not None else {a.actor_id: a for a in list_job_actors()}
    except Exception as exc:
        logger.debug("list_actors failed: %s", exc)
        return 0
    by_node: dict[str, list[int]] = {}
    for aid, a in found.items():
        if aid not in before and a.class_name in classes and getattr(a, "pid", None):
            by_node.setdefault(a.node_id, []).append(int(a.pid))
    if not by_node:
        return 0
    kill = ray.remote(num_cpus=0, max_retries=0)(_kill_on_node)
    refs = [kill.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node, soft=False)).remote(
        pids, since) for node, pids in by_node.items()]
    killed = 0
    try:
        for result in ray.get(refs, timeout=timeout):
            killed += len(result)
    except Exception as exc:
        logger.warning("could not reap leftover worker processes: %s", exc)
    return killed


# -- clusters of drivers that died ---------------------------------------------------------------


def records_dir() -> str:
    """Where drivers of this user on this machine write down the local clusters they started."""
    return os.path.join(tempfile.gettempdir(), f"curator_exec-{os.getuid()}", "clusters")


def _record_path(pid: int) -> str:
    return os.path.join(records_dir(), f"driver-{pid}.json")


def record_started_cluster() -> None:
    """Write down this driver and the processes of the local cluster it just started."""
    import psutil

    try:
        me = psutil.Process()
        record = {"driver": [me.pid, me.create_time()],
                  "processes": [[p.pid, p.create_time()] for p in owned_processes() if _running(p)]}
        os.makedirs(records_dir(), exist_ok=True)
        path = _record_path(me.pid)
        with open(path + ".tmp", "w") as f:
            json.dump(record, f)
        os.replace(path + ".tmp", path)
    except (OSError, psutil.Error) as exc:
        logger.debug("cannot record the cluster this driver started: %r", exc)


def forget_started_cluster() -> None:
    """This driver stopped its cluster itself: nothing to reap later."""
    try:
        os.remove(_record_path(os.getpid()))
    except OSError:
        pass


def _alive(pid: int, started: float) -> Any:
    """The process ``pid`` if it runs and started at ``started`` (else None: gone or a recycled PID)."""
    import psutil

    try:
        p = psutil.Process(pid)
        if abs(p.create_time() - started) < 0.5 and _running(p):
            return p
    except psutil.Error:
        pass
    return None


def reap_dead_drivers_clusters() -> list[int]:
    """Kill what is left of the local clusters whose driver (one of ours) is gone; returns the PIDs."""
    try:
        names = sorted(os.listdir(records_dir()))
    except OSError:
        return []
    leftover: list[Any] = []
    for name in names:
        path = os.path.join(records_dir(), name)
        if not (name.startswith("driver-") and name.endswith(".json")):
            continue
        try:
            with open(path) as f:
                record = json.load(f)
            driver_pid, driver_started = record["driver"]
            if _alive(int(driver_pid), float(driver_started)) is not None:
                continue
            leftover += [p for pid, started in record["processes"] if (p := _alive(int(pid), float(started)))]
            os.remove(path)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            logger.debug("ignoring cluster record %s: %r", path, exc)
    if not leftover:
        return []
    killed = reap(leftover, grace=0.0)
    if killed:
        logger.info("killed %d process(es) left by a Ray cluster whose driver died: %s", len(killed), killed)
    return killed

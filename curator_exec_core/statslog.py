"""Statistics that outlive the run: the periodic ``"stats"`` event, ``DIR/stats.json`` of a
checkpointed run, and :class:`StatsLog`, the JSON-lines observer behind ``curator-exec run
--stats-log FILE``.

Every ``progress_interval`` seconds (and once at the end, also after an error) the run sends a
:class:`~curator_exec_core.progress.ProgressEvent` of kind ``"stats"`` whose ``stats`` is a
snapshot: ``{"run_id", "time", "seconds", "finished", "error", "stages": <counts per stage>,
"stats": <figures per stage>}`` (``stages`` and ``stats`` as in ``result.metrics``). With a
checkpoint the same snapshot is written to ``DIR/stats.json`` (atomically); a resumed run merges
the figures of the runs before it (their workers are other workers) into its own.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TextIO

from curator_exec_core.hookspecs import hookimpl
from curator_exec_core.stats import StageStats, stage_metrics_keys

if TYPE_CHECKING:  # pragma: no cover
    from curator_exec_core.progress import ProgressEvent
    from curator_exec_core.stats import RunStats

__all__ = ["STATS_FILE", "StatsTicker", "StatsLog", "read_stats_file", "write_stats_file", "load_earlier"]

logger = logging.getLogger("curator_exec")


#: the statistics file of a checkpoint directory
STATS_FILE = "stats.json"


def snapshot(run_id: str, stats: RunStats, seconds: float, *, finished: bool = False,
             error: BaseException | None = None) -> dict[str, Any]:
    """The figures of a run so far (what the ``"stats"`` event, ``stats.json`` and the log hold)."""
    return {"run_id": run_id, "time": time.time(), "seconds": round(seconds, 6), "finished": finished,
            "error": None if error is None else f"{type(error).__name__}: {error}",
            "stages": stats.metrics(), "stats": stats.perf_metrics()}


def write_stats_file(folder: str, snap: Mapping[str, Any]) -> None:
    """``folder/stats.json``, atomically (a reader never sees half of it)."""
    path = os.path.join(folder, STATS_FILE)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(snap, f, indent=1, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def read_stats_file(folder: str) -> dict[str, Any] | None:
    """``folder/stats.json``, or None if there is none (or it cannot be read)."""
    try:
        with open(os.path.join(folder, STATS_FILE)) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def load_earlier(folder: str, stats: RunStats) -> None:
    """Give ``stats`` the figures an earlier run of this checkpoint left in ``stats.json``."""
    data = read_stats_file(folder)
    if not data:
        return
    figures = data.get("stats") or {}
    for index, key in enumerate(stage_metrics_keys(stats.names)):
        if key in figures:
            try:
                stats.earlier[index] = StageStats.from_dict(figures[key])
            except (KeyError, TypeError, ValueError) as exc:
                logger.warning("ignoring the statistics of stage %r in %s: %s", key, folder, exc)


class StatsTicker:
    """Calls ``tick()`` every ``interval`` seconds on a daemon thread until :meth:`stop`."""

    def __init__(self, interval: float, tick: Callable[[], None]) -> None:
        self.interval = max(interval, 0.05)
        self.tick = tick
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="curator-exec-stats", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.tick()
            except Exception:  # an observer's error must not end the run
                logger.exception("the periodic stats event failed")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


class StatsLog:
    """An observer (register it with the plugin manager) that appends every ``"stats"`` event's
    snapshot to ``path`` as one JSON line: ``curator-exec run --stats-log FILE``."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._file: TextIO | None = None
        self._lock = threading.Lock()

    @hookimpl
    def curator_exec_progress(self, event: ProgressEvent) -> None:
        if event.kind != "stats" or event.stats is None:
            return
        line = json.dumps({"event": "stats", "executor": event.executor.executor_name, **event.stats},
                          sort_keys=True)
        with self._lock:
            if self._file is None:
                self._file = open(self.path, "a")
            self._file.write(line + "\n")
            self._file.flush()

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

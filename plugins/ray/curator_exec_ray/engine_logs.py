"""The engines' own log lines off the console and into a file (``engine_logs="file"``, the default).

Ray, Ray Data and Cosmos-Xenna print a great deal at INFO and WARNING on every run (start banners,
"Progress bars disabled", "The Dataset job will hang unless more CPUs are freed up", Xenna's spec
dump and status tables, their workers' loguru lines). None of it is actionable, and it buries
what is. While diverting, this module sends it to one file per driver process instead:

* driver-side records of the ``ray`` loggers (``ray.data`` included) below ERROR: a filter on
  Ray's console handlers hands them to our file and keeps them off the console;
* worker lines Ray forwards to the driver (``log_to_driver``): lines in Ray's or loguru's log
  format below ERROR go to the file only; everything else (a stage's own prints, errors,
  tracebacks, the raylet's messages such as an out-of-memory kill) is printed as before;
* Xenna's driver-side loguru calls (``curator_exec_xenna._compat`` routes them here during a run).

ERROR and above always reach the console too. The file is ``<Ray session dir>/logs/curator_exec/
driver-<pid>.log`` (records from before Ray is up are buffered until then); its path is logged once
at INFO, is in every run's ``metrics["engine"]["engine_log"]``, and a failing run names it in a
warning. Records also go through the ``curator_exec.engine`` logger (``propagate=False``), so an
application can add a handler of its own there. ``engine_logs="console"`` leaves the engines'
output as they print it.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["ENGINE_LOGGER", "divert", "diverting", "emit", "log_path", "set_mode", "settle"]

#: the logger every diverted record goes through (our file handler is on it)
ENGINE_LOGGER = "curator_exec.engine"
MODES = ("file", "console")

logger = logging.getLogger("curator_exec.ray")

_lock = threading.RLock()
_mode = "file"
_MARK = "_curator_exec_engine"
#: a forwarded worker line in Ray's Python log format, or loguru's (Xenna), below ERROR
_CHATTER = re.compile(
    r"^(?:\x1b\[[0-9;]*m)*\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d[.,]\d+"
    r"(?:\t(?:TRACE|DEBUG|INFO|WARNING) \S+:\d+ -- | \| (?:TRACE|DEBUG|INFO|SUCCESS|WARNING) +\| )")


class _EngineFile(logging.Handler):
    """Writes to ``path`` once it is known; records before that are buffered (bounded)."""

    MAX_BUFFERED = 2000

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self.path: str | None = None
        self._file: logging.FileHandler | None = None
        self._buffer: list[logging.LogRecord] = []

    def open(self, path: str) -> bool:
        """Write to ``path`` from now on (the buffer first); whether it changed."""
        with _lock:
            if path == self.path:
                return False
            os.makedirs(os.path.dirname(path), exist_ok=True)
            new = logging.FileHandler(path, encoding="utf-8", delay=True)
            new.setFormatter(self.formatter)
            if self._file is not None:
                self._file.close()
            self.path, self._file = path, new
            for record in self._buffer:
                new.emit(record)
            self._buffer.clear()
            return True

    def emit(self, record: logging.LogRecord) -> None:
        with _lock:
            if self._file is not None:
                self._file.emit(record)
            elif len(self._buffer) < self.MAX_BUFFERED:
                self._buffer.append(record)


_file = _EngineFile()


def _engine_logger() -> logging.Logger:
    log = logging.getLogger(ENGINE_LOGGER)
    if _file not in log.handlers:
        log.addHandler(_file)
        log.setLevel(logging.INFO)  # the engines' DEBUG and TRACE records stay out (setLevel to get them)
        log.propagate = False  # an application's root handler would print it all again
    return log


class _Divert(logging.Filter):
    """On Ray's console handlers: a record below ERROR goes to our file instead of the console."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _mode != "file":
            return True
        if not getattr(record, _MARK, False):
            setattr(record, _MARK, True)
            _engine_logger().handle(record)
        return record.levelno >= logging.ERROR


_DIVERT = _Divert()


class _WorkerLines:
    """Stands in for Ray's handler of the lines workers forward to the driver."""

    def __init__(self, inner: Callable[[dict], Any]) -> None:
        self.inner = inner

    def __call__(self, data: dict) -> Any:
        lines = data.get("lines") or []
        if _mode != "file" or data.get("pid") in ("raylet", "autoscaler"):
            return self.inner(data)
        who = data.get("actor_name") or data.get("task_name") or ""
        prefix = f"({who} pid={data.get('pid')}, ip={data.get('ip')}) "
        log = _engine_logger()
        for line in lines:
            log.info("%s%s", prefix, line)
        keep = [line for line in lines if not _CHATTER.match(line)]
        if keep:
            return self.inner({**data, "lines": keep})
        return None


def set_mode(mode: str) -> None:
    """``"file"`` (divert the engines' chatter) or ``"console"`` (leave it), for the runs that follow."""
    global _mode
    if mode not in MODES:
        raise ValueError(f"engine_logs must be one of {MODES}, got {mode!r}")
    _mode = mode


def diverting() -> bool:
    return _mode == "file"


def divert(mode: str) -> None:
    """Set ``mode`` and put the filters on the engines' current console handlers (idempotent; call it
    again after importing an engine module that configures its own logging, e.g. ``ray.data``)."""
    import ray  # noqa: F401  (importing Ray sets up its console handler: filter that one)

    set_mode(mode)
    _engine_logger()
    for handler in _console_handlers():
        if _DIVERT not in handler.filters:
            handler.addFilter(_DIVERT)
    _wrap_worker_lines()


def settle() -> str | None:
    """After Ray is up: open the file in this session's log folder (once per session) and wrap the
    worker-lines handler ``ray.init`` installed. Returns the file's path."""
    from curator_exec_ray import _compat as ray_compat

    divert(_mode)
    try:
        folder = ray_compat.logs_dir()
    except Exception:  # a Ray client connection has no local session
        folder = None
    if not folder:
        import tempfile

        folder = os.path.join(tempfile.gettempdir(), f"curator_exec-{os.getuid()}")
    if _file.open(os.path.join(folder, "curator_exec", f"driver-{os.getpid()}.log")) and diverting():
        logger.info("engine logs (Ray, Ray Data, Xenna) go to %s (executor option engine_logs='console' "
                    "prints them instead)", _file.path)
    return _file.path


def log_path() -> str | None:
    """The file diverted engine logs go to (None before Ray is up)."""
    return _file.path


def emit(level: int, message: str, name: str = ENGINE_LOGGER) -> None:
    """One engine record (e.g. a Xenna loguru call) into the file."""
    log = _engine_logger()
    if log.isEnabledFor(level):
        record = log.makeRecord(name, level, "(engine)", 0, message, None, None)
        setattr(record, _MARK, True)
        log.handle(record)


def _console_handlers() -> Iterable[logging.Handler]:
    """Ray's stream handlers on the ``ray`` logger tree (not file handlers)."""
    manager = logging.Logger.manager
    for name, log in list(manager.loggerDict.items()):
        if (name == "ray" or name.startswith("ray.")) and isinstance(log, logging.Logger):
            for handler in log.handlers:
                if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                    yield handler


def _wrap_worker_lines() -> None:
    from curator_exec_ray import _compat as ray_compat

    try:
        ray_compat.wrap_worker_lines_handler(lambda inner: inner if isinstance(inner, _WorkerLines)
                                             else _WorkerLines(inner))
    except Exception as exc:  # pragma: no cover - checked by ray_compat.check()
        logger.debug("cannot route forwarded worker lines: %r", exc)

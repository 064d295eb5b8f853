"""``task_timeout``: a call of a stage that runs too long is stopped and counts as a failure.

One watchdog thread per process watches the calls that have a limit. When a call passes its
deadline, the watchdog raises :class:`~curator_exec_core.errors.TaskTimeoutError` inside the thread
making the call (``PyThreadState_SetAsyncExc``; again every second if the stage swallows it). That
stops any call that runs Python code (a loop, a call that returns to Python now and then); the
runner then treats it like any exception: retried (``max_retries``), then a failure record
(``ignore_failures``) or :class:`~curator_exec_core.errors.StageFailedError`, naming the limit.

A call stuck inside C code never gets back to Python to receive it. In a worker process (a
stage's copy on a Ray worker: ``kill=True``), the watchdog then writes the task ids to the run's
node-local scratch folder and ends the process ``KILL_GRACE`` seconds after the deadline: the
engine replaces the worker, and the runner of the replacement fails those tasks with
:class:`TaskTimeoutError` without calling the stage again (on that node). In the driver process
(the ``local`` executor, a stage run in the driver's threads) the process cannot be ended: the
watchdog logs a warning, and the call counts as timed out when it returns.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from typing import TypeVar

from curator_exec_core.errors import TaskTimeoutError

__all__ = ["call_limited", "killed_tasks", "record_killed", "KILL_GRACE"]

T = TypeVar("T")
logger = logging.getLogger("curator_exec")

#: seconds after the deadline before a worker process whose call does not stop is ended
KILL_GRACE = 5.0
#: seconds between two raises in a call that swallowed the first
REFIRE = 1.0
#: the exit status of a worker process ended by the watchdog
EXIT_STATUS = 75

_SET_ASYNC_EXC = ctypes.pythonapi.PyThreadState_SetAsyncExc


def _raise_in(thread: int, exc: type[BaseException] | None) -> None:
    """Raise ``exc`` in ``thread`` at its next Python instruction (None: cancel a pending raise)."""
    _SET_ASYNC_EXC(ctypes.c_ulong(thread), None if exc is None else ctypes.py_object(exc))


class _Call:
    __slots__ = ("thread", "deadline", "fired", "next_fire", "what", "kill", "on_kill", "warned")

    def __init__(self, thread: int, deadline: float, what: str, kill: bool,
                 on_kill: Callable[[], None] | None) -> None:
        self.thread, self.deadline, self.what, self.kill, self.on_kill = thread, deadline, what, kill, on_kill
        self.fired = False
        self.warned = False
        self.next_fire = deadline


class _Watchdog:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._calls: dict[int, _Call] = {}
        self._next = 0
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()

    def arm(self, seconds: float, what: str, kill: bool, on_kill: Callable[[], None] | None) -> int:
        with self._cond:
            if self._thread is None or self._pid != os.getpid():  # first use, or a forked child
                self._pid = os.getpid()
                self._calls = {}
                self._thread = threading.Thread(target=self._loop, name="curator-exec-watchdog", daemon=True)
                self._thread.start()
            self._next += 1
            self._calls[self._next] = _Call(threading.get_ident(), time.monotonic() + seconds, what, kill, on_kill)
            self._cond.notify()
            return self._next

    def disarm(self, token: int) -> bool:
        """The call is over; whether it passed its deadline. A raise still pending is cancelled."""
        with self._cond:
            call = self._calls.pop(token, None)
        if call is None or not call.fired:
            return False
        _raise_in(call.thread, None)
        return True

    def _loop(self) -> None:
        with self._cond:
            while True:
                now = time.monotonic()
                wake = now + 3600.0
                for call in list(self._calls.values()):
                    late = now >= call.deadline + KILL_GRACE and (call.kill or not call.warned)
                    if now >= call.next_fire or late:
                        self._fire(call, now)
                    wake = min(wake, call.next_fire)
                    if now < call.deadline + KILL_GRACE:  # the kill (a worker) or the warning (the driver)
                        wake = min(wake, call.deadline + KILL_GRACE)
                self._cond.wait(max(0.01, wake - time.monotonic()))

    def _fire(self, call: _Call, now: float) -> None:
        if call.kill and now >= call.deadline + KILL_GRACE:
            logger.error("%s did not stop %.0f s after its task_timeout: ending this worker process (pid %d) so "
                         "that the engine replaces it", call.what, KILL_GRACE, os.getpid())
            try:
                if call.on_kill is not None:
                    call.on_kill()
            finally:
                os._exit(EXIT_STATUS)
        if not call.kill and not call.warned and now >= call.deadline + KILL_GRACE:
            call.warned = True
            logger.warning("%s is still running past its task_timeout; a thread cannot be killed in the driver "
                           "process, so it counts as timed out when it returns", call.what)
        if now < call.next_fire:  # woken for the warning only
            return
        call.fired = True
        call.next_fire = now + REFIRE
        _raise_in(call.thread, TaskTimeoutError)


_WATCHDOG = _Watchdog()


def call_limited(fn: Callable[[], T], seconds: float, what: str, *, kill: bool = False,
                 on_kill: Callable[[], None] | None = None) -> T:
    """``fn()``, stopped with :class:`TaskTimeoutError` once it has run ``seconds``. ``what`` names the
    call in errors (``"stage 'x': process()"``). ``kill``: end this process if the call does not stop
    (a worker process only); ``on_kill`` runs first."""
    token = _WATCHDOG.arm(seconds, what, kill, on_kill)
    try:
        try:
            result = fn()
        finally:
            overran = _WATCHDOG.disarm(token)
    except TaskTimeoutError:
        _WATCHDOG.disarm(token)
        raise TaskTimeoutError(f"{what} ran longer than task_timeout={seconds:g}s and was stopped") from None
    if overran:  # it returned after its deadline (a call stuck in C code in the driver process)
        raise TaskTimeoutError(f"{what} ran longer than task_timeout={seconds:g}s (it finished late and counts "
                               "as timed out)")
    return result


def killed_tasks(path: str) -> set[str]:
    """The task ids a watchdog recorded in ``path`` before ending its worker (none if no file)."""
    try:
        with open(path) as f:
            return {line.rstrip("\n") for line in f if line.strip()}
    except OSError:
        return set()


def record_killed(path: str, task_ids: Iterable[str]) -> None:
    """Append ``task_ids`` to ``path`` (before the watchdog ends its worker)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "a") as f:
        f.write("".join(f"{t}\n" for t in task_ids))
        f.flush()
        os.fsync(f.fileno())

"""Every error curator-exec raises on purpose. All derive from :class:`CuratorExecError`."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Mapping

__all__ = [
    "find_stage_error",
    "CuratorExecError",
    "ConfigError",
    "PlanError",
    "UnknownExecutorError",
    "PluginError",
    "StageFailedError",
    "StageContractError",
    "FailureBudgetExceeded",
    "TaskTimeoutError",
    "EngineCompatibilityError",
    "check_engine",
    "engine_check",
    "EngineCheck",
    "did_you_mean",
]


def did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    """The closest of ``choices`` to ``word``, if any is close."""
    found = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return found[0] if found else None


class CuratorExecError(Exception):
    """Base class of curator-exec's errors."""


class ConfigError(CuratorExecError, ValueError):
    """An executor option is unknown or has the wrong type or value."""


class PlanError(CuratorExecError, ValueError):
    """The pipeline cannot run on the capacity at hand (raised before any engine starts)."""


class UnknownExecutorError(CuratorExecError, LookupError):
    """No installed plugin provides the executor name that was asked for."""


class PluginError(CuratorExecError):
    """A plugin is broken or conflicts with another (duplicate executor name)."""


class StageFailedError(CuratorExecError, RuntimeError):
    """A stage raised on a task and the run was aborted (``ignore_failures=False``).

    ``stage`` and ``task_id`` name where it happened; the original exception is
    chained as ``__cause__`` (when it can cross process boundaries) and its
    formatted traceback is in ``remote_traceback`` either way.
    """

    def __init__(self, stage: str, task_id: str, error: str, attempts: int = 1, remote_traceback: str = "",
                 retryable: bool = True, advice: str = "") -> None:
        self.stage = stage
        self.task_id = task_id
        self.error = error
        self.attempts = attempts
        self.remote_traceback = remote_traceback
        self.retryable = retryable
        self.advice = advice
        tries = f" after {attempts} attempts" if attempts > 1 else ""
        if not advice:
            retry = ", or max_retries=N to retry" if retryable else " (retrying cannot help: the stage broke its contract)"
            advice = ("Fix the stage, or pass ignore_failures=True to finish the run and get failed tasks "
                      f"on result.failed_tasks{retry}.")
        super().__init__(f"stage {stage!r} failed on task {task_id!r}{tries}: {error}. {advice}")

    def __reduce__(self) -> tuple[type[StageFailedError], tuple[str, str, str, int, str, bool, str]]:
        # keep the fields across pickling (Ray ships exceptions)
        return (type(self), (self.stage, self.task_id, self.error, self.attempts, self.remote_traceback,
                             self.retryable, self.advice))


class StageContractError(CuratorExecError, TypeError):
    """A stage broke its contract: ``process``/``reduce`` returned something that is not a task, a
    list of tasks or None; ``keys`` returned a string instead of a list of keys, or an unsupported
    key. The same call would fail the same way, so it is never retried."""


class FailureBudgetExceeded(CuratorExecError, RuntimeError):
    """More tasks failed than ``max_failed_tasks`` allows (with ``ignore_failures=True``): the run was
    aborted instead of finishing with a result that is mostly failures."""

    def __init__(self, budget: str, failed: int, first_errors: list[str] | tuple[str, ...] = ()) -> None:
        self.budget = budget
        self.failed = failed
        self.first_errors = tuple(first_errors)
        errors = "".join(f"\n  {e}" for e in self.first_errors) or " (none carried its error)"
        super().__init__(
            f"{failed} tasks failed, more than the failure budget {budget} allows: the run was aborted. "
            f"First errors:{errors}\nFix the stage, or raise max_failed_tasks.")

    def __reduce__(self) -> tuple[type[FailureBudgetExceeded], tuple[str, int, tuple[str, ...]]]:
        return (type(self), (self.budget, self.failed, self.first_errors))


class TaskTimeoutError(CuratorExecError, TimeoutError):
    """A call of a stage ran longer than its ``task_timeout`` and was stopped. It counts as the call's
    failure: retried (``max_retries``), then a failure record or :class:`StageFailedError`."""


class CheckpointError(CuratorExecError, ValueError):
    """A checkpoint directory that cannot be used: not a checkpoint, written by another pipeline or
    inputs, by a newer format, in use by another run, or not visible from every node."""


class EngineCompatibilityError(CuratorExecError, RuntimeError):
    """An engine's private or undocumented name that a plugin relies on is missing (the engine moved it).

    Raised before a run does any work, naming the engine version found and the range the plugin supports.
    """


def check_engine(engine: str, version: str, supported: str, probes: Mapping[str, Callable[[], object]],
                 package: str = "") -> None:
    """Run every probe (``description -> callable``); one that raises or returns ``None`` means the
    engine no longer has that name: raise :class:`EngineCompatibilityError` naming all that are missing."""
    missing = []
    for what, probe in probes.items():
        try:
            ok = probe() is not None
        except Exception as exc:  # an import or attribute error: the name moved
            ok, what = False, f"{what} ({type(exc).__name__}: {exc})"
        if not ok:
            missing.append(what)
    if missing:
        raise EngineCompatibilityError(
            f"{engine} {version} is installed, but this plugin supports {engine} {supported} and relies on "
            f"names it does not have: {'; '.join(missing)}. Install a supported {engine} version "
            f"(pip install '{package or engine.lower()}{supported}').")


def find_stage_error(exc: BaseException) -> StageFailedError | None:
    """The :class:`StageFailedError` inside an engine's exception (cause chains, Ray's ``.cause``)."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    wrapped: StageFailedError | None = None
    while todo:
        cur = todo.pop(0)
        if cur is None or id(cur) in seen:
            continue
        seen.add(id(cur))
        if isinstance(cur, StageFailedError):
            if type(cur) is StageFailedError or not hasattr(cur, "cause"):
                return cur
            # Ray's RayTaskError(StageFailedError) is both; prefer the plain one it carries
            wrapped = wrapped or cur
        todo += [getattr(cur, "cause", None), cur.__cause__, cur.__context__]
        todo += [e for e in getattr(cur, "exceptions", ()) if isinstance(e, BaseException)]
    return wrapped


class EngineCheck:
    """An engine door's ``check()`` (a function that calls :func:`check_engine`), run until it has
    passed once in this process; ``done`` says whether it has (tests reset it)."""

    def __init__(self, fn: Callable[[], None]) -> None:
        self.fn = fn
        self.done = False
        self.__doc__ = fn.__doc__
        self.__name__ = getattr(fn, "__name__", "check")

    def __call__(self) -> None:
        if not self.done:
            self.fn()
            self.done = True


def engine_check(fn: Callable[[], None]) -> EngineCheck:
    """Decorate a ``_compat.check`` function: it runs until it passes once per process."""
    return EngineCheck(fn)

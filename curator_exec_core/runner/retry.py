"""The one retry policy of the runner: maps, shuffles (``keys``, ``reduce``) and gangs use it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, NamedTuple, TypeVar

import attrs

from curator_exec_core.errors import StageContractError

__all__ = ["FailurePolicy", "Attempt", "retry"]

T = TypeVar("T")


@attrs.frozen
class FailurePolicy:
    """What a run does when a call of a stage raises: try ``max_retries`` more times, then abort the
    run with :class:`~curator_exec_core.errors.StageFailedError` or (``ignore_failures``) turn the
    task into a :class:`~curator_exec_core.tasks.FailedTask` record."""

    ignore_failures: bool = False
    max_retries: int = 0
    #: seconds a call of a stage may run (:mod:`curator_exec_core.runner.timeout`); None: no limit
    task_timeout: float | None = None


class Attempt(NamedTuple, Generic[T]):
    """The outcome of :func:`retry`: the value, or the last error; and how many calls were made."""

    value: T | None
    error: Exception | None
    attempts: int


def retry(fn: Callable[[], T], retries: int, first_error: Exception | None = None) -> Attempt[T]:
    """Call ``fn`` until it returns, at most ``1 + retries`` times in all. ``first_error``: a first
    call was already made (the caller's fast path) and raised it; it counts as an attempt. A
    :class:`~curator_exec_core.errors.StageContractError` is never retried (the same call fails the same way)."""
    attempts, error = (0, None) if first_error is None else (1, first_error)
    while error is None or (attempts <= retries and not isinstance(error, StageContractError)):
        attempts += 1
        try:
            return Attempt(fn(), None, attempts)
        except Exception as exc:
            error = exc
    return Attempt(None, error, attempts)

"""What the ``curator-exec`` commands share: the error kinds and loading executors and pipelines."""

from __future__ import annotations

import os
import sys
from typing import Any

from curator_exec_core.cli.report import one_line
from curator_exec_core.errors import CheckpointError, ConfigError, PlanError, PluginError, UnknownExecutorError
from curator_exec_core.importing import import_object, split_target

__all__ = ["PROG", "USER_ERRORS", "UsageError", "core_version", "executor_spec", "load_pipeline", "make_executor",
           "teardown_quietly"]

PROG = "curator-exec"
#: errors the user can fix; one line on stderr, exit status 2
USER_ERRORS = (UnknownExecutorError, ConfigError, PlanError, PluginError, CheckpointError)


class UsageError(Exception):
    """A bad command-line argument (exit status 2)."""


def core_version() -> str:
    from curator_exec_core import __version__

    return __version__


def executor_spec(name: str) -> Any:
    from curator_exec_core.registry import get_registry

    return get_registry().spec(name)


def _cwd_importable() -> None:
    """Put the current directory first on ``sys.path`` (as ``python -m`` does), so that the console
    script finds the user's modules where they stand."""
    cwd = os.getcwd()
    if not any(os.path.abspath(p or os.curdir) == cwd for p in sys.path):
        sys.path.insert(0, cwd)


def import_user_object(target: str, flag: str, shape: str) -> Any:
    """``module:name`` from the user's code (the current directory importable); errors are :class:`UsageError`."""
    try:
        split_target(target)
    except ValueError:
        raise UsageError(f"{flag} expects {shape}, got {target!r}") from None
    _cwd_importable()
    try:
        return import_object(target)
    except (ImportError, AttributeError) as exc:
        raise UsageError(f"cannot load {target!r}: {exc}") from exc


def make_executor(name: str, settings: dict[str, Any]) -> Any:
    """A registered executor by name, or (``module:Class``) an executor class not registered yet."""
    from curator_exec_core.registry import get_executor

    if ":" not in name:
        return get_executor(name, config=settings)
    from curator_exec_core.executor import BaseExecutor

    cls = import_user_object(name, "--executor", "a name or module:Class")
    if not (isinstance(cls, type) and issubclass(cls, BaseExecutor)):
        raise UsageError(f"--executor {name!r} is {type(cls).__name__}, not a BaseExecutor subclass")
    return cls(config=settings)


def load_pipeline(target: str) -> tuple[Any, list[Any] | None]:
    """``--pipeline module:factory`` -> ``(Pipeline, initial tasks or None)``.

    ``factory`` is a callable returning a Pipeline or a ``(Pipeline, initial_tasks)`` pair, or a
    Pipeline object itself. The module is imported with the current directory on ``sys.path``.
    """
    from curator_exec_core.pipeline import Pipeline

    obj = import_user_object(target, "--pipeline", "module:factory")
    if not isinstance(obj, Pipeline) and callable(obj):
        obj = obj()
    tasks = None
    if isinstance(obj, tuple) and len(obj) == 2 and isinstance(obj[0], Pipeline):
        obj, tasks = obj
        tasks = list(tasks) if tasks is not None else None
    if not isinstance(obj, Pipeline):
        raise UsageError(f"--pipeline {target!r} gave {type(obj).__name__}, not a Pipeline or (Pipeline, initial_tasks)")
    return obj, tasks


def teardown_quietly(executor: Any) -> None:
    try:
        executor.teardown()
    except Exception as exc:  # the command's answer matters more than a cleanup failure
        print(f"{PROG}: warning: teardown of {executor!r} failed: {one_line(repr(exc))}", file=sys.stderr)

"""The ``curator-exec`` command.

::

    curator-exec plugins [--json]                 every plugin entry point and its status
    curator-exec info [NAME] [--json]             versions and executors; or one executor's capacity and options
    curator-exec plan [--executor NAME] [--pipeline module:factory] [--set key=value ...] [--json]
    curator-exec demo [--executor NAME] [--tasks N] [--set key=value ...] [--json]
    curator-exec run --pipeline module:factory [--executor NAME] [--set key=value ...]
                     [--checkpoint DIR] [--fresh] [--json]  run your pipeline
    curator-exec status DIR [--json]              a checkpoint's run: progress, failures, lock, resume command

``python -m curator_exec_core`` is the same command.

``--set key=value`` passes an executor option; the value is read by
:func:`curator_exec_core.config.parse_setting_value`: ``true``/``yes``/``on``,
``false``/``no``/``off`` and ``none``/``null`` in any case, else JSON, else a Python
literal, else the string (so ``max_retries=2`` is an int and ``ignore_failures=yes`` a bool).
``--pipeline module:factory`` names a callable that returns a Pipeline or a
``(Pipeline, initial_tasks)`` pair (or a Pipeline itself); the module is imported with the
current directory on ``sys.path``, as ``python -m`` has it.
Errors a user can fix (unknown executor, bad option, infeasible plan, broken
plugin, bad arguments, a checkpoint that does not match) print one line on stderr and exit with
status 2; a run that fails in a stage exits with status 1.
Nothing here imports an engine: only the executor asked for is loaded.

The package: :mod:`.commands` (one function per command), :mod:`.common` (errors, loading
executors and pipelines), :mod:`.report` (tables, JSON, the per-stage table of a run).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from curator_exec_core.cli.commands import cmd_demo, cmd_info, cmd_plan, cmd_plugins, cmd_run, cmd_status
from curator_exec_core.cli.common import PROG, USER_ERRORS, UsageError, core_version
from curator_exec_core.cli.report import one_line
from curator_exec_core.config import parse_settings
from curator_exec_core.errors import CuratorExecError

__all__ = ["main", "build_parser", "parse_settings"]


def _executor_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--executor", "-e", default="local", metavar="NAME",
                   help="executor name (default: local), or module:Class of an executor not registered")
    p.add_argument("--set", "-s", action="append", default=[], metavar="KEY=VALUE",
                   help="an executor option (repeatable); values: true/yes/on, false/no/off, none/null, "
                        "else JSON or a Python literal, else a string")
    p.add_argument("--json", action="store_true", help="print JSON")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Run data-curation pipelines on pluggable executors (local, Ray, Cosmos-Xenna).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {core_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("plugins", help="list every plugin entry point, its distribution and status")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_plugins)

    p = sub.add_parser("info", help="versions and installed executors; or one executor's capacity and options")
    p.add_argument("name", nargs="?", metavar="NAME", help="an executor name (e.g. local)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("plan", help="show what would run where, without running")
    _executor_args(p)
    p.add_argument("--pipeline", "-p", metavar="MODULE:FACTORY",
                   help="a callable returning a Pipeline or a (Pipeline, initial_tasks) pair (or a Pipeline); "
                        "default: the demo pipeline")
    p.add_argument("--tasks", "-n", type=int, default=100, metavar="N", help="documents in the demo pipeline")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("demo", help="run the demo text-curation pipeline and show what ran where")
    _executor_args(p)
    p.add_argument("--tasks", "-n", type=int, default=100, metavar="N", help="synthetic documents to generate")
    p.add_argument("--seed", type=int, default=0, help="random seed of the synthetic documents")
    p.add_argument("--samples", type=int, default=3, metavar="K", help="sample outputs to print")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("run", help="run your pipeline (module:factory), resumable with --checkpoint")
    _executor_args(p)
    p.add_argument("--pipeline", "-p", required=True, metavar="MODULE:FACTORY",
                   help="a callable returning a Pipeline, or a (Pipeline, initial_tasks) pair")
    p.add_argument("--checkpoint", "-c", metavar="DIR",
                   help="record finished work in DIR; a rerun with the same pipeline and inputs resumes")
    p.add_argument("--fresh", action="store_true",
                   help="discard a checkpoint in DIR that another pipeline or other inputs wrote")
    p.add_argument("--output", "-o", metavar="URL",
                   help="write the final outputs as files under URL (a directory or any fsspec URL), one file per "
                        "output task, named from its id (needs curator-exec-io)")
    p.add_argument("--output-format", choices=("jsonl", "parquet"), default="jsonl",
                   help="the format of --output files (default jsonl)")
    p.add_argument("--stats-log", metavar="FILE",
                   help="append the run's statistics to FILE as JSON lines, every progress_interval seconds "
                        "(--set progress_interval=S) and at the end")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("status", help="what a checkpoint directory says about its run (runs nothing); exit 0 "
                       "finished, 1 finished with failed tasks, 3 unfinished, 4 not a checkpoint")
    p.add_argument("dir", metavar="DIR", help="a checkpoint directory (--checkpoint / checkpoint_path)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_status)
    return parser


def _show_warning(message: Any, category: type[Warning], filename: str, lineno: int,
                  file: Any = None, line: str | None = None) -> None:
    print(f"{PROG}: warning: {one_line(str(message))}", file=sys.stderr)


def _error(message: str) -> None:
    print(f"{PROG}: error: {one_line(message)}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; returns the exit status (0 ok, 1 run failed, 2 usage or setup error)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, argparse usage errors
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 2)
    func: Callable[[argparse.Namespace], int] = args.func
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        try:
            return func(args)
        except (UsageError, *USER_ERRORS) as exc:
            _error(str(exc))
            return 2
        except CuratorExecError as exc:  # e.g. StageFailedError: the run itself failed
            _error(f"{type(exc).__name__}: {exc}")
            return 1
        except KeyboardInterrupt:
            _error("interrupted")
            return 130
        except BrokenPipeError:  # `curator-exec plugins | head`
            return 0


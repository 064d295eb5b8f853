"""The ``curator-exec`` command.

::

    curator-exec plugins [--json]                 every plugin entry point and its status
    curator-exec info [NAME] [--json]             versions and executors; or one executor's capacity and options
    curator-exec plan [--executor NAME] [--pipeline module:factory] [--set key=value ...] [--json]
    curator-exec demo [--executor NAME] [--tasks N] [--set key=value ...] [--json]
    curator-exec run --pipeline module:factory [--executor NAME] [--set key=value ...]
                     [--checkpoint DIR] [--fresh] [--json]  run your pipeline

``python -m curator_exec_core`` is the same command.

``--set key=value`` passes an executor option (the value is read as JSON when it
parses, so ``max_retries=2`` is an int and ``ignore_failures=true`` a bool).
Errors a user can fix (unknown executor, bad option, infeasible plan, broken
plugin, bad arguments, a checkpoint that does not match) print one line on stderr and exit with
status 2; a run that fails in a stage exits with status 1.
Nothing here imports an engine: only the executor asked for is loaded.
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import attrs

from curator_exec_core.errors import (
    CheckpointError,
    ConfigError,
    CuratorExecError,
    PlanError,
    PluginError,
    UnknownExecutorError,
)

__all__ = ["main", "build_parser", "parse_settings"]

PROG = "curator-exec"
#: errors the user can fix; one line on stderr, exit status 2
USER_ERRORS = (UnknownExecutorError, ConfigError, PlanError, PluginError, CheckpointError)


class UsageError(Exception):
    """A bad command-line argument (exit status 2)."""


# -- helpers ---------------------------------------------------------------------------


def parse_settings(items: Sequence[str] | None) -> dict[str, Any]:
    """``["max_retries=2", "ignore_failures=true"]`` -> ``{"max_retries": 2, "ignore_failures": True}``."""
    out: dict[str, Any] = {}
    for item in items or ():
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UsageError(f"--set expects key=value, got {item!r}")
        out[key] = _parse_value(raw.strip())
    return out


def _parse_value(raw: str) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        pass
    lowered = raw.lower()
    if lowered in ("true", "yes", "on"):
        return True
    if lowered in ("false", "no", "off"):
        return False
    if lowered in ("none", "null"):
        return None
    return raw


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=False, default=str))


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(header, widths, strict=True)).rstrip()]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


def _core_version() -> str:
    from curator_exec_core import __version__

    return __version__


def _make_executor(name: str, settings: dict[str, Any]) -> Any:
    """A registered executor by name, or (``module:Class``) an executor class not registered yet."""
    from curator_exec_core.registry import get_executor

    if ":" not in name:
        return get_executor(name, config=settings)
    from curator_exec_core.executor import BaseExecutor

    cls = _import_target(name, "--executor", "a name or module:Class")
    if not (isinstance(cls, type) and issubclass(cls, BaseExecutor)):
        raise UsageError(f"--executor {name!r} is {type(cls).__name__}, not a BaseExecutor subclass")
    return cls(config=settings)


def _import_target(target: str, flag: str, shape: str = "module:name") -> Any:
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise UsageError(f"{flag} expects {shape}, got {target!r}")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise UsageError(f"cannot load {target!r}: {exc}") from exc
    return obj


def _spec(name: str) -> Any:
    from curator_exec_core.registry import get_registry

    return get_registry().spec(name)


def _load_pipeline(target: str | None, num_documents: int) -> Any:
    """``module:factory`` (a callable returning a Pipeline, or a Pipeline) or the demo pipeline."""
    if not target:
        from curator_exec_core.demo import build_pipeline

        return build_pipeline(num_documents)
    return _load_target(target, with_tasks=False)[0]


def _load_target(target: str, with_tasks: bool) -> tuple[Any, Any]:
    """``module:factory`` -> (Pipeline, initial tasks or None). The factory returns a Pipeline, or
    (``with_tasks``) a ``(Pipeline, initial_tasks)`` pair; a Pipeline object works too."""
    from curator_exec_core.pipeline import Pipeline

    obj = _import_target(target, "--pipeline", "module:factory")
    if not isinstance(obj, Pipeline) and callable(obj):
        obj = obj()
    tasks = None
    if with_tasks and isinstance(obj, tuple) and len(obj) == 2 and isinstance(obj[0], Pipeline):
        obj, tasks = obj
        tasks = list(tasks) if tasks is not None else None
    if not isinstance(obj, Pipeline):
        what = "a Pipeline or (Pipeline, initial_tasks)" if with_tasks else "a Pipeline"
        raise UsageError(f"--pipeline {target!r} gave {type(obj).__name__}, not {what}")
    return obj, tasks


def _teardown_quietly(executor: Any) -> None:
    try:
        executor.teardown()
    except Exception as exc:  # the command's answer matters more than a cleanup failure
        print(f"{PROG}: warning: teardown of {executor!r} failed: {_one_line(repr(exc))}", file=sys.stderr)


# -- commands --------------------------------------------------------------------------


def cmd_plugins(args: argparse.Namespace) -> int:
    from curator_exec_core.registry import list_plugins

    plugins = list_plugins()
    if args.json:
        _print_json([attrs.asdict(p) for p in plugins])
        return 0
    if not plugins:
        print("No curator-exec plugins found (entry-point group 'curator_exec.executors').")
        return 0
    rows = [[p.name, p.distribution, p.version, p.status, ", ".join(p.executors), _one_line(p.error)]
            for p in plugins]
    print(_table(rows, ["NAME", "DISTRIBUTION", "VERSION", "STATUS", "EXECUTORS", "ERROR"]))
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    if args.name:
        return _info_executor(args)
    from curator_exec_core.registry import KNOWN_BACKENDS, list_executors, list_plugins

    executors = list_executors()
    plugins = list_plugins()
    installed = {s.name for s in executors}
    missing = {n: d for n, d in KNOWN_BACKENDS.items() if n not in installed}
    troubled = [p for p in plugins if p.status != "ok"]
    if args.json:
        _print_json({
            "core_version": _core_version(),
            "python": platform.python_version(),
            "executors": [attrs.asdict(s) for s in executors],
            "not_installed": missing,
            "plugins_not_ok": [attrs.asdict(p) for p in troubled],
        })
        return 0
    print(f"curator-exec-core {_core_version()} (Python {platform.python_version()})")
    print()
    if executors:
        print("Installed executors:")
        rows = [[s.name, f"{s.distribution} {s.version}".strip(), s.summary] for s in executors]
        print("  " + _table(rows, ["NAME", "DISTRIBUTION", "SUMMARY"]).replace("\n", "\n  "))
    else:
        print("No executor is installed: pip install curator-exec-local")
    if missing:
        print()
        print("Not installed: " + ", ".join(f"{n} (pip install {d})" for n, d in missing.items()))
    if troubled:
        print()
        print("Plugins not loaded: " + ", ".join(f"{p.name} from {p.distribution} ({p.status})" for p in troubled)
              + f"; see '{PROG} plugins'.")
    return 0


def _info_executor(args: argparse.Namespace) -> int:
    from curator_exec_core.config import describe_options
    from curator_exec_core.registry import get_plugin_manager

    spec = _spec(args.name)
    executor = _make_executor(args.name, {})
    try:
        capacity = get_plugin_manager().hook.curator_exec_capacity(executor=executor)
    finally:
        _teardown_quietly(executor)
    options = describe_options(type(executor).Options)
    if args.json:
        _print_json({"executor": attrs.asdict(spec), "capacity": capacity.to_dict(), "options": options})
        return 0
    print(f"Executor {spec.name!r} from {spec.distribution} {spec.version}".rstrip())
    print(f"  class: {spec.factory}")
    if spec.summary:
        print(f"  {spec.summary}")
    print()
    print("Capacity:")
    print("  " + capacity.describe().replace("\n", "\n  "))
    print()
    print(f"Options (set with --set key=value, or get_executor({spec.name!r}, key=value)):")
    for row in options:
        print(f"  {row['name']}: {row['type']} = {row['default']!r}")
        if row["doc"]:
            print(f"      {row['doc']}")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    settings = parse_settings(args.set)  # argument errors first, before any plugin loads
    pipeline = _load_pipeline(args.pipeline, args.tasks)
    executor = _make_executor(args.executor, settings)
    try:
        if args.json:
            plan = pipeline.plan(executor)
            _print_json({"pipeline": pipeline.name, "plan": attrs.asdict(plan)})
        else:
            print(pipeline.describe(executor))
    finally:
        _teardown_quietly(executor)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from curator_exec_core import demo

    if args.tasks < 0:
        raise UsageError(f"--tasks must be >= 0, got {args.tasks}")
    settings = parse_settings(args.set)  # argument errors first, before any plugin loads
    started = time.perf_counter()
    pipeline = demo.build_pipeline(args.tasks, seed=args.seed)
    spec = _spec(args.executor)
    executor = _make_executor(args.executor, settings)
    result = pipeline.run(executor)
    total = time.perf_counter() - started

    stage_metrics = result.metrics.get("stages", {})
    planned = {sp.name: sp.workers for sp in result.plan.stages} if result.plan is not None else {}
    seen: dict[str, set[str]] = {s.name: set() for s in pipeline.stages}
    for task in result:
        for perf in task.stage_perf:
            seen.setdefault(perf.stage, set()).add(perf.worker)
    by_index = {m.get("index"): m for m in stage_metrics.values()}
    stages = []
    for i, stage in enumerate(pipeline.stages):
        m = by_index.get(i, {})
        stages.append({"index": i, "name": stage.name, "tasks_in": m.get("tasks_in"), "tasks_out": m.get("tasks_out"),
                       "tasks_failed": m.get("tasks_failed"),
                       "planned_workers": planned.get(stage.name), "workers_seen": sorted(seen.get(stage.name, ()))})
    expected = demo.reference(args.tasks, seed=args.seed)
    got = demo.output_rows(result)
    matches = got == expected and not result.failed_tasks
    ordered = sorted(result, key=lambda t: demo.task_sort_key(t.task_id))
    samples = [{"task_id": t.task_id, **t.data} for t in ordered[: args.samples]]
    report = {
        "executor": spec.name,
        "distribution": spec.distribution,
        "version": spec.version,
        "options": attrs.asdict(executor.options),
        "documents": args.tasks,
        "seed": args.seed,
        "stages": stages,
        "summary": demo.summarize(result),
        "failed_tasks": [{"task_id": f.task_id, "stage": f.stage, "error": f.error} for f in result.failed_tasks],
        "samples": samples,
        "matches_reference": matches,
        "expected_outputs": len(expected),
        "run_seconds": result.metrics.get("seconds"),
        "total_seconds": total,
    }
    if args.json:
        _print_json(report)
    else:
        _print_demo(report, result)
    return 0 if matches else 1


def cmd_run(args: argparse.Namespace) -> int:
    settings = parse_settings(args.set)  # argument errors first, before any plugin loads
    if args.fresh and not args.checkpoint:
        raise UsageError("--fresh discards a checkpoint; give one with --checkpoint DIR")
    pipeline, tasks = _load_target(args.pipeline, with_tasks=True)
    executor = _make_executor(args.executor, settings)
    started = time.perf_counter()
    result = pipeline.run(executor, tasks, checkpoint_path=args.checkpoint, overwrite=args.fresh)
    total = time.perf_counter() - started
    by_index = {m.get("index"): m for m in result.metrics.get("stages", {}).values()}
    report = {
        "pipeline": pipeline.name,
        "executor": executor.executor_name,
        "stages": [{"index": i, "name": s.name, **{k: by_index.get(i, {}).get(k) for k in
                                                    ("tasks_in", "tasks_out", "tasks_failed")}}
                   for i, s in enumerate(pipeline.stages)],
        "outputs": len(result),
        "failed_tasks": [{"task_id": f.task_id, "stage": f.stage, "error": f.error} for f in result.failed_tasks],
        "checkpoint": result.metrics.get("checkpoint"),
        "run_seconds": result.metrics.get("seconds"),
        "total_seconds": total,
    }
    if args.json:
        _print_json(report)
        return 0
    print(f"Pipeline {pipeline.name!r} on executor {report['executor']!r}")
    print()
    rows = [[str(s["index"]), s["name"], _fmt_count(s["tasks_in"]), _fmt_count(s["tasks_out"]),
             _fmt_count(s["tasks_failed"])] for s in report["stages"]]
    print(_table(rows, ["#", "STAGE", "IN", "OUT", "FAILED"]))
    print()
    print(f"Outputs: {len(result)} tasks; {len(result.failed_tasks)} failed tasks.")
    for f in report["failed_tasks"][:5]:
        print(f"  failed: task {f['task_id']} in {f['stage']}: {_one_line(f['error'])}")
    ck = report["checkpoint"]
    if ck:
        after = f", resumed after stage {ck['resumed_after']!r}" if ck["resumed_after"] else ""
        print(f"Checkpoint: {ck['path']} ({ck['resumed_tasks']} of {ck['source_tasks']} source tasks "
              f"resumed{after}).")
    print(f"Time: {total:.2f} s.")
    return 0


def _workers_text(workers: list[str], limit: int = 4) -> str:
    if not workers:
        return "-"
    shown = ", ".join(workers[:limit])
    return shown + (f", ... ({len(workers)} in all)" if len(workers) > limit else "")


def _print_demo(report: dict[str, Any], result: Any) -> None:
    who = f"{report['distribution']} {report['version']}".strip()
    print(f"Demo pipeline on executor {report['executor']!r} ({who}): "
          f"{report['documents']} synthetic documents, seed {report['seed']}")
    print()
    rows = [[str(s["index"]), s["name"], _fmt_count(s["tasks_in"]), _fmt_count(s["tasks_out"]),
             _fmt_count(s["tasks_failed"]), _fmt_count(s["planned_workers"]), _workers_text(s["workers_seen"])]
            for s in report["stages"]]
    print(_table(rows, ["#", "STAGE", "IN", "OUT", "FAILED", "PLANNED", "WORKERS SEEN (on output tasks)"]))
    summary = report["summary"]
    print()
    print(f"Outputs: {summary['sentences']} sentence tasks from {summary['documents_kept']} of "
          f"{report['documents']} documents, {summary['words']} words; {len(report['failed_tasks'])} failed tasks.")
    for f in report["failed_tasks"][:5]:
        print(f"  failed: task {f['task_id']} in {f['stage']}: {_one_line(f['error'])}")
    if report["samples"]:
        print(f"Sample outputs ({len(report['samples'])} of {summary['sentences']}):")
        for s in report["samples"]:
            text = s["text"] if len(s["text"]) <= 60 else s["text"][:57] + "..."
            print(f"  {s['task_id']:<10} {s['doc_id']}  words={s['words']:<3} {text!r}")
    if report["matches_reference"]:
        print(f"Check: outputs match the in-process reference ({report['expected_outputs']} tasks).")
    else:
        print(f"Check: MISMATCH: expected {report['expected_outputs']} tasks as computed in-process, "
              f"got {summary['sentences']} (and {len(report['failed_tasks'])} failed).")
    run = report["run_seconds"]
    run_text = f"{run:.2f} s run, " if isinstance(run, (int, float)) else ""
    print(f"Time: {run_text}{report['total_seconds']:.2f} s in all (loading the executor included).")


def _fmt_count(value: Any) -> str:
    return "-" if value is None else str(value)


# -- parser and entry point ---------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Run data-curation pipelines on pluggable executors (local, Ray, Cosmos-Xenna).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_core_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("plugins", help="list every plugin entry point, its distribution and status")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_plugins)

    p = sub.add_parser("info", help="versions and installed executors; or one executor's capacity and options")
    p.add_argument("name", nargs="?", metavar="NAME", help="an executor name (e.g. local)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_info)

    def executor_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--executor", "-e", default="local", metavar="NAME",
                       help="executor name (default: local), or module:Class of an executor not registered")
        p.add_argument("--set", "-s", action="append", default=[], metavar="KEY=VALUE",
                       help="an executor option (repeatable); values are read as JSON when they parse")
        p.add_argument("--json", action="store_true", help="print JSON")

    p = sub.add_parser("plan", help="show what would run where, without running")
    executor_args(p)
    p.add_argument("--pipeline", "-p", metavar="MODULE:FACTORY",
                   help="a callable returning a Pipeline (or a Pipeline); default: the demo pipeline")
    p.add_argument("--tasks", "-n", type=int, default=100, metavar="N", help="documents in the demo pipeline")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("demo", help="run the demo text-curation pipeline and show what ran where")
    executor_args(p)
    p.add_argument("--tasks", "-n", type=int, default=100, metavar="N", help="synthetic documents to generate")
    p.add_argument("--seed", type=int, default=0, help="random seed of the synthetic documents")
    p.add_argument("--samples", type=int, default=3, metavar="K", help="sample outputs to print")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("run", help="run your pipeline (module:factory), resumable with --checkpoint")
    executor_args(p)
    p.add_argument("--pipeline", "-p", required=True, metavar="MODULE:FACTORY",
                   help="a callable returning a Pipeline, or a (Pipeline, initial_tasks) pair")
    p.add_argument("--checkpoint", "-c", metavar="DIR",
                   help="record finished work in DIR; a rerun with the same pipeline and inputs resumes")
    p.add_argument("--fresh", action="store_true",
                   help="discard a checkpoint in DIR that another pipeline or other inputs wrote")
    p.set_defaults(func=cmd_run)
    return parser


def _show_warning(message: Any, category: type[Warning], filename: str, lineno: int,
                  file: Any = None, line: str | None = None) -> None:
    print(f"{PROG}: warning: {_one_line(str(message))}", file=sys.stderr)


def _error(message: str) -> None:
    print(f"{PROG}: error: {_one_line(message)}", file=sys.stderr)


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
        except UsageError as exc:
            _error(str(exc))
            return 2
        except USER_ERRORS as exc:
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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

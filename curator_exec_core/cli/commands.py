"""The ``curator-exec`` commands: ``plugins``, ``info``, ``plan``, ``demo`` and ``run``.

Each takes the parsed arguments and returns the exit status; errors are raised and
turned into one line on stderr by :func:`curator_exec_core.cli.main`.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import platform
import time
from collections.abc import Iterator
from typing import Any

import attrs

from curator_exec_core.cli.common import (
    PROG,
    UsageError,
    core_version,
    executor_spec,
    load_pipeline,
    make_executor,
    teardown_quietly,
)
from curator_exec_core.cli.report import (
    failed_lines,
    failed_rows,
    one_line,
    print_json,
    stage_rows,
    stage_table,
    table,
)
from curator_exec_core.config import parse_settings
from curator_exec_core.pipeline import Pipeline

__all__ = ["cmd_demo", "cmd_info", "cmd_plan", "cmd_plugins", "cmd_run"]


def cmd_plugins(args: argparse.Namespace) -> int:
    from curator_exec_core.registry import list_plugins

    plugins = list_plugins()
    if args.json:
        print_json([attrs.asdict(p) for p in plugins])
        return 0
    if not plugins:
        print("No curator-exec plugins found (entry-point group 'curator_exec.executors').")
        return 0
    rows = [[p.name, p.distribution, p.version, p.status, ", ".join(p.executors), one_line(p.error)]
            for p in plugins]
    print(table(rows, ["NAME", "DISTRIBUTION", "VERSION", "STATUS", "EXECUTORS", "ERROR"]))
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
        print_json({
            "core_version": core_version(),
            "python": platform.python_version(),
            "executors": [attrs.asdict(s) for s in executors],
            "not_installed": missing,
            "plugins_not_ok": [attrs.asdict(p) for p in troubled],
        })
        return 0
    print(f"curator-exec-core {core_version()} (Python {platform.python_version()})")
    print()
    if executors:
        print("Installed executors:")
        rows = [[s.name, f"{s.distribution} {s.version}".strip(), s.summary] for s in executors]
        print("  " + table(rows, ["NAME", "DISTRIBUTION", "SUMMARY"]).replace("\n", "\n  "))
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

    spec = executor_spec(args.name)
    executor = make_executor(args.name, {})
    try:
        capacity = get_plugin_manager().hook.curator_exec_capacity(executor=executor)
    finally:
        teardown_quietly(executor)
    options = describe_options(type(executor).Options)
    if args.json:
        print_json({"executor": attrs.asdict(spec), "capacity": capacity.to_dict(), "options": options})
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
    if args.pipeline:
        pipeline, _ = load_pipeline(args.pipeline)
    else:
        from curator_exec_core.demo import build_pipeline

        pipeline = build_pipeline(args.tasks)
    executor = make_executor(args.executor, settings)
    try:
        if args.json:
            plan = pipeline.plan(executor)
            print_json({"pipeline": pipeline.name, "plan": attrs.asdict(plan)})
        else:
            print(pipeline.describe(executor))
    finally:
        teardown_quietly(executor)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from curator_exec_core import demo

    if args.tasks < 0:
        raise UsageError(f"--tasks must be >= 0, got {args.tasks}")
    settings = parse_settings(args.set)  # argument errors first, before any plugin loads
    started = time.perf_counter()
    pipeline = demo.build_pipeline(args.tasks, seed=args.seed)
    spec = executor_spec(args.executor)
    executor = make_executor(args.executor, settings)
    result = pipeline.run(executor)
    report = demo.demo_report(pipeline, result, spec=spec, options=attrs.asdict(executor.options),
                              documents=args.tasks, seed=args.seed, samples=args.samples,
                              total_seconds=time.perf_counter() - started)
    if args.json:
        print_json(report)
    else:
        demo.print_demo_report(report)
    return 0 if report["matches_reference"] else 1


def with_writer(pipeline: Pipeline, url: str, fmt: str) -> Pipeline:
    """``pipeline`` followed by :class:`curator_exec_io.ToRows` and the writer of ``fmt`` into ``url``."""
    try:
        io = importlib.import_module("curator_exec_io")  # an optional library: not a dependency of the core
    except ImportError:
        raise UsageError("--output writes files with the curator-exec-io library, which is not installed: "
                         "pip install curator-exec-io (plugins/io in the curator-exec repository)") from None
    writer = io.ParquetWriter(url) if fmt == "parquet" else io.JsonlWriter(url)
    return Pipeline(pipeline.name, [*pipeline.stages, io.ToRows(), writer], pipeline.description)


def written(result: Any, url: str, fmt: str) -> dict[str, Any]:
    """What the writer of ``--output`` wrote: its files, rows and bytes."""
    files = [t.data for t in result]
    return {"url": url, "format": fmt, "files": len(files), "rows": sum(f.rows for f in files),
            "bytes": sum(f.bytes for f in files)}


@contextlib.contextmanager
def stats_log(path: str | None) -> Iterator[None]:
    """With ``path``: a :class:`~curator_exec_core.statslog.StatsLog` observer registered for the run."""
    if not path:
        yield
        return
    from curator_exec_core.registry import get_plugin_manager
    from curator_exec_core.statslog import StatsLog

    log = StatsLog(path)
    pm = get_plugin_manager()
    pm.register(log, name=f"stats-log-{id(log)}")
    try:
        yield
    finally:
        pm.unregister(log)
        log.close()


def cmd_run(args: argparse.Namespace) -> int:
    settings = parse_settings(args.set)  # argument errors first, before any plugin loads
    if args.fresh and not args.checkpoint:
        raise UsageError("--fresh discards a checkpoint; give one with --checkpoint DIR")
    pipeline, tasks = load_pipeline(args.pipeline)
    if args.output:
        pipeline = with_writer(pipeline, args.output, args.output_format)
    executor = make_executor(args.executor, settings)
    started = time.perf_counter()
    with stats_log(args.stats_log):
        result = pipeline.run(executor, tasks, checkpoint_path=args.checkpoint, overwrite=args.fresh)
    total = time.perf_counter() - started
    report = {
        "pipeline": pipeline.name,
        "executor": executor.executor_name,
        "stages": stage_rows(pipeline, result),
        "outputs": len(result),
        "failed_tasks": failed_rows(result),
        "checkpoint": result.metrics.get("checkpoint"),
        "output": written(result, args.output, args.output_format) if args.output else None,
        "run_seconds": result.metrics.get("seconds"),
        "total_seconds": total,
    }
    if args.json:
        print_json(report)
    else:
        _print_run(report)
    return 0


def _print_run(report: dict[str, Any]) -> None:
    print(f"Pipeline {report['pipeline']!r} on executor {report['executor']!r}")
    print()
    print(stage_table(report["stages"]))
    print()
    print(f"Outputs: {report['outputs']} tasks; {len(report['failed_tasks'])} failed tasks.")
    out = report.get("output")
    if out:
        print(f"Written: {out['files']} {out['format']} files, {out['rows']} rows, {out['bytes']} bytes in {out['url']}.")
    for line in failed_lines(report["failed_tasks"]):
        print(line)
    ck = report["checkpoint"]
    if ck:
        after = f", resumed after stage {ck['resumed_after']!r}" if ck["resumed_after"] else ""
        print(f"Checkpoint: {ck['path']} ({ck['resumed_tasks']} of {ck['source_tasks']} source tasks "
              f"resumed{after}).")
    print(f"Time: {report['total_seconds']:.2f} s.")


#: ``curator-exec status`` exit statuses a script can use
STATUS_EXIT = {"finished": 0, "failed": 1, "running": 3, "stopped": 3, "submitted": 3, "not a checkpoint": 4}


def cmd_status(args: argparse.Namespace) -> int:
    """What a checkpoint directory says about its run, without running anything."""
    from curator_exec_core.checkpoint.status import NotACheckpoint, read_status

    try:
        status = read_status(args.dir)
    except NotACheckpoint as exc:
        state = "submitted" if exc.notes else "not a checkpoint"  # an executor noted a run not started yet
        if args.json:
            print_json({"path": args.dir, "state": state, "error": str(exc), "notes": list(exc.notes),
                        "finished": False})
        else:
            print(f"{exc}")
        return STATUS_EXIT[state]
    if args.json:
        print_json(status.as_dict())
    else:
        _print_status(status)
    return STATUS_EXIT[status.state]


def _print_status(status: Any) -> None:
    from curator_exec_core.checkpoint.status import age

    print(f"Checkpoint {status.path}: {status.state}")
    sources = "source not read to its end yet" if status.source_tasks is None else f"{status.source_tasks} source tasks"
    print(f"Pipeline: {' -> '.join(status.pipeline)} ({sources})")
    for seg in status.segments:
        total = "?" if seg.total is None else seg.total
        what = "source tasks finished" if seg.kind == "map" else f"{seg.kind} stage finished"
        print(f"  {seg.position}: {', '.join(seg.stages):<40} {seg.done}/{total} {what}")
    lock = status.lock
    if lock.state == "held":
        alive = {True: ", alive", False: ", its process is gone", None: ", on another host"}[lock.alive]
        print(f"Lock: held by {lock.holder}{alive}: a run is using this checkpoint")
    else:
        print("Lock: free" + (f" (last held by {lock.holder})" if lock.holder else ""))
    print(f"Last write: {age(status.last_write)}")
    for note in status.notes:
        print(f"Executor: {note}")
    if status.failed_total:
        print(f"Failed tasks: {status.failed_total}")
        for f in status.failed:
            print(f"  {f['task_id']} in stage {f['stage']!r} after {f['attempts']} attempt(s): {f['error']}")
        if status.failed_total > len(status.failed):
            print(f"  ... and {status.failed_total - len(status.failed)} more")
    if status.state in ("stopped", "running"):
        print(f"Resume: {status.resume_command}")

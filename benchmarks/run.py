#!/usr/bin/env python
"""Benchmark curator-exec executors against each other and against no-framework baselines.

    python benchmarks/run.py local [ray_actor_pool ray_data xenna ...]
        [--workloads W1,W2,W3,W4] [--quick] [--json-out FILE] [--set name.key=value ...]

Every (executor, workload) pair runs in its own fresh subprocess, twice: the first
run is "cold" (includes building the executor, importing its plugin and starting
its engine), the second "warm" (steady state, same executor object, same process).
The parent collects one JSON line per measurement from the child's stdout,
evaluates the targets and prints the JSON lines and a table.
Executors that are not installed are reported as such and the rest still run.
See ``benchmarks/README.md`` for the workloads and how to read the output.

This module is the command line and the orchestration; the rest is in
``workloads.py`` (workload records, stages, baselines), ``child.py`` (the child-process
protocol and the measuring), ``targets.py`` (targets and verdicts) and ``report.py`` (the table).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
if str(REPO) not in sys.path:  # so that ``benchmarks.workloads`` imports (and pickles by reference)
    sys.path.insert(0, str(REPO))

from benchmarks.child import child_env, loadavg, measure_w4, run_child, spawn_child  # noqa: E402
from benchmarks.report import render_table  # noqa: E402
from benchmarks.targets import evaluate  # noqa: E402
from benchmarks.workloads import BASELINES, WORKLOADS  # noqa: E402
from curator_exec_core.config import parse_settings  # noqa: E402

DEFAULT_JSON_OUT = BENCH_DIR / "results" / "latest.jsonl"


def parse_sets(items: list[str]) -> dict[str, dict[str, Any]]:
    """``["ray_data.max_workers=2", "*.max_retries=1"]`` -> ``{"ray_data": {"max_workers": 2}, "*": {...}}``.

    Values follow the rule of :func:`curator_exec_core.config.parse_setting_value` (the one of
    ``curator-exec --set``): true/yes/on, false/no/off, none/null in any case, else JSON, else a
    Python literal, else the string.
    """
    for item in items:
        key, sep, _ = item.partition("=")
        name, dot, option = key.partition(".")
        if not sep or not dot or not name or not option:
            raise SystemExit(f"--set expects name.key=value (e.g. ray_data.max_workers=2), got {item!r}")
    out: dict[str, dict[str, Any]] = {}
    for key, value in parse_settings(items).items():
        name, _, option = key.partition(".")
        out.setdefault(name, {})[option] = value
    return out


def options_for(name: str, sets: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {**sets.get("*", {}), **sets.get(name, {})}


def git_commit() -> str | None:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                             timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if rev.returncode != 0:
        return None
    return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def build_parser() -> argparse.ArgumentParser:
    ids = list(WORKLOADS)
    default = [w.id for w in WORKLOADS.values() if w.default]
    on_request = [f"{w.id} {w.title}" for w in WORKLOADS.values() if not w.default]
    parser = argparse.ArgumentParser(
        description="Benchmark curator-exec executors ("
                    + ", ".join(f"{w.id} {w.title}" for w in WORKLOADS.values()) + ").")
    parser.add_argument("executors", nargs="*", default=["local"], help="executor names (default: local)")
    parser.add_argument("--workloads", default=",".join(default),
                        help=f"comma-separated subset of {ids[0]}..{ids[-1]} (default: %(default)s; "
                             f"{', '.join(on_request)} on request)")
    parser.add_argument("--quick", action="store_true", help="divide task counts by 10 (smoke test)")
    parser.add_argument("--json-out", default=str(DEFAULT_JSON_OUT), help="JSON lines file (default: %(default)s)")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="NAME.KEY=VALUE",
                        help="executor option, e.g. ray_data.max_workers=2 ('*.key=value' for all); repeatable; "
                             "values: true/yes/on, false/no/off, none/null, else JSON or a Python literal, else a string")
    parser.add_argument("--no-baselines", action="store_true", help="skip the plain-loop / Pool / startup baselines")
    parser.add_argument("--cores", type=float, default=None, help="cores for W2's ideal time (default: usable CPUs)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per child process (default: 1800)")
    parser.add_argument("--_child", help=argparse.SUPPRESS)
    return parser


def _meta(args: argparse.Namespace, executors: list[str], workloads: list[str], sets: dict[str, dict[str, Any]],
          cores: float) -> dict[str, Any]:
    try:
        from curator_exec_core import list_executors

        installed = [s.name for s in list_executors()]
    except Exception as exc:  # the children report the real error per executor
        installed = [f"<list_executors failed: {exc!r}>"]
    return {
        "kind": "meta", "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "argv": sys.argv[1:],
        "executors": executors, "workloads": workloads, "quick": args.quick, "installed": installed,
        "options": sets, "cores": cores, "cpu_count": os.cpu_count(), "python": sys.version.split()[0],
        "platform": platform.platform(), "git": git_commit(), "loadavg_start": loadavg(),
    }


def _measure_all(args: argparse.Namespace, executors: list[str], workloads: list[str],
                 sets: dict[str, dict[str, Any]], cores: float) -> list[dict]:
    """Every (baseline or executor, workload) pair, one after the other; their records."""
    env = child_env()
    log_dir = Path(args.json_out).parent / "logs"
    records: list[dict] = []
    started = time.perf_counter()

    def note(msg: str) -> None:
        print(f"[bench {time.perf_counter() - started:7.1f}s load {(loadavg() or ['?'])[0]}] {msg}",
              file=sys.stderr, flush=True)

    for workload in workloads:
        names = ([] if args.no_baselines else list(WORKLOADS[workload].baselines)) + executors
        for name in names:
            note(f"{name} {workload} ...")
            if workload == "W4":
                recs = measure_w4(name, options_for(name, sets), args.quick, env, args.timeout)
            else:
                spec = {"name": name, "workload": workload, "quick": args.quick, "cores": cores,
                        "options": options_for(name, sets)}
                recs = spawn_child(spec, env, args.timeout, log_dir)
            for rec in recs:
                if rec.get("status") != "ok":
                    note(f"{name} {workload}: {rec.get('status')}: {str(rec.get('error', ''))[:300]}")
            records.extend(recs)
    return records


def _write(meta: dict[str, Any], records: list[dict], json_out: Path, quick: bool, cores: float) -> None:
    """The JSON lines (to ``json_out`` and stdout), then the table."""
    lines = [json.dumps(meta, default=str)] + [json.dumps(r, default=str) for r in records]
    json_out.parent.mkdir(parents=True, exist_ok=True)
    json_out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print()
    print(f"curator-exec benchmarks ({'quick' if quick else 'full'}; cores={cores:g}; "
          f"load avg start {meta['loadavg_start']} end {meta['loadavg_end']}; git {meta['git']})")
    print(render_table(records))
    print(f"\nJSON lines: {json_out}")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args._child:
        return run_child(json.loads(args._child))

    workloads = [w.strip().upper() for w in args.workloads.split(",") if w.strip()]
    bad = [w for w in workloads if w not in WORKLOADS]
    if bad:
        parser.error(f"unknown workload(s) {', '.join(bad)}; choose from {', '.join(WORKLOADS)}")
    sets = parse_sets(args.sets)
    executors = list(dict.fromkeys(args.executors))
    clash = [e for e in executors if e in BASELINES]
    if clash:
        parser.error(f"{', '.join(clash)} is a baseline name, not an executor")
    if args.cores:
        cores = args.cores
    else:
        from curator_exec_core.capacity import usable_cpus

        cores = float(usable_cpus())

    meta = _meta(args, executors, workloads, sets, cores)
    started = time.perf_counter()
    records = _measure_all(args, executors, workloads, sets, cores)
    meta["loadavg_end"] = loadavg()
    meta["seconds"] = time.perf_counter() - started
    evaluate(records)
    _write(meta, records, Path(args.json_out), args.quick, cores)
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Benchmark curator-exec executors against each other and against no-framework baselines.

    python benchmarks/run.py local [ray_actor_pool ray_data xenna ...]
        [--workloads W1,W2,W3,W4] [--quick] [--json-out FILE] [--set name.key=value ...]

Every (executor, workload) pair runs in its own fresh subprocess, twice: the first
run is "cold" (includes building the executor, importing its plugin and starting
its engine), the second "warm" (steady state, same executor object, same process).
The parent collects one JSON line per measurement from the child's stdout,
evaluates the targets in :data:`TARGETS` and prints the JSON lines and a table.
Executors that are not installed are reported as such and the rest still run.
See ``benchmarks/README.md`` for the workloads and how to read the output.
"""

from __future__ import annotations

import argparse
import ast
import gc
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
if str(REPO) not in sys.path:  # so that ``benchmarks.workloads`` imports (and pickles by reference)
    sys.path.insert(0, str(REPO))

WORKLOADS = ("W1", "W2", "W3", "W4", "W5", "W6", "W7")
WORKLOAD_TITLES = {"W1": "overhead", "W2": "cpu", "W3": "streaming memory", "W4": "import", "W5": "exact dedup",
                   "W6": "shuffle 2 GB", "W7": "checkpoint overhead"}
PLAIN = "plain_loop"  # baseline: a Python loop calling each stage's process() (W1, W2, W3)
POOL = "mp_pool2"  # baseline: multiprocessing.Pool(2) (W2)
STARTUP = "python_startup"  # baseline: `python -c pass` (W4)
DICT = "dict_group"  # baseline: a plain Python dict grouping in one process (W5, W6)
RAYDATA_GROUPBY = "raydata_groupby"  # baseline: a hand-written Ray Data groupby().map_groups() (W5)
BASELINES = (PLAIN, POOL, STARTUP, DICT, RAYDATA_GROUPBY)
#: the baselines measured next to the executors, per workload
WORKLOAD_BASELINES = {"W1": [PLAIN], "W2": [PLAIN, POOL], "W3": [PLAIN], "W4": [STARTUP], "W5": [DICT, RAYDATA_GROUPBY],
                      "W6": [DICT], "W7": []}
#: W7: warm run pairs (without, with a checkpoint), interleaved; the medians are compared
W7_PAIRS = 15
#: workloads whose driver RSS is sampled
RSS_WORKLOADS = ("W3", "W6")
MARK = "@@curator-exec-bench@@ "  # prefix of the child's JSON lines on stdout (engines may print too)
W4_RUNS = 5
CHILD_EXIT_GRACE = 120.0  # seconds a child may spend shutting its engine down after its last result
DEFAULT_JSON_OUT = BENCH_DIR / "results" / "latest.jsonl"
GB = 1_000_000_000
MB = 1_000_000


# -- targets ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rel:
    """A limit relative to a baseline measured in the same run: ``factor * baseline.metric + plus``."""

    baseline: str
    factor: float
    plus: float


@dataclass(frozen=True)
class Target:
    """``record[metric] <op> limit`` for the ``phase`` ("cold" or "warm") measurement."""

    metric: str
    phase: str
    op: str
    limit: float | bool | Rel
    unit: str = ""


_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">=": lambda a, b: a >= b,
    ">": lambda a, b: a > b,
    "==": lambda a, b: a == b,
}
_OP_TEXT = {"<=": "≤", ">=": "≥", "<": "<", ">": ">", "==": "="}

_NO_RAY_IMPORT = (Target("seconds", "warm", "<", 0.3, "s"), Target("ray_imported", "warm", "==", False))
_RSS_UNDER_1GB = (Target("peak_rss_mb", "cold", "<", 1000.0, "MB"), Target("peak_rss_mb", "warm", "<", 1000.0, "MB"))
_W5_RAY = (Target("seconds", "warm", "<=", Rel(RAYDATA_GROUPBY, 1.5, 0.0), "s"),)
_W6_RSS = (Target("peak_rss_mb", "warm", "<", 500.0, "MB"),)
_W7_OVERHEAD = (Target("checkpoint_overhead_pct", "warm", "<=", 10.0, "%"),)

#: Targets per executor and workload. Executors not listed here are measured but not judged.
#: W1 "19.0/3" etc.: the NeMo Curator 1.4.0 cold time of the same workload divided by the improvement we want.
TARGETS: dict[str, dict[str, tuple[Target, ...]]] = {
    "local": {
        "W1": (
            Target("us_per_task_stage", "cold", "<=", Rel(PLAIN, 2.0, 20.0), "µs"),
            Target("us_per_task_stage", "warm", "<=", Rel(PLAIN, 2.0, 20.0), "µs"),
        ),
        "W4": _NO_RAY_IMPORT,
        "W5": (Target("seconds", "warm", "<=", Rel(DICT, 3.0, 0.0), "s"),),
        "W7": _W7_OVERHEAD,
    },
    "ray_actor_pool": {
        "W1": (Target("seconds", "cold", "<=", 19.0 / 3, "s"), Target("us_per_task_stage", "warm", "<=", 50.0, "µs")),
        "W2": (Target("efficiency", "cold", ">=", 0.6), Target("efficiency", "warm", ">=", 0.9)),
        "W3": _RSS_UNDER_1GB,
        "W4": _NO_RAY_IMPORT,  # list_executors() must stay engine-free whatever is installed
        "W5": _W5_RAY,
        "W6": _W6_RSS,
        "W7": _W7_OVERHEAD,
    },
    "ray_data": {
        "W1": (Target("seconds", "cold", "<=", 44.7 / 5, "s"), Target("us_per_task_stage", "warm", "<=", 100.0, "µs")),
        "W2": (Target("efficiency", "cold", ">=", 0.6), Target("efficiency", "warm", ">=", 0.9)),
        "W3": _RSS_UNDER_1GB,
        "W4": _NO_RAY_IMPORT,
        "W5": _W5_RAY,
        "W6": _W6_RSS,
    },
    "xenna": {
        "W1": (Target("seconds", "cold", "<=", 49.3 / 5, "s"),),
        "W2": (Target("efficiency", "cold", ">=", 0.6), Target("efficiency", "warm", ">=", 0.85)),
        "W3": _RSS_UNDER_1GB,
        "W4": _NO_RAY_IMPORT,
        "W6": _W6_RSS,
    },
}


# -- small helpers ------------------------------------------------------------------------------


def loadavg() -> list[float] | None:
    try:
        with open("/proc/loadavg") as f:
            return [float(x) for x in f.read().split()[:3]]
    except (OSError, ValueError):
        try:
            return list(os.getloadavg())
        except (AttributeError, OSError):
            return None


def current_rss_bytes() -> int | None:
    """This process's resident set size (VmRSS), or None where /proc is missing."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def ru_maxrss_bytes() -> int | None:
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return None
    value = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return value if sys.platform == "darwin" else value * 1024


class RssSampler:
    """Samples this process's VmRSS every ``interval`` seconds in a daemon thread and keeps the peak."""

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)

    def start(self) -> RssSampler:
        self.reset()
        self._thread.start()
        return self

    def _sample(self) -> None:
        rss = current_rss_bytes()
        if rss is not None:
            self.samples += 1
            if rss > self.peak:
                self.peak = rss

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def reset(self) -> None:
        self.peak = 0
        self.samples = 0
        self._sample()

    def snapshot(self) -> tuple[int, int]:
        """Take a last sample now and return ``(peak bytes, number of samples)``."""
        self._sample()
        return self.peak, self.samples

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=1)


def usable_cpus() -> float:
    try:
        from curator_exec_core.capacity import usable_cpus as probe

        return float(probe())
    except Exception:
        try:
            return float(len(os.sched_getaffinity(0)))
        except (AttributeError, OSError):
            return float(os.cpu_count() or 1)


def parse_value(text: str) -> Any:
    for parse in (json.loads, ast.literal_eval):
        try:
            return parse(text)
        except (ValueError, SyntaxError):
            continue
    return text


def parse_sets(items: list[str]) -> dict[str, dict[str, Any]]:
    """``["ray_data.max_workers=2", "*.max_retries=1"]`` -> ``{"ray_data": {"max_workers": 2}, "*": {...}}``."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        name, dot, option = key.partition(".")
        if not sep or not dot or not name or not option:
            raise SystemExit(f"--set expects name.key=value (e.g. ray_data.max_workers=2), got {item!r}")
        out.setdefault(name, {})[option] = parse_value(value)
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


# -- child: one (executor or baseline, workload) pair, cold then warm -------------------------------


def _emit(record: dict[str, Any]) -> None:
    sys.stdout.write(MARK + json.dumps(record, default=str) + "\n")
    sys.stdout.flush()


def _ray_state() -> bool | None:
    ray = sys.modules.get("ray")
    if ray is None:
        return None
    try:
        return bool(ray.is_initialized())
    except Exception:
        return None


def _metrics(workload: str, n: int, seconds: float, cores: float) -> dict[str, Any]:
    from benchmarks import workloads as wl

    task_stages = n * wl.STAGES_PER_WORKLOAD
    out: dict[str, Any] = {"tasks": n, "task_stages": task_stages, "seconds": seconds}
    if workload in ("W1", "W7"):
        out["us_per_task_stage"] = seconds / task_stages * 1e6
    elif workload == "W2":
        ideal = task_stages * wl.W2_CPU_SECONDS / cores
        out.update(cores=cores, cpu_seconds_per_task_stage=wl.W2_CPU_SECONDS, ideal_seconds=ideal,
                   efficiency=ideal / seconds if seconds > 0 else None)
    elif workload == "W5":
        out["docs_per_second"] = n / seconds if seconds > 0 else None
    return out


def run_child(spec: dict[str, Any]) -> int:
    """Measure ``spec["name"]`` on ``spec["workload"]``: cold run, then warm run, one JSON line each."""
    from benchmarks import workloads as wl

    name, workload, quick, cores = spec["name"], spec["workload"], spec["quick"], spec["cores"]
    n = wl.task_count(workload, quick)
    stages = wl.make_stages(workload)
    sampler = RssSampler().start() if workload in RSS_WORKLOADS else None
    base = {"kind": "measurement", "executor": name, "workload": workload, "quick": quick, "pid": os.getpid()}
    executor: Any = None
    pool: Any = None
    try:
        if name not in BASELINES:
            import curator_exec_core  # noqa: F401  (the core import is not part of the cold time)
            from curator_exec_core import Pipeline, get_executor
            from curator_exec_core.errors import PluginError, UnknownExecutorError
        for phase in ("cold", "warm"):
            tasks = wl.make_tasks(n, workload)
            gc.collect()
            record: dict[str, Any] = {**base, "phase": phase, "status": "ok", "loadavg": loadavg()}
            rss_before = current_rss_bytes()
            if sampler is not None:
                sampler.reset()
            cpu0 = time.process_time()
            t0 = time.perf_counter()
            construct = 0.0
            if name == PLAIN:
                outputs = wl.plain_loop(stages, tasks)
            elif name == DICT:
                outputs = wl.dict_group(stages, tasks)
            elif name == RAYDATA_GROUPBY:
                outputs = wl.raydata_groupby(stages, tasks)
            elif name == POOL:
                if pool is None:
                    import multiprocessing

                    pool = multiprocessing.Pool(2)
                    construct = time.perf_counter() - t0
                outputs = wl.pool_map(pool, stages, tasks)
            else:
                if executor is None:
                    try:
                        executor = get_executor(name, show_progress=False, **spec["options"])
                    except UnknownExecutorError as exc:
                        _emit({**record, "status": "not_installed", "error": str(exc)})
                        return 0
                    except PluginError as exc:
                        _emit({**record, "status": "broken", "error": str(exc)})
                        return 0
                    construct = time.perf_counter() - t0
                if workload == "W7" and phase == "warm":
                    outputs, extra = _w7_pairs(executor, stages, n)
                    record.update(extra)
                    t0 = time.perf_counter() - extra["seconds_with_checkpoint"]
                else:
                    outputs = Pipeline(f"bench-{workload}", stages=stages).run(executor, initial_tasks=tasks)
            seconds = time.perf_counter() - t0
            record["driver_cpu_seconds"] = time.process_time() - cpu0  # this process only (contention check)
            if sampler is not None:
                peak, samples = sampler.snapshot()
                record.update(peak_rss_mb=peak / MB, rss_samples=samples,
                              rss_before_mb=rss_before / MB if rss_before is not None else None)
            record.update(_metrics(workload, n, seconds, cores))
            record.update(construct_seconds=construct, run_seconds=seconds - construct,
                          ru_maxrss_mb=(ru_maxrss_bytes() or 0) / MB, loadavg_after=loadavg(),
                          ray_initialized=_ray_state())
            if workload in ("W3", "W6"):
                record["intermediate_bytes_expected"] = n * wl.W3_BLOB_BYTES
            record.update(wl.check_outputs(workload, n, outputs))
            failed = getattr(outputs, "failed_tasks", None)
            if failed:
                record["failed_tasks"] = len(failed)
                record["correct"] = False
            del outputs, tasks
            _emit(record)
    except BaseException as exc:  # report, never hang the parent
        import traceback

        _emit({**base, "phase": "cold" if executor is None and pool is None else "warm", "status": "error",
               "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-4000:]})
        return 1
    finally:
        if sampler is not None:
            sampler.stop()
        if pool is not None:
            pool.close()
            pool.join()
        # The results are out; if the engine's shutdown (atexit, non-daemon threads) hangs, leave anyway.
        watchdog = threading.Timer(CHILD_EXIT_GRACE, os._exit, args=(0,))
        watchdog.daemon = True
        watchdog.start()
    return 0


def _w7_pairs(executor: Any, stages: list, n: int) -> tuple[Any, dict[str, Any]]:
    """W7: :data:`W7_PAIRS` warm runs without and with a checkpoint (a new directory each time),
    interleaved so drift hits both alike; the medians and the overhead of the checkpoint."""
    import shutil
    import statistics
    import tempfile

    from benchmarks import workloads as wl
    from curator_exec_core import Pipeline

    pipeline = Pipeline("bench-W7", stages=stages)
    without: list[float] = []
    with_cp: list[float] = []
    outputs: Any = None
    for _ in range(W7_PAIRS):
        tasks = wl.make_tasks(n)
        t0 = time.perf_counter()
        pipeline.run(executor, initial_tasks=tasks)
        without.append(time.perf_counter() - t0)
        folder = tempfile.mkdtemp(prefix="curator-exec-bench-ck-")
        tasks = wl.make_tasks(n)
        t0 = time.perf_counter()
        outputs = pipeline.run(executor, initial_tasks=tasks, checkpoint_path=folder)
        with_cp.append(time.perf_counter() - t0)
        shutil.rmtree(folder, ignore_errors=True)
    a, b = statistics.median(without), statistics.median(with_cp)
    return outputs, {"pairs": W7_PAIRS, "seconds_without_checkpoint": a, "seconds_with_checkpoint": b,
                     "checkpoint_overhead_pct": (b / a - 1.0) * 100.0}


# -- W4: fresh interpreters ------------------------------------------------------------------------

_W4_SCRIPT = r"""
import json, sys, time
t0 = time.perf_counter()
import curator_exec_core
names = [s.name for s in curator_exec_core.list_executors()]
t1 = time.perf_counter()
out = {"seconds": t1 - t0, "installed": names, "ray_imported": "ray" in sys.modules,
       "xenna_imported": "cosmos_xenna" in sys.modules}
name, options = sys.argv[1], json.loads(sys.argv[2])
if name:
    try:
        t2 = time.perf_counter()
        curator_exec_core.get_executor(name, show_progress=False, **options)
        out["get_executor_seconds"] = time.perf_counter() - t2
    except Exception as exc:
        out["get_executor_error"] = f"{type(exc).__name__}: {exc}"
    out["ray_imported_by_get_executor"] = "ray" in sys.modules
print(json.dumps(out))
"""


def _fresh_python(args: list[str], env: dict[str, str], timeout: float) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=timeout, cwd=REPO)
    return time.perf_counter() - t0, proc


def measure_w4(name: str, options: dict[str, Any], quick: bool, env: dict[str, str], timeout: float) -> list[dict]:
    """W4 for ``name`` (or the ``python -c pass`` baseline): cold = first fresh interpreter, warm = median of all."""
    base = {"kind": "measurement", "executor": name, "workload": "W4", "quick": quick, "runs": W4_RUNS}
    runs: list[dict[str, Any]] = []
    load = loadavg()
    for _ in range(W4_RUNS):
        try:
            if name == STARTUP:
                wall, proc = _fresh_python(["-c", "pass"], env, timeout)
                info: dict[str, Any] = {"seconds": wall, "ray_imported": False}
            else:
                wall, proc = _fresh_python(["-c", _W4_SCRIPT, name, json.dumps(options)], env, timeout)
                if proc.returncode != 0:
                    return [{**base, "phase": "cold", "status": "error", "loadavg": load,
                             "error": proc.stderr.strip()[-4000:]}]
                info = json.loads(proc.stdout.strip().splitlines()[-1])
        except (subprocess.SubprocessError, OSError, ValueError, IndexError) as exc:
            return [{**base, "phase": "cold", "status": "error", "loadavg": load, "error": repr(exc)}]
        info["process_seconds"] = wall
        runs.append(info)
    first = runs[0]
    if "get_executor_error" in first and first["get_executor_error"].startswith("UnknownExecutorError"):
        return [{**base, "phase": "cold", "status": "not_installed", "loadavg": load,
                 "error": first["get_executor_error"]}]
    records = []
    for phase in ("cold", "warm"):
        rec: dict[str, Any] = {**base, "phase": phase, "status": "ok", "loadavg": load, "loadavg_after": loadavg()}
        if phase == "cold":
            rec.update({k: v for k, v in first.items() if k != "installed"}, statistic="first run")
        else:
            rec.update(
                statistic=f"median of {W4_RUNS}",
                seconds=statistics.median(r["seconds"] for r in runs),
                process_seconds=statistics.median(r["process_seconds"] for r in runs),
                samples=[round(r["seconds"], 4) for r in runs],
                process_samples=[round(r["process_seconds"], 4) for r in runs],
                ray_imported=any(r["ray_imported"] for r in runs),
            )
            if name != STARTUP:
                rec["installed"] = first.get("installed")
                rec["xenna_imported"] = any(r.get("xenna_imported") for r in runs)
                gets = [r["get_executor_seconds"] for r in runs if "get_executor_seconds" in r]
                if gets:
                    rec["get_executor_seconds"] = statistics.median(gets)
                rec["ray_imported_by_get_executor"] = first.get("ray_imported_by_get_executor")
                if "get_executor_error" in first:  # the import measurement stands; the plugin itself is broken
                    rec["get_executor_error"] = first["get_executor_error"]
        records.append(rec)
    return records


# -- parent ----------------------------------------------------------------------------------------


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def spawn_child(spec: dict[str, Any], env: dict[str, str], timeout: float, log_dir: Path) -> list[dict]:
    """Run one child in its own session (so a hung engine can be killed with its process group)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"{spec['name']}-{spec['workload']}.log"
    base = {"kind": "measurement", "executor": spec["name"], "workload": spec["workload"], "quick": spec["quick"],
            "phase": "cold", "loadavg": loadavg()}
    with open(log, "w") as errf:
        proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--_child", json.dumps(spec)],
                                stdout=subprocess.PIPE, stderr=errf, text=True, env=env, cwd=REPO,
                                start_new_session=True)
        try:
            stdout, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # the child's own process group (start_new_session)
            except ProcessLookupError:
                pass
            stdout, _ = proc.communicate()
            records = _parse_child(stdout)
            if {r.get("phase") for r in records if r.get("status") == "ok"} == {"cold", "warm"}:
                for rec in records:  # both results arrived; only the engine's shutdown hung
                    rec["child_killed_after_results"] = True
                return records
            return records + [{**base, "phase": "warm" if records else "cold", "status": "error",
                               "error": f"timed out after {timeout:g}s (log: {log})"}]
    records = _parse_child(stdout)
    if not records:
        tail = log.read_text(errors="replace")[-3000:]
        records = [{**base, "status": "error", "error": f"child exited {proc.returncode} without results: {tail}"}]
    for rec in records:
        if rec.get("status") != "ok":
            rec.setdefault("log", str(log))
    return records


def _parse_child(stdout: str) -> list[dict]:
    out = []
    for line in (stdout or "").splitlines():
        if line.startswith(MARK):
            try:
                out.append(json.loads(line[len(MARK):]))
            except ValueError:
                pass
    return out


def _limit(target: Target, workload: str, index: dict[tuple[str, str, str], dict]) -> tuple[Any, str | None]:
    """The numeric limit of ``target`` (a :class:`Rel` is resolved against its baseline) and its rule text."""
    if not isinstance(target.limit, Rel):
        return target.limit, None
    rel = target.limit
    text = f"{rel.factor:g}×{rel.baseline}+{rel.plus:g}"
    base = index.get((rel.baseline, workload, target.phase))
    if not base or base.get("status") != "ok" or base.get(target.metric) is None:
        return None, text
    return rel.factor * base[target.metric] + rel.plus, text


def _derive(rec: dict, index: dict[tuple[str, str, str], dict]) -> None:
    """Fields computed across records: engine start (cold - warm) and W2 relative to the Pool baseline."""
    if rec.get("status") != "ok" or rec["workload"] == "W4":
        return
    name, workload, phase = rec["executor"], rec["workload"], rec.get("phase")
    warm = index.get((name, workload, "warm"))
    if phase == "cold" and warm and warm.get("status") == "ok":
        rec["engine_start_seconds"] = rec["seconds"] - warm["seconds"]
    pool = index.get((POOL, workload, phase))
    if workload == "W2" and pool and pool.get("status") == "ok" and rec.get("seconds"):
        rec["speed_vs_mp_pool2"] = pool["seconds"] / rec["seconds"]


def evaluate(records: list[dict]) -> None:
    """Attach ``targets`` (each with its limit, value and verdict) and ``pass`` to every measurement, in place."""
    index = {(r["executor"], r["workload"], r.get("phase")): r for r in records if r.get("kind") == "measurement"}
    for rec in records:
        if rec.get("kind") != "measurement":
            continue
        _derive(rec, index)
        ok_run = rec.get("status") == "ok"
        wrong = ok_run and rec.get("correct") is False
        targets = [t for t in TARGETS.get(rec["executor"], {}).get(rec["workload"], ()) if t.phase == rec.get("phase")]
        results = []
        for t in targets:
            limit, rule = _limit(t, rec["workload"], index)
            value = rec.get(t.metric) if ok_run else None
            verdict = None if value is None or limit is None else bool(_OPS[t.op](value, limit))
            results.append({"metric": t.metric, "op": t.op, "limit": limit, "rule": rule, "unit": t.unit,
                            "value": value, "pass": False if wrong else verdict})
        if results:
            rec["targets"] = results
            verdicts = [r["pass"] for r in results]
            rec["pass"] = False if False in verdicts else (None if None in verdicts else True)
        elif wrong:
            rec["pass"] = False


# -- table -------------------------------------------------------------------------------------


def _fmt_metric(workload: str, rec: dict | None) -> str:
    if not rec or rec.get("status") != "ok":
        return "-"
    if workload == "W1":
        return f"{rec['us_per_task_stage']:.1f}"
    if workload == "W7":
        pct = rec.get("checkpoint_overhead_pct")
        return f"{pct:+.1f}%" if pct is not None else f"{rec['us_per_task_stage']:.1f} µs"
    if workload == "W2":
        return f"{rec['efficiency']:.2f}" if rec.get("efficiency") is not None else "-"
    if workload in ("W3", "W6"):
        return f"{rec['peak_rss_mb']:.0f}" if rec.get("peak_rss_mb") is not None else "-"
    if workload == "W4":
        return "ray" if rec.get("ray_imported") else "no ray"
    if workload == "W5":
        return f"{rec['docs_per_second']:.0f}" if rec.get("docs_per_second") else "-"
    return "-"


_METRIC_UNIT = {"W1": "µs/task-stage", "W2": "efficiency", "W3": "peak RSS MB", "W4": "ray imported?",
                "W5": "docs/s", "W6": "peak RSS MB", "W7": "checkpoint overhead"}


def _num(x: float) -> str:
    return f"{x:.0f}" if abs(x) >= 100 else f"{x:.3g}"


def _fmt_target(t: dict) -> str:
    op = _OP_TEXT[t["op"]]
    limit = t["limit"]
    if isinstance(limit, bool):
        shown = "no" if limit is False else "yes"
        return f"{t['metric']} {op} {shown}" if t["metric"] != "ray_imported" else f"ray {'not ' if not limit else ''}imported"
    if limit is None:
        return f"{t['metric']} {op} {t['rule']} (no baseline)"
    value = _num(limit)
    rule = f" ({t['rule']})" if t.get("rule") else ""
    name = {"us_per_task_stage": "µs", "seconds": "s", "efficiency": "eff", "peak_rss_mb": "MB",
            "checkpoint_overhead_pct": "overhead %"}.get(t["metric"], t["metric"])
    return f"{name} {op} {value}{rule}"


def _notes(workload: str, cold: dict | None, warm: dict | None) -> str:
    rec = warm if warm and warm.get("status") == "ok" else cold
    if not rec or rec.get("status") != "ok":
        return str((cold or {}).get("error", ""))[:60]
    if workload == "W2" and "speed_vs_mp_pool2" in rec:
        return f"warm speed vs Pool(2): {rec['speed_vs_mp_pool2']:.2f}x"
    if workload == "W5" and "unique_documents" in rec:
        return f"{rec['tasks']} documents -> {rec['unique_documents']} distinct"
    if workload == "W6" and "shuffled_bytes" in rec:
        return f"{rec['shuffled_bytes'] / GB:.2f} GB shuffled into {rec['tasks_out']} keys"
    if workload == "W3" and "intermediate_bytes" in rec:
        return f"{rec['intermediate_bytes'] / GB:.2f} GB flowed per run; RSS before warm {rec.get('rss_before_mb', 0):.0f} MB"
    if workload == "W7" and "seconds_without_checkpoint" in rec:
        return (f"median of {rec['pairs']} warm pairs: {rec['seconds_without_checkpoint'] * 1e3:.1f} ms without, "
                f"{rec['seconds_with_checkpoint'] * 1e3:.1f} ms with a checkpoint")
    if workload == "W4":
        parts = [f"process {rec['process_seconds']:.3f}s"] if "process_seconds" in rec else []
        if "get_executor_seconds" in rec:
            parts.append(f"get_executor {rec['get_executor_seconds']:.3f}s"
                         f"{' (imports ray)' if rec.get('ray_imported_by_get_executor') else ''}")
        if "get_executor_error" in rec:
            parts.append(f"get_executor failed: {rec['get_executor_error'][:60]}")
        return "; ".join(parts)
    return ""


def render_table(records: list[dict]) -> str:
    rows: list[list[str]] = []
    order: list[tuple[str, str]] = []
    by_key: dict[tuple[str, str], dict[str, dict]] = {}
    for rec in records:
        if rec.get("kind") != "measurement":
            continue
        key = (rec["executor"], rec["workload"])
        if key not in by_key:
            order.append(key)
            by_key[key] = {}
        by_key[key][rec.get("phase", "cold")] = rec
    header = ["executor", "workload", "cold s", "warm s", "start s", "metric", "cold", "warm", "target", "result",
              "notes"]
    for key in order:
        name, workload = key
        phases = by_key[key]
        cold, warm = phases.get("cold"), phases.get("warm")
        status = next((p.get("status") for p in (cold, warm) if p and p.get("status") != "ok"), "ok")
        targets = []
        verdicts = []
        for phase, rec in (("cold", cold), ("warm", warm)):
            for t in (rec or {}).get("targets", []):
                targets.append(f"{phase}: {_fmt_target(t)}")
                verdicts.append(t["pass"])
            if rec and rec.get("status") == "ok" and rec.get("correct") is False:
                verdicts.append(False)
        if status == "not_installed":
            result = "NOT INSTALLED"
        elif status in ("error", "broken"):
            result = status.upper()
        elif not verdicts:
            result = "-"
        elif any(v is False for v in verdicts):
            result = "FAIL"
        elif any(v is None for v in verdicts):
            result = "n/a"
        else:
            result = "PASS"
        if status == "ok" and any(p and p.get("correct") is False for p in (cold, warm)):
            result += " (wrong output)"

        def secs(rec: dict | None) -> str:
            return f"{rec['seconds']:.3f}" if rec and rec.get("status") == "ok" and "seconds" in rec else "-"

        start = f"{cold['engine_start_seconds']:.3f}" if cold and "engine_start_seconds" in cold else "-"
        rows.append([name, f"{workload} {WORKLOAD_TITLES.get(workload, '')}".strip(), secs(cold), secs(warm), start,
                     _METRIC_UNIT.get(workload, ""), _fmt_metric(workload, cold), _fmt_metric(workload, warm),
                     "; ".join(targets) or "-", result, _notes(workload, cold, warm)])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Benchmark curator-exec executors (W1 overhead, W2 cpu, W3 streaming memory, W4 import, "
                    "W5 exact dedup, W6 shuffle of 2 GB).")
    parser.add_argument("executors", nargs="*", default=["local"], help="executor names (default: local)")
    parser.add_argument("--workloads", default="W1,W2,W3,W4",
                        help="comma-separated subset of W1..W7 (default: W1,W2,W3,W4; the shuffles W5,W6 and the checkpoint "
                             "overhead W7 on request)")
    parser.add_argument("--quick", action="store_true", help="divide task counts by 10 (smoke test)")
    parser.add_argument("--json-out", default=str(DEFAULT_JSON_OUT), help="JSON lines file (default: %(default)s)")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="NAME.KEY=VALUE",
                        help="executor option, e.g. ray_data.max_workers=2 ('*.key=value' for all); repeatable")
    parser.add_argument("--no-baselines", action="store_true", help="skip the plain-loop / Pool / startup baselines")
    parser.add_argument("--cores", type=float, default=None, help="cores for W2's ideal time (default: usable CPUs)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per child process (default: 1800)")
    parser.add_argument("--_child", help=argparse.SUPPRESS)
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
    cores = args.cores or usable_cpus()
    env = child_env()
    json_out = Path(args.json_out)
    log_dir = json_out.parent / "logs"

    try:
        from curator_exec_core import list_executors

        installed = [s.name for s in list_executors()]
    except Exception as exc:  # the children report the real error per executor
        installed = [f"<list_executors failed: {exc!r}>"]
    meta: dict[str, Any] = {
        "kind": "meta", "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "argv": sys.argv[1:],
        "executors": executors, "workloads": workloads, "quick": args.quick, "installed": installed,
        "options": sets, "cores": cores, "cpu_count": os.cpu_count(), "python": sys.version.split()[0],
        "platform": platform.platform(), "git": git_commit(), "loadavg_start": loadavg(),
    }
    records: list[dict] = []
    started = time.perf_counter()

    def note(msg: str) -> None:
        print(f"[bench {time.perf_counter() - started:7.1f}s load {(loadavg() or ['?'])[0]}] {msg}",
              file=sys.stderr, flush=True)

    for workload in workloads:
        names: list[str] = []
        if not args.no_baselines:
            names += WORKLOAD_BASELINES[workload]
        names += executors
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

    meta["loadavg_end"] = loadavg()
    meta["seconds"] = time.perf_counter() - started
    evaluate(records)
    lines = [json.dumps(meta, default=str)] + [json.dumps(r, default=str) for r in records]
    json_out.parent.mkdir(parents=True, exist_ok=True)
    json_out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print()
    print(f"curator-exec benchmarks ({'quick' if args.quick else 'full'}; cores={cores:g}; "
          f"load avg start {meta['loadavg_start']} end {meta['loadavg_end']}; git {meta['git']})")
    print(render_table(records))
    print(f"\nJSON lines: {json_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The child-process protocol of the benchmark harness, and the measuring.

Every (executor or baseline, workload) pair runs in a fresh subprocess,
``python benchmarks/run.py --_child '<spec as JSON>'`` (:func:`spawn_child` starts it,
:func:`run_child` is what it runs): a cold run, then a warm run, one JSON line each on
stdout, prefixed with :data:`MARK` so that what engines print does not get in the way.
W4 (import time) runs fresh interpreters instead (:func:`measure_w4`); W7 (checkpoint
overhead) runs pairs of warm runs (:func:`w7_pairs`). A workload whose record has ``checkpoint``
(W6C) gets a new checkpoint directory each run (:func:`checkpoint_dir`, as W7's checkpointed runs do).
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks import workloads as wl

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
RUN = BENCH_DIR / "run.py"  # the children are ``run.py --_child SPEC``

#: W7: warm run pairs (without, with a checkpoint), interleaved; the medians are compared
W7_PAIRS = 15
MARK = "@@curator-exec-bench@@ "  # prefix of the child's JSON lines on stdout (engines may print too)
W4_RUNS = 5
CHILD_EXIT_GRACE = 120.0  # seconds a child may spend shutting its engine down after its last result
MB = 1_000_000
#: where the checkpoint directories of W6C and W7 are made (default: ``tempfile.gettempdir()``)
CHECKPOINT_DIR_ENV = "BENCH_CHECKPOINT_DIR"


# -- measuring ------------------------------------------------------------------------------------


def loadavg() -> list[float] | None:
    try:
        with open("/proc/loadavg") as f:
            return [float(x) for x in f.read().split()[:3]]
    except (OSError, ValueError):
        try:
            return list(os.getloadavg())
        except (AttributeError, OSError):
            return None


def rss_parts() -> dict[str, int]:
    """This process's ``VmRSS`` and its parts ``RssAnon`` (private) and ``RssShmem`` (shared memory it
    touched: a Ray driver that puts or gets objects maps the object store's pages), in bytes; empty
    where /proc is missing."""
    parts: dict[str, int] = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                key = line.split(":", 1)[0]
                if key in ("VmRSS", "RssAnon", "RssShmem"):
                    parts[key] = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return parts


def current_rss_bytes() -> int | None:
    """This process's resident set size (VmRSS), or None where /proc is missing."""
    return rss_parts().get("VmRSS")


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
        #: peak private memory, and the shared-memory part of the RSS at its peak
        self.peak_anon = 0
        self.shmem_at_peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)

    def start(self) -> RssSampler:
        self.reset()
        self._thread.start()
        return self

    def _sample(self) -> None:
        parts = rss_parts()
        rss = parts.get("VmRSS")
        if rss is not None:
            self.samples += 1
            self.peak_anon = max(self.peak_anon, parts.get("RssAnon", 0))
            if rss > self.peak:
                self.peak = rss
                self.shmem_at_peak = parts.get("RssShmem", 0)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def reset(self) -> None:
        self.peak = 0
        self.samples = 0
        self.peak_anon = self.shmem_at_peak = 0
        self._sample()

    def snapshot(self) -> tuple[int, int]:
        """Take a last sample now and return ``(peak bytes, number of samples)``."""
        self._sample()
        return self.peak, self.samples

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=1)


def disk_bytes(folder: str) -> int:
    """What ``folder`` occupies on disk (allocated blocks, as ``du`` counts them; symbolic links not followed)."""
    total = 0
    for root, dirs, files in os.walk(folder):
        for name in (*dirs, *files):
            try:
                st = os.lstat(os.path.join(root, name))
            except OSError:
                continue
            total += getattr(st, "st_blocks", 0) * 512 or st.st_size
    return total


@contextlib.contextmanager
def checkpoint_dir(wanted: bool = True) -> Iterator[str | None]:
    """A new empty directory for one run's ``checkpoint_path`` (None if not ``wanted``), under
    ``$BENCH_CHECKPOINT_DIR`` or the temporary directory; removed afterwards, also after an error."""
    if not wanted:
        yield None
        return
    root = os.environ.get(CHECKPOINT_DIR_ENV) or tempfile.gettempdir()
    os.makedirs(root, exist_ok=True)
    folder = tempfile.mkdtemp(prefix="curator-exec-bench-ck-", dir=root)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


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
    task_stages = n * (wl.W8_STAGES if workload == "W8" else wl.STAGES_PER_WORKLOAD)
    out: dict[str, Any] = {"tasks": n, "task_stages": task_stages, "seconds": seconds}
    if workload in ("W1", "W7", "W8"):
        out["us_per_task_stage"] = seconds / task_stages * 1e6
    elif workload == "W2":
        ideal = task_stages * wl.W2_CPU_SECONDS / cores
        out.update(cores=cores, cpu_seconds_per_task_stage=wl.W2_CPU_SECONDS, ideal_seconds=ideal,
                   efficiency=ideal / seconds if seconds > 0 else None)
    elif workload == "W5":
        out["docs_per_second"] = n / seconds if seconds > 0 else None
    return out


class _Subject:
    """What a child measures: a baseline, or an executor built on its first run (and kept for the next)."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.name: str = spec["name"]
        self.options: dict[str, Any] = spec["options"]
        self.executor: Any = None
        self.pool: Any = None
        if self.name not in wl.BASELINES:  # the core import is not part of the cold time
            from curator_exec_core import Pipeline, get_executor
            from curator_exec_core.errors import PluginError, UnknownExecutorError

            self._pipeline, self._get_executor = Pipeline, get_executor
            self._not_installed, self._broken = UnknownExecutorError, PluginError

    @property
    def started(self) -> bool:
        return self.executor is not None or self.pool is not None

    def run(self, workload: str, stages: list, tasks: Any, record: dict[str, Any],
            t0: float, checkpoint: str | None = None) -> tuple[Any, float, float] | None:
        """One run: ``(outputs, seconds spent building the executor or pool, start time)``; None (and
        a record emitted) when the executor is not installed or its plugin is broken. ``checkpoint``:
        the executor's run gets it as ``checkpoint_path`` (the baselines have none)."""
        if self.name == wl.PLAIN:
            return wl.plain_loop(stages, tasks), 0.0, t0
        if self.name == wl.DICT:
            return wl.dict_group(stages, tasks), 0.0, t0
        if self.name == wl.RAYDATA_GROUPBY:
            return wl.raydata_groupby(stages, tasks), 0.0, t0
        construct = 0.0
        if self.name == wl.POOL:
            if self.pool is None:
                import multiprocessing

                self.pool = multiprocessing.Pool(2)
                construct = time.perf_counter() - t0
            return wl.pool_map(self.pool, stages, tasks), construct, t0
        if self.executor is None:
            if workload == "W9" and self.name == "local":
                self.options = {"shuffle_memory_budget": wl.W9_BUDGET, **self.options}
            if not self._build_executor(record):
                return None
            construct = time.perf_counter() - t0
        if workload == "W7" and record["phase"] == "warm":
            outputs, extra = w7_pairs(self.executor, stages, len(tasks))
            record.update(extra)
            return outputs, construct, time.perf_counter() - extra["seconds_with_checkpoint"]
        if workload == "W9" and "shuffle_memory_budget" in self.options:
            record["shuffle_memory_budget"] = self.options["shuffle_memory_budget"]
        pipeline = self._pipeline(f"bench-{workload}", stages=stages)
        # W8: the writer has written the outputs; they are dropped where they are made
        return pipeline.run(self.executor, initial_tasks=tasks, return_outputs=workload != "W8",
                            checkpoint_path=checkpoint), construct, t0

    def w1_reference(self) -> float:
        """W8's comparison: µs per task-stage of W1 (its stages and size) on this executor, already
        started, in this process: the second of two runs."""
        stages = wl.make_stages("W1")
        pipeline = self._pipeline("bench-W8-W1", stages=stages)
        seconds = 0.0
        for _ in range(2):
            tasks = wl.make_tasks(wl.W1_TASKS)
            t0 = time.perf_counter()
            pipeline.run(self.executor, initial_tasks=tasks)
            seconds = time.perf_counter() - t0
        return seconds / (wl.W1_TASKS * wl.STAGES_PER_WORKLOAD) * 1e6

    def _build_executor(self, record: dict[str, Any]) -> bool:
        try:
            self.executor = self._get_executor(self.name, show_progress=False, **self.options)
        except self._not_installed as exc:
            _emit({**record, "status": "not_installed", "error": str(exc)})
            return False
        except self._broken as exc:
            _emit({**record, "status": "broken", "error": str(exc)})
            return False
        return True

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
            self.pool.join()


def _measure(subject: _Subject, spec: dict[str, Any], phase: str, stages: list, n: int,
             sampler: RssSampler | None, base: dict[str, Any], extra: dict[str, Any] | None = None,
             checkpoint: str | None = None) -> bool:
    """One phase: run, measure, check the outputs and emit the record; False when there is nothing to measure.
    ``checkpoint``: the run's checkpoint directory (new and empty; the record gets its size after the run)."""
    workload = spec["workload"]
    data = wl.WORKLOADS[workload].data  # W6C: W6's tasks, figures and check
    tasks = wl.make_source(data, n, spec["name"])  # a list, or a generator read as the run goes
    gc.collect()
    record: dict[str, Any] = {**base, "phase": phase, "status": "ok", "loadavg": loadavg(), **(extra or {})}
    if not isinstance(tasks, list):
        record["source"] = "generator"
    rss_before = current_rss_bytes()
    if sampler is not None:
        sampler.reset()
    cpu0 = time.process_time()
    ran = subject.run(workload, stages, tasks, record, time.perf_counter(), checkpoint)
    if ran is None:
        return False
    outputs, construct, t0 = ran
    seconds = time.perf_counter() - t0
    record["driver_cpu_seconds"] = time.process_time() - cpu0  # this process only (contention check)
    if sampler is not None:
        peak, samples = sampler.snapshot()
        record.update(peak_rss_mb=peak / MB, rss_samples=samples, peak_rss_anon_mb=sampler.peak_anon / MB,
                      rss_shmem_at_peak_mb=sampler.shmem_at_peak / MB,
                      rss_before_mb=rss_before / MB if rss_before is not None else None)
        if rss_before is not None:  # what the run added to the driver (W8's metric)
            record["rss_growth_mb"] = (peak - rss_before) / MB
    record.update(_metrics(data, n, seconds, spec["cores"]))
    record.update(construct_seconds=construct, run_seconds=seconds - construct,
                  ru_maxrss_mb=(ru_maxrss_bytes() or 0) / MB, loadavg_after=loadavg(),
                  ray_initialized=_ray_state())
    if data in ("W3", "W6", "W9", "W6R"):
        record["intermediate_bytes_expected"] = n * wl.W3_BLOB_BYTES
    if checkpoint is not None:
        ck = (getattr(outputs, "metrics", None) or {}).get("checkpoint") or {}
        record.update(checkpoint_mb=disk_bytes(checkpoint) / MB, resumed_tasks=ck.get("resumed_tasks"),
                      checkpoint_root=os.path.dirname(checkpoint))
    record.update(wl.check_outputs(data, n, outputs, stages))
    failed = getattr(outputs, "failed_tasks", None)
    if failed:
        record["failed_tasks"] = len(failed)
        record["correct"] = False
    del outputs, tasks
    _emit(record)
    return True


def run_child(spec: dict[str, Any]) -> int:
    """Measure ``spec["name"]`` on ``spec["workload"]``: cold run, then warm run, one JSON line each."""
    workload = spec["workload"]
    work = wl.WORKLOADS[workload]
    n = wl.task_count(work.data, spec["quick"], spec["name"])
    stages = wl.make_stages(work.data) if workload != "W8" else []  # W8: new stages (and directory) per run
    sampler = RssSampler().start() if work.sample_rss else None
    base = {"kind": "measurement", "executor": spec["name"], "workload": workload, "quick": spec["quick"],
            "pid": os.getpid()}
    subject: _Subject | None = None
    try:
        subject = _Subject(spec)
        if workload == "W8":
            return run_w8(subject, spec, n, sampler, base)
        for phase in ("cold", "warm"):
            with checkpoint_dir(work.checkpoint and spec["name"] not in wl.BASELINES) as folder:
                if not _measure(subject, spec, phase, stages, n, sampler, base, checkpoint=folder):
                    return 0
    except BaseException as exc:  # report, never hang the parent
        import traceback

        _emit({**base, "phase": "warm" if subject is not None and subject.started else "cold", "status": "error",
               "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-4000:]})
        return 1
    finally:
        if sampler is not None:
            sampler.stop()
        if subject is not None:
            subject.close()
        # The results are out; if the engine's shutdown (atexit, non-daemon threads) hangs, leave anyway.
        watchdog = threading.Timer(CHILD_EXIT_GRACE, os._exit, args=(0,))
        watchdog.daemon = True
        watchdog.start()
    return 0


def run_w8(subject: _Subject, spec: dict[str, Any], n: int, sampler: RssSampler | None,
           base: dict[str, Any]) -> int:
    """W8: a run at ``n / W8_SMALL_DIVISOR`` tasks that starts the engine (cold), the same again
    (warm: the engine started), W1 on the same executor for comparison, then the full ``n`` (``large``).
    Each run writes to a new directory (new stages), checked and removed after it."""
    from benchmarks import w8_scale

    small = max(1, n // wl.W8_SMALL_DIVISOR)
    batch = wl.W8_WRITE_BATCH // wl.W8_SMALL_DIVISOR if spec["quick"] else wl.W8_WRITE_BATCH
    extra: dict[str, Any] = {"small_tasks": small, "large_tasks": n, "write_batch": batch}
    for phase, tasks in (("cold", small), ("warm", small), ("large", n)):
        if phase == "warm":
            extra["w1_us_per_task_stage"] = subject.w1_reference()
        stages = w8_scale.make_stages(batch)
        out_dir = stages[-1].path  # type: ignore[attr-defined]
        try:
            if not _measure(subject, spec, phase, stages, tasks, sampler, base, extra):
                return 0
        finally:  # the check removes it; after an error it is still there
            shutil.rmtree(out_dir, ignore_errors=True)
    return 0


def w7_pairs(executor: Any, stages: list, n: int) -> tuple[Any, dict[str, Any]]:
    """W7: :data:`W7_PAIRS` warm runs without and with a checkpoint (a new directory each time),
    interleaved so drift hits both alike; the medians and the overhead of the checkpoint."""
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
        tasks = wl.make_tasks(n)
        with checkpoint_dir() as folder:
            t0 = time.perf_counter()
            outputs = pipeline.run(executor, initial_tasks=tasks, checkpoint_path=folder)
            with_cp.append(time.perf_counter() - t0)
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


def _w4_runs(name: str, options: dict[str, Any], env: dict[str, str], timeout: float,
             fail: dict[str, Any]) -> list[dict[str, Any]] | dict[str, Any]:
    """:data:`W4_RUNS` fresh interpreters; their results, or the error record (``fail`` plus the error)."""
    runs: list[dict[str, Any]] = []
    for _ in range(W4_RUNS):
        try:
            if name == wl.STARTUP:
                wall, proc = _fresh_python(["-c", "pass"], env, timeout)
                info: dict[str, Any] = {"seconds": wall, "ray_imported": False}
            else:
                wall, proc = _fresh_python(["-c", _W4_SCRIPT, name, json.dumps(options)], env, timeout)
                if proc.returncode != 0:
                    return {**fail, "error": proc.stderr.strip()[-4000:]}
                info = json.loads(proc.stdout.strip().splitlines()[-1])
        except (subprocess.SubprocessError, OSError, ValueError, IndexError) as exc:
            return {**fail, "error": repr(exc)}
        info["process_seconds"] = wall
        runs.append(info)
    return runs


def _w4_warm(name: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The warm W4 figures: medians over all runs."""
    first = runs[0]
    rec: dict[str, Any] = dict(
        statistic=f"median of {W4_RUNS}",
        seconds=statistics.median(r["seconds"] for r in runs),
        process_seconds=statistics.median(r["process_seconds"] for r in runs),
        samples=[round(r["seconds"], 4) for r in runs],
        process_samples=[round(r["process_seconds"], 4) for r in runs],
        ray_imported=any(r["ray_imported"] for r in runs),
    )
    if name != wl.STARTUP:
        rec["installed"] = first.get("installed")
        rec["xenna_imported"] = any(r.get("xenna_imported") for r in runs)
        gets = [r["get_executor_seconds"] for r in runs if "get_executor_seconds" in r]
        if gets:
            rec["get_executor_seconds"] = statistics.median(gets)
        rec["ray_imported_by_get_executor"] = first.get("ray_imported_by_get_executor")
        if "get_executor_error" in first:  # the import measurement stands; the plugin itself is broken
            rec["get_executor_error"] = first["get_executor_error"]
    return rec


def measure_w4(name: str, options: dict[str, Any], quick: bool, env: dict[str, str], timeout: float) -> list[dict]:
    """W4 for ``name`` (or the ``python -c pass`` baseline): cold = first fresh interpreter, warm = median of all."""
    base = {"kind": "measurement", "executor": name, "workload": "W4", "quick": quick, "runs": W4_RUNS}
    load = loadavg()
    runs = _w4_runs(name, options, env, timeout, {**base, "phase": "cold", "status": "error", "loadavg": load})
    if isinstance(runs, dict):
        return [runs]
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
            rec.update(_w4_warm(name, runs))
        records.append(rec)
    return records


# -- parent side: starting a child and reading its lines --------------------------------------------


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
        proc = subprocess.Popen([sys.executable, str(RUN), "--_child", json.dumps(spec)],
                                stdout=subprocess.PIPE, stderr=errf, text=True, env=env, cwd=REPO,
                                start_new_session=True)
        try:
            stdout, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            return _killed(proc, base, timeout, log)
    records = _parse_child(stdout)
    if not records:
        tail = log.read_text(errors="replace")[-3000:]
        records = [{**base, "status": "error", "error": f"child exited {proc.returncode} without results: {tail}"}]
    for rec in records:
        if rec.get("status") != "ok":
            rec.setdefault("log", str(log))
    return records


def _killed(proc: subprocess.Popen, base: dict[str, Any], timeout: float, log: Path) -> list[dict]:
    """A child past its timeout: kill its process group; keep what it had reported."""
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


def _parse_child(stdout: str) -> list[dict]:
    out = []
    for line in (stdout or "").splitlines():
        if line.startswith(MARK):
            try:
                out.append(json.loads(line[len(MARK):]))
            except ValueError:
                pass
    return out

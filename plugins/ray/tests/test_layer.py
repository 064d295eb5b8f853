"""The Ray layer's own pieces: chunking, the live-stage registry, the engine door, the reapers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from curator_exec_core.errors import EngineCompatibilityError, check_engine
from curator_exec_ray import _compat
from curator_exec_ray import teardown as workers
from curator_exec_ray.chunking import ChunkSizer, auto_chunk_size, split
from curator_exec_ray.reaper import reap

pytestmark = pytest.mark.timeout(300)


# -- chunking ---------------------------------------------------------------------------------


def test_auto_chunk_size_is_one_rule_within_each_engines_bounds() -> None:
    assert auto_chunk_size(2_000, 1) == 125  # 16 chunks for one worker
    assert auto_chunk_size(2_000, 8) == 63  # 4 chunks per worker of the widest stage
    assert auto_chunk_size(3, 1) == 1 and auto_chunk_size(0, 1) == 1
    assert auto_chunk_size(10, 1, min_size=16) == 16
    assert auto_chunk_size(10**7, 1) == 256 and auto_chunk_size(10**7, 1, max_size=1000) == 1000


@pytest.mark.parametrize("n, size, parts", [(0, 5, None), (1, 5, None), (10, 3, None), (40, 16, None),
                                            (100, 1, 7), (7, 100, 3)])
def test_split_keeps_order_and_every_item_once_in_near_equal_parts(n: int, size: int, parts: int | None) -> None:
    items = list(range(n))
    out = split(items, size, max_parts=parts)
    assert [x for part in out for x in part] == items
    assert all(out) and (max(map(len, out)) - min(map(len, out)) <= 1 if out else n == 0)
    if parts is None:
        assert all(len(p) <= size for p in out)
    else:
        assert len(out) <= parts


def test_chunk_sizer_aims_at_a_fixed_time_per_call() -> None:
    sizer = ChunkSizer(2, first=4)
    assert sizer.size(0) == 4
    sizer.observe(0, 100, 0.1)  # 1 ms a task -> 200 tasks make 200 ms
    assert sizer.size(0) == 200 and sizer.size(1) == 4
    sizer.observe(1, 10, 100.0)  # very slow tasks: never below one
    assert sizer.size(1) == 1
    assert ChunkSizer(1, fixed=7).size(0) == 7


# -- the live-stage registry --------------------------------------------------------------------


class _Live:
    def __init__(self, run_id: str, fail: bool = False, index: int = 0) -> None:
        self.run_id = run_id
        self.index = index
        self.name = f"stage-{run_id}"
        self.fail = fail
        self.torn = 0

    def teardown(self) -> None:
        self.torn += 1
        if self.fail:
            raise RuntimeError("boom in teardown")


def test_teardown_live_tears_down_one_run_once_and_refuses_late_stages() -> None:
    a, b, other = _Live("run-a"), _Live("run-a", fail=True), _Live("run-b")
    assert all(workers.register(s) for s in (a, b, other))
    problems = workers.teardown_live(None, "run-a")
    assert (a.torn, b.torn, other.torn) == (1, 1, 0)
    assert len(problems) == 1 and "boom in teardown" in problems[0] and "stage-run-a" in problems[0]
    assert workers.closing("run-a", 0) and not workers.register(_Live("run-a"))  # late: no setup
    assert workers.teardown_live(None, "run-a") == [] and a.torn == 1  # nothing twice
    workers.teardown_live(None, "run-b")
    assert other.torn == 1


def test_teardown_of_one_segment_leaves_the_run_s_later_stages_alone() -> None:
    first, later = _Live("run-c", index=0), _Live("run-c", index=2)
    assert workers.register(first) and workers.register(later)
    assert workers.teardown_live(None, "run-c", [0, 1]) == []
    assert (first.torn, later.torn) == (1, 0)
    assert not workers.register(_Live("run-c", index=1))  # a late worker of the stopped segment
    assert workers.register(_Live("run-c", index=3))  # the next segment's workers set up
    workers.teardown_live(None, "run-c")
    assert later.torn == 1 and workers.closing("run-c", 5)


# -- the engine door ----------------------------------------------------------------------------


def test_check_engine_names_the_version_the_range_and_every_missing_name() -> None:
    with pytest.raises(EngineCompatibilityError) as info:
        check_engine("Ray", "9.9.9", ">=2.46,<3", {"ok": lambda: 1, "gone": lambda: None,
                                                   "raises": lambda: __import__("no_such_module_xyz")},
                     package="ray")
    text = str(info.value)
    assert "Ray 9.9.9" in text and ">=2.46,<3" in text and "gone" in text and "raises" in text
    assert "'ok'" not in text and "pip install 'ray>=2.46,<3'" in text


def test_ray_layer_door_fails_at_once_when_a_private_name_moved(monkeypatch: pytest.MonkeyPatch) -> None:
    from ray._private import services

    monkeypatch.setattr(_compat.check, "done", False)
    _compat.check()  # the installed Ray has every name
    monkeypatch.setattr(_compat.check, "done", False)
    monkeypatch.delattr(services, "canonicalize_bootstrap_address")
    with pytest.raises(EngineCompatibilityError, match="canonicalize_bootstrap_address"):
        _compat.check()


# -- reaping ------------------------------------------------------------------------------------


def test_reap_kills_a_process_that_ignores_sigterm_by_pid() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import signal, time\n"
                              "signal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('ready', flush=True)\n"
                              "time.sleep(300)"], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        proc = psutil.Process(child.pid)
        os.kill(child.pid, signal.SIGTERM)  # ignored
        time.sleep(0.3)
        assert proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
        assert reap([proc], grace=0.2) == [child.pid]
        assert not proc.is_running()  # gone (reap waited for it, so it is not even a zombie)
    finally:
        if child.poll() is None:
            child.kill()


STUCK_WORKER = """
import json, os, sys, threading, time
import ray
from curator_exec_ray import session

session.ensure_ray(num_cpus=1, include_dashboard=False)

@ray.remote(num_cpus=0)
class Stuck:
    # like Xenna 0.3's StageWorker: a non-daemon thread keeps the process from exiting,
    # and SIGTERM is ignored
    def __init__(self):
        import signal
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        threading.Thread(target=lambda: time.sleep(3600), daemon=False).start()
    def pid(self):
        return os.getpid()

actor = Stuck.remote()
print("PID", ray.get(actor.pid.remote()), flush=True)
if sys.argv[1] == "shutdown":
    assert session.shutdown_if_owned()
# else: the process just exits; the exit handler stops the Ray it started
"""


@pytest.mark.parametrize("how", ["shutdown", "exit"])
def test_no_process_of_a_cluster_we_started_outlives_it(tmp_path, how: str) -> None:
    """The orphans CI found after the xenna suite: a worker stuck in threading._shutdown outlives
    its raylet with parent PID 1. Stopping a Ray we started (explicitly or at exit) kills it by PID."""
    script = tmp_path / "stuck.py"
    script.write_text(textwrap.dedent(STUCK_WORKER))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    out = subprocess.run([sys.executable, str(script), how], capture_output=True, text=True, timeout=240, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    pid = int(next(line.split()[1] for line in out.stdout.splitlines() if line.startswith("PID ")))
    deadline = time.monotonic() + 10
    while psutil.pid_exists(pid) and time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                break
        except psutil.NoSuchProcess:
            break
        time.sleep(0.1)
    alive = psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    if alive:
        os.kill(pid, signal.SIGKILL)  # do not leave it behind either way
    assert not alive, f"worker {pid} outlived the cluster that started it"

"""The Ray layer's housekeeping: the engines' chatter routed to a file, and what a SIGKILLed driver's
cluster leaves behind reaped by the next driver (no Ray needed for these)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from typing import Any

import psutil
import pytest

from curator_exec_ray import engine_logs, reaper


def _sleeper() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])


def _record(folder: str, driver: psutil.Process, procs: list[psutil.Process]) -> str:
    path = os.path.join(folder, f"driver-{driver.pid}.json")
    with open(path, "w") as f:
        json.dump({"driver": [driver.pid, driver.create_time()],
                   "processes": [[p.pid, p.create_time()] for p in procs]}, f)
    return path


def test_the_next_driver_reaps_what_a_dead_drivers_cluster_left(tmp_path: Any, monkeypatch: Any) -> None:
    """A driver that started a cluster and was SIGKILLed leaves Ray's agents running (parent PID 1);
    the next driver kills the recorded processes that still run, and leaves a live driver's alone."""
    monkeypatch.setattr(reaper, "records_dir", lambda: str(tmp_path))
    dead_driver, orphan, live_child = _sleeper(), _sleeper(), _sleeper()
    try:
        dead = psutil.Process(dead_driver.pid)
        orphan_p, live_p = psutil.Process(orphan.pid), psutil.Process(live_child.pid)
        dead_record = _record(str(tmp_path), dead, [orphan_p])
        live_record = _record(str(tmp_path), psutil.Process(), [live_p])  # this process: alive
        dead_driver.kill()
        dead_driver.wait()
        assert reaper.reap_dead_drivers_clusters() == [orphan.pid]
        assert orphan.wait(timeout=10) is not None
        assert live_child.poll() is None  # its driver runs: not ours to kill
        assert not os.path.exists(dead_record) and os.path.exists(live_record)
    finally:
        for p in (dead_driver, orphan, live_child):
            if p.poll() is None:
                p.kill()
                p.wait()


def test_a_recycled_pid_is_never_killed(tmp_path: Any, monkeypatch: Any) -> None:
    monkeypatch.setattr(reaper, "records_dir", lambda: str(tmp_path))
    other = _sleeper()
    try:
        p = psutil.Process(other.pid)
        path = os.path.join(str(tmp_path), "driver-1.json")
        with open(path, "w") as f:  # a dead driver whose "process" now has another start time
            json.dump({"driver": [2**22 + 7, 1.0], "processes": [[p.pid, p.create_time() - 100]]}, f)
        assert reaper.reap_dead_drivers_clusters() == []
        assert other.poll() is None and not os.path.exists(path)
    finally:
        other.kill()
        other.wait()


class _Inner:
    def __init__(self) -> None:
        self.got: list[dict] = []

    def __call__(self, data: dict) -> None:
        self.got.append(data)


@pytest.fixture
def engine_file(tmp_path: Any) -> Any:
    path = str(tmp_path / "engine.log")
    saved = engine_logs._file.path
    engine_logs._file.open(path)
    engine_logs.set_mode("file")
    yield path
    engine_logs._file.path = None
    if saved:
        engine_logs._file.open(saved)


def test_forwarded_worker_lines_engine_chatter_to_the_file_the_rest_printed(engine_file: str) -> None:
    inner = _Inner()
    wrapped = engine_logs._WorkerLines(inner)
    lines = [
        "2026-12-02 07:07:15.652 | WARNING  | cosmos_xenna.pipelines.private.resources:get_local_gpu_info:645 - NVML",
        "2026-12-02 07:07:15.700 | INFO     | cosmos_xenna.ray_utils.stage_worker:setup:1 - set up",
        "2026-12-02 07:07:15,594\tINFO worker.py:1691 -- Using address 1.2.3.4:5 set in RAY_ADDRESS",
        "a stage's own print",
        "2026-12-02 07:07:16.000 | ERROR    | cosmos_xenna.pipelines.private.streaming:run:1 - boom",
        "Traceback (most recent call last):",
    ]
    wrapped({"pid": 42, "actor_name": "Stage 00 - add_one", "lines": lines, "is_err": True})
    assert [d["lines"] for d in inner.got] == [lines[3:]]
    wrapped({"pid": "raylet", "lines": ["Task was killed due to the node running low on memory."]})
    assert inner.got[-1]["pid"] == "raylet"  # the raylet's messages are always printed
    for handler in logging.getLogger(engine_logs.ENGINE_LOGGER).handlers:
        handler.flush()
    with open(engine_file) as f:
        text = f.read()
    assert all(line in text for line in lines) and "(Stage 00 - add_one pid=42" in text
    engine_logs.set_mode("console")
    try:
        wrapped({"pid": 43, "lines": lines[:1], "is_err": True})
        assert inner.got[-1]["lines"] == lines[:1]
    finally:
        engine_logs.set_mode("file")


def test_ray_records_below_error_go_to_the_file_errors_to_both(engine_file: str) -> None:
    handler = logging.StreamHandler()
    handler.addFilter(engine_logs._DIVERT)
    info = logging.LogRecord("ray.data", logging.WARNING, "x", 1, "The Dataset job will hang", None, None)
    error = logging.LogRecord("ray.data", logging.ERROR, "x", 1, "a real error", None, None)
    assert handler.filter(info) is False and handler.filter(error) is True
    with open(engine_file) as f:
        text = f.read()
    assert "will hang" in text and "a real error" in text

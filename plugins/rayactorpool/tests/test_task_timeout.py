"""``task_timeout`` on a worker process: a call stuck in C code (the watchdog's raise cannot reach
it) ends its actor after the grace period; the pool replaces the actor and requeues the chunk, and
the replacement fails the timed-out task without calling the stage again. Real Ray."""

from __future__ import annotations

from typing import Any

from rap_stages import SleepsInC, read

from curator_exec_core import Task
from curator_exec_core.runner.timeout import KILL_GRACE
from curator_exec_rayactorpool import RayActorPoolExecutor


def test_a_call_stuck_in_c_ends_its_worker_and_fails_its_task(ray_attached: Any, tmp_path: Any) -> None:
    executor = RayActorPoolExecutor(config={"pool_size": 1}, show_progress=False, ignore_failures=True,
                                    task_timeout=1.0)
    got = executor.run([SleepsInC(str(tmp_path), value=3)], [Task(data=i) for i in range(6)])
    assert sorted(t.data for t in got) == [0, 1, 2, 4, 5]
    [failed] = got.failed_tasks
    assert failed.task_id == "3" and "did not stop: its worker was ended" in failed.error
    calls = read(tmp_path / "calls.jsonl")
    stuck = [c for c in calls if c["task"] == "3"]
    assert len(stuck) == 1, "the replacement does not call the stage on the task that ended its worker again"
    assert len({c["pid"] for c in calls}) >= 2, "the stuck call's worker was replaced"
    assert got.metrics["seconds"] < 60 + KILL_GRACE

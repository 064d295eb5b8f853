"""What a user relies on, on a real local Ray cluster with real Cosmos-Xenna."""

from __future__ import annotations

import math
import os
from typing import Any

import pytest
from xenna_test_stages import Sized, SleepsInC, Stamp, stamps

from curator_exec_core import PlanError, StageFailedError, Task, get_executor
from curator_exec_core.testing import LifecycleLog
from curator_exec_core.testing.stages import AddOne, FailOn, Recorded
from curator_exec_ray.testing import assert_quiet, quiet_run

pytestmark = pytest.mark.timeout(400)

TOUCHED = ("RAY_ADDRESS", "RAY_MAX_LIMIT_FROM_API_SERVER", "RAY_MAX_LIMIT_FROM_DATA_SOURCE",
           "RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES", "RAY_ENABLE_UV_RUN_RUNTIME_ENV")


def ints(n: int) -> list[Task]:
    return [Task(data=i) for i in range(n)]


def xenna_actors(classes: tuple[str, ...] = ("StageWorker", "NodeResourceMonitor"), detail: bool = False) -> list[Any]:
    import ray
    from ray.util.state import list_actors

    job = ray.get_runtime_context().get_job_id()
    out = []
    for cls in classes:
        out += list_actors(address=ray.get_runtime_context().gcs_address,
                           filters=[("class_name", "=", cls), ("job_id", "=", job)], limit=10000, detail=detail)
    return out


def live_ray_processes(pids: list[int]) -> list[int]:
    import psutil

    alive = []
    for pid in pids:
        try:
            p = psutil.Process(pid)
            if p.status() != psutil.STATUS_ZOMBIE and " ".join(p.cmdline()).startswith("ray::"):
                alive.append(pid)
        except psutil.NoSuchProcess:
            pass
    return alive


def test_two_core_defaults_capacity_and_run(ray_session: Any) -> None:
    """NeMo Curator's defaults fail here (2 x 0.95 floors to 1 CPU); ours fit by fractional CPUs."""
    import ray

    ex = get_executor("xenna", show_progress=False)
    cap = ex.capacity()
    nodes = {n["NodeID"]: n for n in ray.nodes() if n.get("Alive")}
    for node in cap.nodes:
        assert node.cpus == math.floor(nodes[node.node_id]["Resources"]["CPU"] * 0.95)
    stages = [AddOne("one", cpus=1.0), AddOne("two", cpus=1.0)]
    plan = ex.plan(stages, cap)
    assert sum(sp.resources.cpus * sp.workers for sp in plan.stages) <= cap.total_cpus + 1e-9
    result = ex.run(stages, ints(50))
    assert sorted(t.data for t in result) == list(range(2, 52))
    assert result.metrics["stages"]["two"] == {"index": 1, "tasks_in": 50, "tasks_out": 50, "tasks_failed": 0}


def test_refuses_before_xenna_starts_naming_the_option(ray_session: Any, tmp_path: Any) -> None:
    ex = get_executor("xenna", show_progress=False, cpu_allocation_percentage=0.2)
    with pytest.raises(PlanError, match="cpu_allocation_percentage"):
        ex.run([Recorded(str(tmp_path), "never")], ints(3))
    assert LifecycleLog(tmp_path).entries() == []


def test_no_leftover_processes_env_restored_cluster_kept(ray_session: Any) -> None:
    import ray

    env_before = {k: os.environ.get(k) for k in TOUCHED}
    known = {a.actor_id for a in xenna_actors()}
    result = get_executor("xenna", show_progress=False).run([AddOne("a"), AddOne("b")], ints(40))
    assert len(result) == 40
    new = [a for a in xenna_actors() if a.actor_id not in known]
    assert {a.class_name for a in new} == {"StageWorker", "NodeResourceMonitor"}
    assert live_ray_processes([a.pid for a in new if a.pid]) == []
    assert {k: os.environ.get(k) for k in TOUCHED} == env_before
    # the session's cluster is still up and usable
    assert ray.is_initialized() and ray.get(ray.remote(lambda: 7).remote()) == 7


def test_abort_leaves_no_worker_and_tears_down(ray_session: Any, tmp_path: Any) -> None:
    known = {a.actor_id for a in xenna_actors()}
    ex = get_executor("xenna", show_progress=False)
    with pytest.raises(StageFailedError) as info:
        ex.run([Recorded(str(tmp_path), "rec"), FailOn((3,), "picky")], ints(40))
    assert info.value.stage == "picky" and info.value.task_id == "3"
    new = [a for a in xenna_actors() if a.actor_id not in known]
    assert new and all(a.state == "DEAD" for a in new if a.class_name == "StageWorker")
    assert live_ray_processes([a.pid for a in new if a.pid]) == []
    log = LifecycleLog(tmp_path)
    assert log.per_who("setup", "rec") == log.per_who("teardown", "rec")


def test_a_call_stuck_past_task_timeout_ends_its_worker_and_is_named(ray_session: Any) -> None:
    """The watchdog ends a worker whose call is stuck outside Python. Xenna 0.3 fails a run whose worker
    dies: the run is aborted, naming the stage, the task and the limit. Newer Xenna replaces the worker
    and retries: the replacement fails the task without calling the stage (a failure record)."""
    executor = get_executor("xenna", show_progress=False, ignore_failures=True, task_timeout=1.0)
    try:
        got = executor.run([SleepsInC(3)], ints(6))
    except StageFailedError as err:
        assert (err.stage, err.task_id) == ("sleeps_in_c", "3")
        assert "task_timeout=1s" in str(err) and "even with ignore_failures=True" in str(err)
    else:
        assert sorted(t.data for t in got) == [0, 1, 2, 4, 5]
        [failed] = got.failed_tasks
        assert failed.task_id == "3" and "did not stop: its worker was ended" in failed.error
    assert not [a for a in xenna_actors(("StageWorker",)) if a.state != "DEAD"], "no Xenna worker is left behind"


def test_batch_mode_runs_stage_after_stage(ray_session: Any, tmp_path: Any) -> None:
    stages = [Stamp(str(tmp_path), "first"), Stamp(str(tmp_path), "second")]
    got = get_executor("xenna", execution_mode="batch", chunk_size=4, show_progress=False).run(stages, ints(24))
    assert len(got) == 24
    assert min(stamps(tmp_path, "second")) >= max(stamps(tmp_path, "first"))


def test_streaming_mode_overlaps_stages(ray_session: Any, tmp_path: Any) -> None:
    stages = [Stamp(str(tmp_path), "first", sleep=0.05), Stamp(str(tmp_path), "second")]
    got = get_executor("xenna", execution_mode="streaming", chunk_size=2, show_progress=False).run(stages, ints(60))
    assert len(got) == 60
    assert min(stamps(tmp_path, "second")) < max(stamps(tmp_path, "first"))


def test_worker_counts_follow_options(ray_session: Any, tmp_path: Any) -> None:
    """max_workers_per_stage caps an auto stage; num_workers_per_node (per-stage Xenna option) and
    num_workers() pin theirs; each worker sets up and tears down once."""
    folder = str(tmp_path)
    stages = [
        Sized(folder, "capped", cpus=0.25),
        Sized(folder, "per_node", cpus=0.25, xenna={"num_workers_per_node": 3, "slots_per_actor": 1}),
        Sized(folder, "fixed", cpus=0.25, workers=1),
    ]
    ex = get_executor("xenna", execution_mode="batch", cpu_allocation_percentage=1.0, max_workers_per_stage=2,
                      show_progress=False)
    known = {a.actor_id for a in xenna_actors(("StageWorker",))}
    got = ex.run(stages, ints(40))
    assert len(got) == 40
    created: dict[str, int] = {}
    for a in xenna_actors(("StageWorker",), detail=True):
        if a.actor_id not in known:
            stage = (a.repr_name or "").split(" - ")[0]  # "Stage 00 - CuratorStage"
            created[stage] = created.get(stage, 0) + 1
    nodes = len(ex.capacity().nodes)
    assert created == {"Stage 00": 2, "Stage 01": 3 * nodes, "Stage 02": 1}
    log = LifecycleLog(tmp_path)
    for name, limit in (("capped", 2), ("per_node", 3 * nodes), ("fixed", 1)):
        # a worker Xenna stops before it finished starting never sets up; one that did tears down once
        assert 1 <= len(log.per_who("setup", name)) <= limit
        assert log.per_who("setup", name) == log.per_who("teardown", name)


def test_starting_ray_ourselves_sets_variables_only_for_the_start(tmp_path: Any) -> None:
    """In a fresh interpreter with no Ray: the executor starts one (dashboard on, Xenna's state-API
    limits given to the Ray processes), the run works, and the driver's environment is unchanged."""
    import subprocess
    import sys

    code = (
        "import os, json\n"
        "before = {k: os.environ.get(k) for k in %r}\n"
        "from curator_exec_core import Task, get_executor\n"
        "from curator_exec_core.testing.stages import AddOne\n"
        "from curator_exec_ray.session import current_session\n"
        "ex = get_executor('xenna', show_progress=False)\n"
        "got = ex.run([AddOne('a'), AddOne('b')], [Task(data=i) for i in range(30)])\n"

        "after = {k: os.environ.get(k) for k in %r}\n"
        "print('RESULT ' + json.dumps({'n': len(got), 'how': current_session().how, 'same_env': before == after,\n"
        "      'limit': got.metrics['engine']['state_limit']}))\n"
    ).replace("%r", repr(TOUCHED))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env,
                          cwd=str(tmp_path))
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    import json

    out = json.loads(lines[-1][len("RESULT "):])
    assert out == {"n": 30, "how": "started", "same_env": True, "limit": 40000}
    # Ray's start-up lines, Xenna's spec dump, tables and workers' lines went to the engine log file
    assert_quiet([line for line in proc.stdout.splitlines() if line.strip() and line not in lines],
                 [line for line in proc.stderr.splitlines() if line.strip()], at_most=0)


def test_a_default_batch_run_prints_no_engine_chatter_and_names_stages_as_the_user(ray_driver_env: Any,
                                                                                     tmp_path: Any) -> None:
    """Xenna's status lines name each stage after the user's stage, not after our adapter class."""
    stdout, stderr, results = quiet_run("xenna", str(tmp_path), runs=[{"execution_mode": "batch"}],
                                        env=ray_driver_env)
    assert_quiet(stdout, stderr, at_most=0)
    assert len(results) == 1 and results[0].split()[1] == "24"
    path = results[0].split()[2]
    with open(path) as f:
        text = f.read()
    assert "Stage 00 - add_one" in text and "Stage 01 - recorded" in text and "CuratorStage" not in text


def test_the_adapter_is_named_after_the_stage_and_pickles(tmp_path: Any) -> None:
    import copy
    import pickle

    from curator_exec_core.runner import ManagedStage  # noqa: F401
    from curator_exec_xenna import _stage

    adapter = _stage._rebuild("my stage", {"managed": None, "cpus": 1.0})
    assert type(adapter).__name__ == "my stage" and isinstance(adapter, _stage.CuratorStage)
    for copied in (pickle.loads(pickle.dumps(adapter)), copy.deepcopy(adapter)):
        assert type(copied) is type(adapter) and copied.cpus == 1.0


def test_a_moved_xenna_internal_fails_the_run_at_once_naming_the_version(ray_session: Any, tmp_path: Any,
                                                                          monkeypatch: Any) -> None:
    from importlib.metadata import version

    from cosmos_xenna.ray_utils import actor_pool

    from curator_exec_core import EngineCompatibilityError
    from curator_exec_xenna import _compat

    monkeypatch.setattr(_compat.check, "done", False)
    monkeypatch.delattr(actor_pool, "_kill_actor_and_reap")
    with pytest.raises(EngineCompatibilityError) as info:
        get_executor("xenna", show_progress=False).run([Recorded(str(tmp_path), "never")], ints(3))
    text = str(info.value)
    assert f"cosmos-xenna {version('cosmos-xenna')}" in text and ">=0.3,<0.6" in text
    assert "_kill_actor_and_reap" in text
    assert LifecycleLog(tmp_path).entries() == []  # nothing ran

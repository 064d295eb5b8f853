"""ray_data behaviour beyond the conformance kit, on a real local Ray."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from rd_stages import BadSetup, DieOnce, FanOutOne, SlowUneven, WhoAmI, read_rows

from curator_exec_core import ConfigError, PlanError, ProcessingStage, Resources, Task, get_executor
from curator_exec_core.errors import StageFailedError
from curator_exec_core.testing import canonical, reference_run
from curator_exec_core.testing.stages import AddOne, FanOut, KeepEven, Recorded, Traced, read_trace
from curator_exec_ray.chunking import auto_chunk_size, encode_chunks
from curator_exec_raydata import RayDataExecutor
from curator_exec_raydata.executor import MAX_AUTO_TASKS_PER_BLOCK


def _ints(n: int) -> list[Task]:
    return [Task(data=i) for i in range(n)]


def _our_live_actors() -> list[str]:
    import ray
    from ray.util.state import list_actors

    actors = list_actors(address=ray.get_runtime_context().gcs_address, filters=[("state", "!=", "DEAD")],
                         limit=10_000)
    return [a.class_name for a in actors if "StageWorker" in a.class_name or a.class_name == "_Registry"]


def _wait_no_actors(timeout: float = 20.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        left = _our_live_actors()
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


# -- registration, options ---------------------------------------------------------------


def test_registration_imports_no_ray() -> None:
    code = ("import sys, json; from curator_exec_core import list_executors; "
            "names = [s.name for s in list_executors()]; import curator_exec_raydata; "
            "print(json.dumps([names, 'ray' in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    names, ray_imported = json.loads(out.stdout.strip().splitlines()[-1])
    assert "ray_data" in names and ray_imported is False


def test_get_executor_by_name() -> None:
    ex = get_executor("ray_data", preserve_order=True, show_progress=False)
    assert isinstance(ex, RayDataExecutor) and ex.options.preserve_order is True


@pytest.mark.parametrize("bad, match", [
    ({"ignore_failurs": True}, "did you mean 'ignore_failures'"),
    ({"tasks_per_block": 0}, "tasks_per_block"),
    ({"tasks_per_block": "many"}, "tasks_per_block"),
    ({"runtime_env": "conda"}, "runtime_env"),
    ({"max_block_bytes": 10}, "max_block_bytes"),
    ({"preserve_order": "yes"}, "preserve_order"),
    ({"data_context": {"enable_progres_bars": True}}, "did you mean 'enable_progress_bars'"),
])
def test_bad_options_are_errors(bad: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        RayDataExecutor(config=bad)


def test_config_dict_and_keywords_merge() -> None:
    ex = RayDataExecutor(config={"tasks_per_block": 7}, ignore_head_node=True, max_retries=2)
    assert (ex.options.tasks_per_block, ex.ignore_head_node, ex.options.max_retries) == (7, True, 2)


# -- blocks ------------------------------------------------------------------------------------


def test_auto_block_size_groups_tasks() -> None:
    stage = Recorded("/tmp", "x")
    ex = RayDataExecutor(show_progress=False)
    from curator_exec_core import Capacity, NodeCapacity

    cap = Capacity(nodes=[NodeCapacity("n", "h", 2.0, 2**30, gpu_reason="none")])
    widest = max(s.num_workers() or 1 for s in ex.managed_stages([stage], ex.plan([stage], cap)))

    def auto_tasks_per_block(n: int) -> int:
        return auto_chunk_size(n, widest, max_size=MAX_AUTO_TASKS_PER_BLOCK)

    assert auto_tasks_per_block(10_000) > 100  # not one block per task
    assert auto_tasks_per_block(10_000_000) == MAX_AUTO_TASKS_PER_BLOCK
    assert auto_tasks_per_block(3) == 1


def test_chunks_split_by_count_and_bytes_and_carry_counts_once() -> None:
    import pickle

    tasks = [Task(data=bytes([i]) * 1000, task_id=str(i)) for i in range(100)]
    parts = [pickle.loads(p) for p in encode_chunks(tasks, {0: (1, 2, 0)}, per_chunk=30, max_bytes=10_000)]
    assert [t.task_id for _, chunk in parts for t in chunk] == [str(i) for i in range(100)]
    assert all(len(chunk) <= 30 for _, chunk in parts) and len(parts) >= 10  # 30 tasks are ~30 KB > 10 KB
    assert [c for c, _ in parts if c] == [{0: (1, 2, 0)}]
    # nothing to send but counts: one empty chunk carries them
    assert [pickle.loads(p) for p in encode_chunks([], {1: (3, 0, 0)}, 10, 10_000)] == [({1: (3, 0, 0)}, [])]


def test_fan_out_output_spreads_over_the_next_stages_actors(ray_attached, tmp_path) -> None:
    stages = [FanOutOne(400), WhoAmI(str(tmp_path), workers=2, sleep=0.01)]
    got = RayDataExecutor(show_progress=False).run(stages, _ints(1))
    assert len(got) == 400
    pids = {row[1] for row in read_rows(str(tmp_path), "who", "tasks")}
    assert len(pids) == 2, "the fan-out's 400 tasks went to one actor: they were one block"


def test_fan_out_output_spreads_over_a_task_mapped_stage(ray_attached, tmp_path) -> None:
    stages = [FanOutOne(400), Traced(str(tmp_path), "where", seconds=0.01)]  # one initial block: no fusion
    got = RayDataExecutor(show_progress=False).run(stages, _ints(1))
    assert len(got) == 400
    pids = {r["pid"] for r in read_trace(tmp_path, "where")}
    assert len(pids) >= 2, "the fan-out's 400 tasks ran through the next stage in one process"


def _stage_workers_ever() -> int:
    import ray
    from ray.util.state import list_actors

    actors = list_actors(address=ray.get_runtime_context().gcs_address, limit=10_000)
    return sum("StageWorker" in a.class_name for a in actors)


def test_stateless_stages_are_task_maps_on_reused_workers(ray_attached, tmp_path) -> None:
    folder = str(tmp_path)
    ex = RayDataExecutor(show_progress=False)
    before = _stage_workers_ever()
    first = ex.run([Traced(folder, "a"), Traced(folder, "b")], _ints(200))
    pids_first = {r["pid"] for name in ("a", "b") for r in read_trace(folder, name)}
    second = ex.run([Traced(folder, "a"), Traced(folder, "b")], _ints(200))
    assert sorted(t.data for t in first) == sorted(t.data for t in second) == list(range(2, 202))
    assert _stage_workers_ever() == before, "a stage without lifecycle methods started actors"
    pids_all = {r["pid"] for name in ("a", "b") for r in read_trace(folder, name)}
    assert pids_all == pids_first, "the second run started new worker processes instead of reusing Ray's"
    # 200 tasks make 16 blocks: the two same-shaped task maps are fused, each block runs through both in one task
    assert all(len({p.worker for p in t.stage_perf}) == 1 for t in second)
    # opting out: actor pools again
    RayDataExecutor(show_progress=False, stateless_as_tasks=False).run([Traced(folder, "c")], _ints(20))
    assert _stage_workers_ever() > before
    assert _wait_no_actors() == []


def test_unfused_when_asked(ray_attached, tmp_path) -> None:
    folder = str(tmp_path)
    got = RayDataExecutor(show_progress=False, fuse_stages=False).run(
        [Traced(folder, "a", seconds=0.002), Traced(folder, "b", seconds=0.002)], _ints(400))
    assert sorted(t.data for t in got) == list(range(2, 402))
    # not fused: stage b's tasks are separate Ray tasks, so some output went through two processes
    assert any(len({p.worker for p in t.stage_perf}) == 2 for t in got)


# -- lifecycle, failures ---------------------------------------------------------------------


def test_no_actors_left_after_success_and_failure(ray_attached, tmp_path) -> None:
    ex = RayDataExecutor(show_progress=False)
    assert len(ex.run([AddOne(), AddOne("b")], _ints(50))) == 50
    assert _wait_no_actors(0.5) == []
    with pytest.raises(StageFailedError) as info:
        ex.run([AddOne(), Recorded(str(tmp_path), "bad", fail_on=(4,))], _ints(50))
    # the core's own error (not Ray's wrapper, whose message is a Ray traceback)
    assert type(info.value) is StageFailedError
    assert str(info.value).startswith("stage 'bad' failed on task '3'")
    assert _wait_no_actors(0.5) == []


def test_setup_failure_fails_the_run_and_does_not_hang(ray_attached) -> None:
    started = time.monotonic()
    with pytest.raises(Exception, match="model weights not found"):
        RayDataExecutor(show_progress=False).run([AddOne(), BadSetup()], _ints(20))
    assert time.monotonic() - started < 120
    assert _wait_no_actors() == []


def test_killed_worker_is_retried_with_exactly_the_expected_outputs(ray_attached, tmp_path) -> None:
    stages = [AddOne(), DieOnce(str(tmp_path), value=37), AddOne("b")]
    got = RayDataExecutor(show_progress=False).run(stages, _ints(200))
    assert os.path.exists(tmp_path / "died")  # a worker really was killed mid-run
    expected = reference_run([AddOne(), _Double(), AddOne("b")], _ints(200))
    assert canonical(got) == canonical(expected)  # no task lost, none duplicated
    assert not got.failed_tasks


class _Double(ProcessingStage):
    name = "die_once"

    def process(self, task: Task) -> Task:
        return Task(data=task.data * 2)


def test_stages_asking_for_more_cpus_than_exist_are_scaled_and_finish(ray_attached) -> None:
    stages = [AddOne("a", cpus=1.0), AddOne("b", cpus=1.0), AddOne("c", cpus=1.0)]  # 3 CPUs on a 2-CPU Ray
    got = RayDataExecutor(show_progress=False).run(stages, _ints(30))
    assert sorted(t.data for t in got) == list(range(3, 33))
    assert sum(s.workers * s.resources.cpus for s in got.plan.stages) <= 2.0 + 1e-9


def test_a_worker_larger_than_any_node_fails_at_plan_time(ray_attached, tmp_path) -> None:
    stage = WhoAmI(str(tmp_path), workers=1, resources=Resources(cpus=64.0))
    with pytest.raises(PlanError):
        RayDataExecutor(show_progress=False).run([stage], _ints(5))
    assert read_rows(str(tmp_path), "who", "setup") == []


# -- options at work ------------------------------------------------------------------------


def test_progress_counts_match_the_reference(ray_attached) -> None:
    stages = [FanOut(3), KeepEven(), AddOne()]
    got = RayDataExecutor(show_progress=False).run(stages, _ints(90))
    assert got.metrics["stages"] == reference_run(stages, _ints(90)).metrics["stages"]


def test_preserve_order(ray_attached) -> None:
    got = RayDataExecutor(show_progress=False, preserve_order=True, tasks_per_block=5).run(
        [SlowUneven(workers=2), AddOne()], _ints(200))
    assert [t.task_id for t in got] == [str(i) for i in range(200)]


def test_data_context_settings_do_not_leak(ray_attached) -> None:
    from ray.data import DataContext

    ctx = DataContext.get_current()
    before = (ctx.enable_progress_bars, ctx.target_max_block_size, ctx.execution_options.preserve_order,
              list(ctx.custom_execution_callback_classes), ctx.max_errored_blocks, ctx.get_config(
                  "curator_exec.ray_data.run", None), ctx.execution_no_progress_timeout_s)
    ex = RayDataExecutor(show_progress=False, preserve_order=True,
                         data_context={"execution_no_progress_timeout_s": 123})
    assert len(ex.run([AddOne()], _ints(10))) == 10
    ctx = DataContext.get_current()
    after = (ctx.enable_progress_bars, ctx.target_max_block_size, ctx.execution_options.preserve_order,
             list(ctx.custom_execution_callback_classes), ctx.max_errored_blocks, ctx.get_config(
                 "curator_exec.ray_data.run", None), ctx.execution_no_progress_timeout_s)
    assert after == before


class _EnvProbe(ProcessingStage):
    name = "env_probe"
    resources = Resources(cpus=0.5)

    def process(self, task: Task) -> Task:
        return Task(data=os.environ.get("CX_RAYDATA_PROBE", "unset"))


def test_runtime_env_reaches_the_stage_actors(ray_attached) -> None:
    got = RayDataExecutor(show_progress=False, runtime_env={"env_vars": {"CX_RAYDATA_PROBE": "hello"}}).run(
        [_EnvProbe()], _ints(3))
    assert [t.data for t in got] == ["hello"] * 3


def test_a_moved_ray_data_internal_fails_the_run_at_once_naming_the_version(ray_attached, monkeypatch) -> None:
    import ray
    from ray.data._internal.execution.operators import actor_pool_map_operator as apo

    from curator_exec_core import EngineCompatibilityError
    from curator_exec_raydata import _compat

    monkeypatch.setattr(_compat.check, "done", False)
    monkeypatch.delattr(apo.ActorPoolMapOperator, "get_autoscaling_actor_pools")
    with pytest.raises(EngineCompatibilityError) as info:
        RayDataExecutor(show_progress=False).run([AddOne()], _ints(3))
    text = str(info.value)
    assert f"Ray Data {ray.__version__}" in text and ">=2.60,<2.64" in text and "get_autoscaling_actor_pools" in text


# -- what a run prints, and after a crash ----------------------------------------------------


def test_a_default_run_prints_no_engine_chatter(ray_driver_env: dict, tmp_path: object) -> None:
    """No "will hang", no progress-bar notice, no INFO lines: they go to the engine log file. Ray's core
    may print one line of its own (a C++ warning about actor constructor arguments), nothing else."""
    from curator_exec_ray.testing import assert_quiet, quiet_run

    stdout, stderr, results = quiet_run("ray_data", str(tmp_path), env=ray_driver_env)
    assert_quiet(stdout, stderr, at_most=1)
    assert len(results) == 1 and results[0].split()[1] == "24"


def _coordinator_holds(requester: str) -> dict:
    import ray

    from curator_exec_raydata import _compat

    try:
        coordinator = ray.get_actor(_compat.COORDINATOR, namespace=_compat.COORDINATOR)
    except ValueError:
        return {}
    return ray.get(coordinator.get_reserved_resources.remote(requester), timeout=60)


def test_the_next_run_releases_what_a_killed_driver_had_reserved(ray_driver_env: dict, tmp_path: object) -> None:
    """A driver SIGKILLed mid-run leaves its request in Ray Data's detached AutoscalingCoordinator (kept
    up to 180 s); the next ray_data run cancels it, so it gets the whole cluster."""
    from ray.experimental import internal_kv

    from curator_exec_raydata import _compat

    folder = str(tmp_path)
    code = ("from curator_exec_core import Task, get_executor\n"
            "from rd_stages import WhoAmI\n"
            f"get_executor('ray_data', show_progress=False).run([WhoAmI({folder!r}, sleep=0.5)],\n"
            "                                                   [Task(data=i) for i in range(400)])\n")
    env = {**os.environ, **ray_driver_env}
    child = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        requesters: list[str] = []
        while time.monotonic() < deadline and child.poll() is None:
            keys = internal_kv._internal_kv_list(_compat._KV_PREFIX, namespace=_compat._KV_NAMESPACE)
            requesters = [k[len(_compat._KV_PREFIX):].decode() for k in keys]
            if requesters and any(_coordinator_holds(r) for r in requesters):
                break
            time.sleep(0.3)
        assert requesters, "the driver never recorded its Ray Data request"
    finally:
        child.kill()
        child.wait()
    dead = [r for r in requesters if _coordinator_holds(r)]
    assert dead, "the killed driver's request was already gone"
    got = get_executor("ray_data", show_progress=False).run([AddOne()], _ints(10))
    assert sorted(t.data for t in got) == list(range(1, 11))
    assert all(_coordinator_holds(r) == {} for r in dead)
    left = internal_kv._internal_kv_list(_compat._KV_PREFIX, namespace=_compat._KV_NAMESPACE)
    assert not {k[len(_compat._KV_PREFIX):].decode() for k in left} & set(dead)

"""ray_actor_pool behaviour beyond the conformance kit, on the session's local Ray."""

from __future__ import annotations

import inspect
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from rap_stages import Big, EnvReader, Logged, SetupFails, Small, read

from curator_exec_core import ConfigError, PlanError, StageFailedError, Task, get_executor
from curator_exec_core.testing.stages import AddOne, FailOn, SquareBatch, Traced, read_trace
from curator_exec_rayactorpool import RayActorPoolExecutor
from curator_exec_rayactorpool import executor as pool_module
from curator_exec_rayactorpool.executor import ActorPoolError


def ints(n: int) -> list[Task]:
    return [Task(data=i) for i in range(n)]


def alive_pool_actors(timeout: float = 30.0) -> list:
    """Our actors still alive, polled until none is left or ``timeout`` passes (kills are asynchronous)."""
    import ray
    from ray.util.state import list_actors

    address = ray.get_runtime_context().gcs_address  # without it the state API may pick another cluster
    deadline = time.monotonic() + timeout
    while True:
        alive = list_actors(filters=[("class_name", "=", "StageActor"), ("state", "!=", "DEAD")],
                            address=address, raise_on_missing_output=False)
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.5)


# -- construction and options (no Ray needed) -----------------------------------------


def test_signature_is_nemo_compatible():
    params = list(inspect.signature(RayActorPoolExecutor.__init__).parameters.values())
    assert [p.name for p in params[:5]] == ["self", "config", "ignore_head_node", "show_progress",
                                            "progress_interval"]
    assert [p.default for p in params[1:5]] == [None, False, True, 10.0]
    ex = RayActorPoolExecutor({"pool_size": 8}, True, False, 2.5)
    assert (ex.options.pool_size, ex.ignore_head_node, ex.options.show_progress, ex.options.progress_interval) == (
        8, True, False, 2.5)
    assert ex.config == {"pool_size": 8}
    # defaults of the keywords do not override the config
    ex = RayActorPoolExecutor(config={"show_progress": False, "progress_interval": 1.0})
    assert ex.options.show_progress is False and ex.options.progress_interval == 1.0


def test_options_are_validated():
    ex = RayActorPoolExecutor(config={"reserved_cpus": 1, "reserved_gpus": 0.5, "chunk_size": 10, "max_in_flight": 3,
                                      "runtime_env": {"env_vars": {"A": "1"}}, "max_actor_restarts": 0,
                                      "ignore_failures": True, "max_retries": 2})
    assert ex.options.reserved_cpus == 1.0 and ex.options.chunk_size == 10 and ex.options.max_retries == 2
    assert ex.plan_options() == {"max_workers_per_stage": None, "reserved_cpus": 1.0, "reserved_gpus": 0.5}
    bad = [{"pool_size": 0}, {"pool_size": "8"}, {"chunk_size": 0}, {"max_in_flight": 0}, {"reserved_cpus": -1},
           {"runtime_env": "env"}, {"actor_start_timeout": -1}, {"max_actor_restarts": 1.5}]
    for config in bad:
        with pytest.raises(ConfigError, match=next(iter(config))):
            RayActorPoolExecutor(config=config)
    with pytest.raises(ConfigError, match="pool_size"):
        RayActorPoolExecutor(config={"pool_sise": 4})


def test_listing_and_importing_do_not_import_ray():
    code = (
        "import sys, curator_exec_core as c\n"
        "assert 'ray_actor_pool' in [s.name for s in c.list_executors()]\n"
        "from curator_exec_rayactorpool import RayActorPoolExecutor\n"
        "ex = c.get_executor('ray_actor_pool', pool_size=2)\n"
        "assert type(ex) is RayActorPoolExecutor and ex.options.pool_size == 2\n"
        "print('ray' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


# -- mapping onto Ray ---------------------------------------------------------------------


def test_pool_size_caps_actors_per_stage(ray_attached, tmp_path):
    stage = Logged(tmp_path, "tiny", cpus=0.1)
    ex = RayActorPoolExecutor(config={"show_progress": False})
    assert ex.plan([stage], ex.capacity()).stages[0].workers > 2
    ex = RayActorPoolExecutor(config={"pool_size": 2, "show_progress": False})
    result = ex.run([stage], ints(40))
    assert sorted(t.data for t in result) == list(range(1, 41))
    assert result.plan.stages[0].workers == 2
    setups = [e for e in read(stage.log) if e["event"] == "setup"]
    # at most pool_size actors (on a loaded machine one may finish 40 tiny tasks before the second is up)
    assert 1 <= len({e["pid"] for e in setups}) <= 2


def test_reserved_cpus_are_held_back(ray_attached, tmp_path):
    stages = [Logged(tmp_path, "a", cpus=0.25), Logged(tmp_path, "b", cpus=0.25)]
    ex = RayActorPoolExecutor(config={"reserved_cpus": 1.0})
    cap = ex.capacity()
    plan = ex.plan(stages, cap)
    used = sum(sp.workers * sp.resources.cpus for sp in plan.stages)
    assert used <= cap.total_cpus - 1.0 + 1e-9
    full = RayActorPoolExecutor().plan(stages, cap)
    assert sum(sp.workers for sp in full.stages) > sum(sp.workers for sp in plan.stages)
    with pytest.raises(PlanError, match="reserved_cpus"):
        RayActorPoolExecutor(config={"reserved_cpus": cap.total_cpus}).plan(stages, cap)


def test_chunks_amortise_calls_but_stage_sees_its_batch_size(ray_attached, monkeypatch):
    sizes: list[tuple[int, int]] = []
    original = pool_module._PoolRun.submit

    def recording_submit(self, s, actor):
        original(self, s, actor)
        call = list(self.calls.values())[-1]
        sizes.append((s, sum(c.n for c in call.inputs)))

    monkeypatch.setattr(pool_module._PoolRun, "submit", recording_submit)
    ex = RayActorPoolExecutor(config={"chunk_size": 20, "show_progress": False})
    result = ex.run([SquareBatch(3)], ints(100))  # SquareBatch raises if it ever sees more than 3 tasks
    assert sorted(t.data for t in result) == sorted(i * i for i in range(100))
    assert sum(n for _, n in sizes) == 100
    assert all(n <= 20 for _, n in sizes) and len(sizes) <= 10  # not one call per task
    assert {t.metadata["batch"] for t in result} <= {1, 2, 3}


def test_stages_stream_into_each_other(ray_attached, tmp_path):
    a, b = Logged(tmp_path, "a", seconds=0.02), Logged(tmp_path, "b", seconds=0.02)
    result = RayActorPoolExecutor(config={"pool_size": 1, "show_progress": False}).run([a, b], ints(60))
    assert sorted(t.data for t in result) == list(range(2, 62))
    a_times = [e["t"] for e in read(a.log) if e["event"] == "task"]
    b_times = [e["t"] for e in read(b.log) if e["event"] == "task"]
    assert min(b_times) < max(a_times), "stage b only started after stage a had finished"


def test_backpressure_bounds_how_far_a_stage_runs_ahead(ray_attached, tmp_path):
    fast, slow = Logged(tmp_path, "fast"), Logged(tmp_path, "slow", seconds=0.02)
    config = {"pool_size": 1, "chunk_size": 2, "max_in_flight": 1, "show_progress": False}
    result = RayActorPoolExecutor(config=config).run([fast, slow], ints(150))
    assert sorted(t.data for t in result) == list(range(2, 152))
    fast_times = sorted(e["t"] for e in read(fast.log) if e["event"] == "task")
    slow_times = sorted(e["t"] for e in read(slow.log) if e["event"] == "task")
    lead = max(sum(1 for t in fast_times if t <= ts) - done for done, ts in enumerate(slow_times))
    # fast's chunk in flight (2) + 2 chunks queued for slow (4) + slow's chunk (2), with some slack
    assert lead <= 12, f"the fast stage ran {lead} tasks ahead of the slow one"


def test_intermediates_stay_in_the_object_store(ray_attached):
    psutil = pytest.importorskip("psutil")
    proc = psutil.Process()
    n, nbytes = 1500, 200_000  # 300 MB of intermediates
    peak = [proc.memory_info().rss]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak.append(proc.memory_info().rss)
            time.sleep(0.01)

    base = proc.memory_info().rss
    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        result = RayActorPoolExecutor(config={"show_progress": False}).run([Big(nbytes), Small()], ints(n))
    finally:
        stop.set()
        thread.join()
    assert sorted(t.data for t in result) == list(range(n))
    assert sum(t.metadata["bytes"] for t in result) == n * nbytes
    grew = max(peak) - base
    assert grew < 120 * 1024**2, f"driver RSS grew by {grew / 1024**2:.0f} MiB while 300 MB flowed"


def test_runtime_env_reaches_the_actors(ray_attached):
    ex = RayActorPoolExecutor(config={"runtime_env": {"env_vars": {"RAP_TEST_VAR": "hello"}}, "show_progress": False})
    result = ex.run([EnvReader("RAP_TEST_VAR")], ints(5))
    assert [t.data for t in result] == ["hello"] * 5


def test_a_runtime_env_ray_cannot_set_up_fails_the_run_naming_the_stage(ray_attached, tmp_path):
    # Ray raises RuntimeEnvSetupError (told apart by its class, not its text): no hang, no retry loop
    ex = RayActorPoolExecutor(config={"runtime_env": {"conda": "no-such-conda-env-xyz"}, "show_progress": False,
                                      "stateless_as_tasks": False})
    with pytest.raises(ActorPoolError, match=r"stage 'add_one': a worker could not set up its runtime_env"):
        ex.run([AddOne()], ints(3))
    assert alive_pool_actors() == []


def test_an_unpicklable_stage_fails_at_plan_time_naming_it(ray_attached):
    import threading

    stage = AddOne("with_lock")
    stage.lock = threading.Lock()
    with pytest.raises(PlanError, match=r"'with_lock' cannot be pickled"):
        RayActorPoolExecutor(show_progress=False).run([stage], ints(3))


# -- fault tolerance --------------------------------------------------------------------


@pytest.fixture
def pools(monkeypatch) -> list:
    """The actor pools (``_PoolRun``) of the runs started while the test runs, newest last."""
    started: list = []
    original = pool_module._PoolRun.run

    def run(self):
        started.append(self)
        return original(self)

    monkeypatch.setattr(pool_module._PoolRun, "run", run)
    return started


def _kill_when(stage: Logged, after_tasks: int, how: str, pools: list, killed: list) -> None:
    import ray

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        events = read(stage.log)
        if sum(e["event"] == "task" for e in events) >= after_tasks:
            run = pools[-1] if pools else None
            if run is None or run.closed:
                return
            actors = [a for a in run.actors[[s.name for s in run.stages].index(stage.name)] if a.ready]
            if not actors:
                time.sleep(0.05)
                continue
            victim = actors[0]
            killed.append(victim.info["pid"])
            if how == "os.kill":
                os.kill(victim.info["pid"], signal.SIGKILL)
            else:
                ray.kill(victim.handle)
            return
        time.sleep(0.02)


@pytest.mark.parametrize("how", ["os.kill", "ray.kill"])
def test_killed_actor_is_replaced_and_nothing_is_lost_or_duplicated(ray_attached, tmp_path, how, pools):
    a, b = Logged(tmp_path, "a", seconds=0.01), Logged(tmp_path, "b", seconds=0.01)
    ex = RayActorPoolExecutor(config={"pool_size": 2, "show_progress": False})
    killed: list[int] = []
    killers = [threading.Thread(target=_kill_when, args=(a, 30, how, pools, killed)),
               threading.Thread(target=_kill_when, args=(b, 60, how, pools, killed))]
    for t in killers:
        t.start()
    try:
        result = ex.run([a, b], ints(300))
    finally:
        for t in killers:
            t.join()
    assert len(killed) == 2, "the test did not get to kill the actors"
    assert sorted(t.task_id for t in result) == sorted(str(i) for i in range(300))
    assert sorted(t.data for t in result) == list(range(2, 302))
    assert result.metrics["stages"]["b"]["tasks_out"] == 300
    for stage in (a, b):
        setups = [e["pid"] for e in read(stage.log) if e["event"] == "setup"]
        assert len(setups) == result.plan.stage(stage.name).workers + 1  # one replacement each
        assert set(killed) & set(setups)
    assert alive_pool_actors() == []


def _pool_actors_ever() -> int:
    """How many pool actors (StageActor) this cluster has had (alive or dead)."""
    import ray
    from ray.util.state import list_actors

    return len(list_actors(filters=[("class_name", "=", "StageActor")], limit=10_000,
                           address=ray.get_runtime_context().gcs_address, raise_on_missing_output=False))


def test_stateless_stages_run_as_tasks_on_reused_workers(ray_attached, tmp_path):
    a, b = Traced(tmp_path, "a"), Traced(tmp_path, "b")
    ex = RayActorPoolExecutor(show_progress=False)
    before = _pool_actors_ever()
    first = ex.run([a, b], ints(200))
    pids_first = {e["pid"] for e in read_trace(tmp_path, "a") + read_trace(tmp_path, "b")}
    second = ex.run([a, b], ints(200))
    assert sorted(t.data for t in first) == sorted(t.data for t in second) == list(range(2, 202))
    assert _pool_actors_ever() == before, "a stage without lifecycle methods started actors"
    pids_all = {e["pid"] for e in read_trace(tmp_path, "a") + read_trace(tmp_path, "b")}
    # Ray may retire an idle worker between runs (its idle-worker killing), so a new pid in the
    # second run is allowed; what must not happen is a process per task or per chunk
    assert pids_first and len(pids_all) <= 2 * os.cpu_count() + 2, \
        f"{len(pids_all)} worker processes for 400 task calls: tasks did not reuse Ray's pool"
    assert len(read_trace(tmp_path, "a")) == 400
    # opting out: the same stages get actors of their own
    ex_actors = RayActorPoolExecutor(stateless_as_tasks=False, show_progress=False)
    assert sorted(t.data for t in ex_actors.run([a, b], ints(20))) == list(range(2, 22))
    assert _pool_actors_ever() >= before + 2
    assert alive_pool_actors() == []


def test_pool_size_caps_the_running_calls_of_a_task_stage(ray_attached, tmp_path):
    stage = Traced(tmp_path, "capped", seconds=0.02, cpus=0.1)
    ex = RayActorPoolExecutor(config={"pool_size": 1, "chunk_size": 2, "show_progress": False})
    result = ex.run([stage], ints(40))
    assert sorted(t.data for t in result) == list(range(1, 41))
    spans = sorted((e["t0"], e["t"]) for e in read_trace(tmp_path, stage.name))
    assert all(later[0] >= earlier[1] - 1e-3 for earlier, later in zip(spans, spans[1:], strict=False)), \
        "pool_size=1 ran two calls of the stage at once"


def test_killed_task_worker_is_retried_and_nothing_is_lost_or_duplicated(ray_attached, tmp_path):
    a, b = Traced(tmp_path, "a", seconds=0.01), Traced(tmp_path, "b", seconds=0.01)
    ex = RayActorPoolExecutor(config={"chunk_size": 10, "show_progress": False})
    killed: list[int] = []

    def kill_after(stage: Traced, n: int) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            events = read_trace(tmp_path, stage.name)
            if len(events) >= n:
                os.kill(events[-1]["pid"], signal.SIGKILL)
                killed.append(events[-1]["pid"])
                return
            time.sleep(0.01)

    killer = threading.Thread(target=kill_after, args=(b, 50))
    killer.start()
    try:
        result = ex.run([a, b], ints(300))
    finally:
        killer.join()
    assert killed, "the test did not get to kill a worker"
    assert sorted(t.task_id for t in result) == sorted(str(i) for i in range(300))
    assert sorted(t.data for t in result) == list(range(2, 302))


def test_actors_dying_too_often_fail_the_run(ray_attached, tmp_path, pools):
    a = Logged(tmp_path, "a", seconds=0.01)
    ex = RayActorPoolExecutor(config={"pool_size": 1, "max_actor_restarts": 0, "show_progress": False})
    killed: list[int] = []
    killer = threading.Thread(target=_kill_when, args=(a, 10, "os.kill", pools, killed))
    killer.start()
    try:
        with pytest.raises(ActorPoolError, match="max_actor_restarts=0"):
            ex.run([a], ints(300))
    finally:
        killer.join()
    assert alive_pool_actors() == []


# -- lifecycle ------------------------------------------------------------------------------


def test_no_actor_left_after_success_or_failure(ray_attached, tmp_path):
    ex = RayActorPoolExecutor(config={"show_progress": False})
    ex.run([Logged(tmp_path, "ok"), Logged(tmp_path, "ok2")], ints(20))
    assert alive_pool_actors() == []
    with pytest.raises(StageFailedError):
        ex.run([Logged(tmp_path, "ok3"), FailOn((3,), "bad")], ints(20))
    assert alive_pool_actors() == []
    with pytest.raises(RuntimeError, match="no model here"):
        ex.run([Logged(tmp_path, "ok4"), SetupFails()], ints(20))
    assert alive_pool_actors() == []
    # each actor that ran setup ran teardown, whatever happened. ok4's actors start beside the failing
    # stage's, so the run may abort before any of them got to setup (then none ran; CI saw both orders)
    for name in ("ok", "ok2", "ok3", "ok4"):
        events = read(os.path.join(tmp_path, f"{name}.jsonl"))
        setups = sorted(e["pid"] for e in events if e["event"] == "setup")
        teardowns = sorted(e["pid"] for e in events if e["event"] == "teardown")
        assert setups == teardowns, name
        assert setups or name == "ok4", name


def test_reuse_actors_keeps_them_between_runs_until_close(ray_attached, tmp_path):
    a = Logged(tmp_path, "a")
    ex = RayActorPoolExecutor(config={"reuse_actors": True, "pool_size": 1, "show_progress": False})
    for _ in range(2):
        assert sorted(t.data for t in ex.run([a], ints(10))) == list(range(1, 11))
    events = read(a.log)
    setups = [e["pid"] for e in events if e["event"] == "setup"]
    teardowns = [e["pid"] for e in events if e["event"] == "teardown"]
    assert len(setups) == 2 and len(set(setups)) == 1  # set up once per run, in the same actor
    assert teardowns == setups  # and torn down at the end of every run
    assert len(alive_pool_actors(timeout=0)) == 1
    ex.close()
    assert alive_pool_actors() == []


def test_execute_called_directly_with_plain_stages(ray_attached):
    # the NeMo Curator custom-executor shape: someone calls execute() without run()

    ex = RayActorPoolExecutor(show_progress=False)
    out = ex.execute([AddOne("a"), AddOne("b")], [Task(data=i, task_id=str(i)) for i in range(5)])
    assert sorted(t.data for t in out) == [2, 3, 4, 5, 6]
    assert alive_pool_actors() == []


def test_get_executor_by_name_runs(ray_attached):
    ex = get_executor("ray_actor_pool", show_progress=False)
    assert isinstance(ex, RayActorPoolExecutor)
    assert sorted(t.data for t in ex.run([Small()], [Task(data={"i": i, "blob": b"x"}) for i in range(3)])) == [0, 1, 2]


def test_a_reduce_worker_killed_mid_shuffle_loses_and_duplicates_nothing(ray_attached, tmp_path):
    from rap_stages import DieOnceInReduce



    stages = [AddOne(), DieOnceInReduce(str(tmp_path))]
    result = RayActorPoolExecutor(show_progress=False).run(stages, ints(40))
    assert (tmp_path / "die_once.died").exists(), "the test did not get to kill a reduce worker"
    got = {t.data["key"]: t.data["ids"] for t in result}
    assert got == {k: [str(i) for i in range(40) if (i + 1) % 4 == k] for k in range(4)}
    setups = read(tmp_path / "die_once.jsonl")
    assert len({e["pid"] for e in setups}) == len(setups) >= 2  # the replacement was set up too
    assert alive_pool_actors() == []


def test_a_gang_rank_killed_mid_stage_restarts_the_whole_gang(ray_attached, tmp_path):
    from curator_exec_core.testing import LifecycleLog
    from curator_exec_core.testing.stages import AllReduceSum

    result = RayActorPoolExecutor(show_progress=False).run([AllReduceSum(str(tmp_path), die_once=True)], ints(30))
    assert (tmp_path / "all_reduce.died").exists(), "the test did not get to kill a rank"
    assert sorted(t.data["value"] for t in result) == list(range(30))  # nothing lost, nothing twice
    assert {t.data["sum"] for t in result} == {sum(range(30))}
    setups = LifecycleLog(tmp_path).per_who("setup", "all_reduce")
    assert len(setups) == 4  # two ranks, twice: the whole gang started again
    # every rank that survived tore down (the killed one could not)
    assert len(LifecycleLog(tmp_path).per_who("teardown", "all_reduce")) == 3
    assert alive_pool_actors() == []


def test_a_default_run_prints_no_engine_chatter(ray_driver_env: dict, tmp_path: object) -> None:
    """With default settings the engines' own lines go to the engine log file, not the console."""
    from curator_exec_ray.testing import assert_quiet, quiet_run

    stdout, stderr, results = quiet_run("ray_actor_pool", str(tmp_path), env=ray_driver_env)
    assert_quiet(stdout, stderr, at_most=0)
    assert len(results) == 1 and results[0].split()[1] == "24"
    with open(results[0].split()[2]) as f:  # Ray's "Connecting to existing Ray cluster" line
        assert "Connecting to existing Ray cluster" in f.read()


def test_a_windowed_run_sets_its_actors_up_once_and_tears_them_down_at_its_end(ray_attached, tmp_path):
    """A generator source (or a checkpoint) makes the run call execute once per window: the actors a
    window set up serve the next windows (one setup and one teardown per actor for the whole run),
    and a barrier after them gets their resources (a shuffle on two cores)."""
    from curator_exec_core.testing.kit.base import canonical, reference_run
    from curator_exec_core.testing.stages import KeepFirst

    stage = Logged(tmp_path, "windowed", cpus=0.5)
    ex = RayActorPoolExecutor(pool_size=2, source_window=25, show_progress=False)
    result = ex.run([stage], (Task(data=i) for i in range(200)))  # 8 windows
    assert sorted(t.data for t in result) == list(range(1, 201))
    events = read(stage.log)
    setups = [e for e in events if e["event"] == "setup"]
    teardowns = [e for e in events if e["event"] == "teardown"]
    assert 1 <= len(setups) <= 2, f"{len(setups)} setups for 8 windows on a pool of 2: actors set up per window"
    assert len(teardowns) == len(setups)
    assert alive_pool_actors() == []
    # with a checkpoint the map part is windowed too, then its actors make room for the shuffle
    stage2 = Logged(tmp_path, "before_shuffle", cpus=1.0)
    got = ex.run([stage2, KeepFirst(modulo=7)], (Task(data=i) for i in range(100)),
                 checkpoint_path=tmp_path / "ck")
    assert canonical(got) == canonical(reference_run([stage2, KeepFirst(modulo=7)], ints(100)))
    assert len([e for e in read(stage2.log) if e["event"] == "setup"]) <= 2
    assert alive_pool_actors() == []

"""The executor conformance suite. See :mod:`curator_exec_core.testing`."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import pytest

from curator_exec_core.capacity import Capacity, GpuInfo, NodeCapacity
from curator_exec_core.checkpoint import Checkpoint
from curator_exec_core.errors import CheckpointError, ConfigError, PlanError, StageFailedError
from curator_exec_core.executor import BaseExecutor
from curator_exec_core.registry import list_executors
from curator_exec_core.shuffle import key_digest, task_order
from curator_exec_core.stages import ProcessingStage, Resources
from curator_exec_core.tasks import FailedTask, PipelineResult, Task
from curator_exec_core.testing.stages import (
    RESUME_ENV,
    AddOne,
    AllReduceSum,
    Bands,
    DropAll,
    FailOn,
    FanOut,
    Flaky,
    Generate,
    Identity,
    KeepEven,
    KeepFirst,
    LifecycleLog,
    Paced,
    Recorded,
    RecordedShuffle,
    SquareBatch,
    Unwrap,
    resume_stages,
)

MakeExecutor = Callable[..., BaseExecutor]


class _Reference(BaseExecutor):
    """The reference semantics: one worker per stage, in process, stage after stage."""

    name = "reference"
    concurrent_stages = False

    def execute(self, stages: list[ProcessingStage], initial_tasks: list[Task] | None = None) -> list[Task]:
        tasks = list(initial_tasks or [])
        for stage in stages:
            stage.setup(None)
            tasks = stage.process_batch(tasks)
            stage.teardown()
        return tasks


def reference_run(stages: Sequence[ProcessingStage], tasks: Sequence[Task] | None, **options: Any) -> PipelineResult:
    """What every executor must produce for ``stages`` on ``tasks`` (computed in process)."""
    return _Reference(show_progress=False, **options).run(list(stages), _fresh(tasks))


def _fresh(tasks: Sequence[Task] | None) -> list[Task] | None:
    return None if tasks is None else [Task(data=t.data, task_id=t.task_id) for t in tasks]


def canonical(tasks: Sequence[Task]) -> list[tuple[str, str]]:
    """Outputs as a sorted multiset of ``(task_id, repr(data))``."""
    return sorted((t.task_id, repr(t.data)) for t in tasks)


def _ints(n: int) -> list[Task]:
    return [Task(data=i) for i in range(n)]


def _groups(values: dict[str, int], key: Callable[[int], Any]) -> dict[Any, list[str]]:
    """Plain-Python grouping: key -> the task ids with that key, in task_id order."""
    out: dict[Any, list[str]] = {}
    for task_id in sorted(values, key=task_order):
        out.setdefault(key(values[task_id]), []).append(task_id)
    return out


class ExecutorConformance:
    """Behaviour every executor must show. Subclass it and provide ``make_executor``.

    ``make_executor(**options)`` must return a new executor built with those
    options (``ignore_failures``, ``max_retries``, ``show_progress``, ...).
    Class attributes tune sizes for slow engines.
    """

    #: tasks in the large-input test
    large_n: int = 10_000
    #: tasks in the ordinary tests
    n: int = 60
    #: seconds per task of the paced stage in the resume tests, and how long after the first journal
    #: record the driver is killed at most (seeded random)
    resume_seconds: float = 0.03
    resume_kill_window: float = 1.0

    @pytest.fixture
    def driver_env(self) -> dict[str, str]:
        """Environment a second driver process needs to reach this executor's compute (the Ray
        plugins give ``RAY_ADDRESS`` of the test session's cluster). Default: none."""
        return {}

    @pytest.fixture
    def make_executor(self) -> MakeExecutor:
        raise NotImplementedError(
            "subclass ExecutorConformance and define a `make_executor` fixture returning (**options) -> executor"
        )

    # -- helpers -------------------------------------------------------------
    def run_and_compare(self, make_executor: MakeExecutor, stages: list[ProcessingStage],
                        tasks: list[Task] | None, **options: Any) -> PipelineResult:
        expected = reference_run(stages, tasks, **options)
        got = make_executor(show_progress=False, **options).run(stages, _fresh(tasks))
        assert isinstance(got, list) and isinstance(got, PipelineResult)
        assert canonical(got) == canonical(expected)
        assert sorted(f.task_id for f in got.failed_tasks) == sorted(f.task_id for f in expected.failed_tasks)
        return got

    # -- outputs -------------------------------------------------------------
    def test_identity(self, make_executor: MakeExecutor) -> None:
        got = self.run_and_compare(make_executor, [Identity()], _ints(self.n))
        assert sorted(t.data for t in got) == list(range(self.n))
        assert sorted(t.task_id for t in got) == sorted(str(i) for i in range(self.n))

    def test_new_tasks_keep_parent_ids(self, make_executor: MakeExecutor) -> None:
        got = self.run_and_compare(make_executor, [AddOne("a"), AddOne("b")], _ints(self.n))
        assert {t.task_id: t.data for t in got} == {str(i): i + 2 for i in range(self.n)}
        assert all([p.stage for p in t.stage_perf] == ["a", "b"] for t in got)

    def test_fan_out(self, make_executor: MakeExecutor) -> None:
        got = self.run_and_compare(make_executor, [FanOut(3)], _ints(self.n))
        assert len(got) == 3 * self.n
        assert {"0.0", "0.1", "0.2"} <= {t.task_id for t in got}

    def test_filter(self, make_executor: MakeExecutor) -> None:
        got = self.run_and_compare(make_executor, [KeepEven()], _ints(self.n))
        assert sorted(t.data for t in got) == list(range(0, self.n, 2))

    def test_batch_size_greater_than_one(self, make_executor: MakeExecutor) -> None:
        got = self.run_and_compare(make_executor, [AddOne("a"), SquareBatch(7), AddOne("b", batch_size=5)],
                                   _ints(self.n))
        assert sorted(t.data for t in got) == sorted((i + 1) ** 2 + 1 for i in range(self.n))
        assert all(1 <= t.metadata["batch"] <= 7 for t in got)

    def test_many_stages(self, make_executor: MakeExecutor) -> None:
        stages: list[ProcessingStage] = [AddOne(f"add{i}") for i in range(4)]
        stages += [FanOut(2, "fan1"), KeepEven(), AddOne("add4"), FanOut(2, "fan2"), SquareBatch(3), AddOne("add5")]
        got = self.run_and_compare(make_executor, stages, _ints(self.n))
        assert len(got) == 2 * self.n  # half survive the filter, then doubled

    def test_empty_initial_list(self, make_executor: MakeExecutor) -> None:
        got = make_executor(show_progress=False).run([AddOne()], [])
        assert list(got) == [] and got.failed_tasks == []

    def test_everything_filtered(self, make_executor: MakeExecutor) -> None:
        got = self.run_and_compare(make_executor, [DropAll(), AddOne()], _ints(self.n))
        assert list(got) == []

    def test_empty_task_seeds_pipeline(self, make_executor: MakeExecutor) -> None:
        got = self.run_and_compare(make_executor, [Generate(self.n), AddOne()], None)
        assert sorted(t.data for t in got) == list(range(1, self.n + 1))

    def test_large_input(self, make_executor: MakeExecutor) -> None:
        got = self.run_and_compare(make_executor, [AddOne("a"), KeepEven(), AddOne("b")], _ints(self.large_n))
        assert len(got) == self.large_n // 2

    def test_deterministic_ids(self, make_executor: MakeExecutor) -> None:
        stages = [FanOut(2), KeepEven(), FanOut(3, "fan_b")]
        first = make_executor(show_progress=False).run(stages, _ints(self.n))
        second = make_executor(show_progress=False).run(stages, _ints(self.n))
        assert canonical(first) == canonical(second)

    # -- lifecycle -------------------------------------------------------------
    def test_setup_and_teardown_counts(self, make_executor: MakeExecutor, tmp_path: Any) -> None:
        log = LifecycleLog(tmp_path)
        stages = [Recorded(str(tmp_path), "first"), AddOne(), Recorded(str(tmp_path), "second")]
        got = make_executor(show_progress=False).run(stages, _ints(self.n))
        assert len(got) == self.n
        for name in ("first", "second"):
            setups = log.per_who("setup", name)
            teardowns = log.per_who("teardown", name)
            assert sum(setups.values()) >= 1, f"{name}: setup never ran"
            assert all(c == 1 for c in setups.values()), f"{name}: a worker ran setup twice: {setups}"
            assert setups == teardowns, f"{name}: setup/teardown per worker differ: {setups} vs {teardowns}"
            nodes = log.per_who("setup_on_node", name)
            assert nodes and all(c == 1 for c in nodes.values()), f"{name}: setup_on_node per node: {nodes}"

    def test_teardown_after_failure(self, make_executor: MakeExecutor, tmp_path: Any) -> None:
        log = LifecycleLog(tmp_path)
        stages = [Recorded(str(tmp_path), "ok"), Recorded(str(tmp_path), "bad", fail_on=(7,))]
        with pytest.raises(StageFailedError):
            make_executor(show_progress=False).run(stages, _ints(self.n))
        for name in ("ok", "bad"):
            assert log.per_who("setup", name) == log.per_who("teardown", name), name

    # -- failures --------------------------------------------------------------
    def test_failure_aborts_naming_stage_and_task(self, make_executor: MakeExecutor) -> None:
        with pytest.raises(StageFailedError) as info:
            make_executor(show_progress=False).run([AddOne(), FailOn((5,), "picky")], _ints(self.n))
        err = info.value
        assert err.stage == "picky" and err.task_id == "4"
        assert "picky" in str(err) and "'4'" in str(err)
        assert "ValueError" in err.error and "cannot take 5" in err.error
        assert "ValueError" in err.remote_traceback

    def test_ignore_failures_reports_every_failed_task(self, make_executor: MakeExecutor) -> None:
        stages = [FailOn((3, 10), "first"), AddOne(), FailOn((20, 31), "second")]
        got = self.run_and_compare(make_executor, stages, _ints(self.n), ignore_failures=True)
        failed = {(f.stage, f.task_id) for f in got.failed_tasks}
        assert failed == {("first", "3"), ("first", "10"), ("second", "19"), ("second", "30")}
        assert all(isinstance(f, FailedTask) and "ValueError" in f.error for f in got.failed_tasks)
        assert len(got) + len(got.failed_tasks) == self.n  # nothing silently dropped

    def test_max_retries(self, make_executor: MakeExecutor, tmp_path: Any) -> None:
        got = make_executor(show_progress=False, max_retries=1).run([Flaky(str(tmp_path))], _ints(self.n))
        assert sorted(t.data for t in got) == list(range(self.n)) and not got.failed_tasks

    def test_retries_exhausted(self, make_executor: MakeExecutor, tmp_path: Any) -> None:
        got = make_executor(show_progress=False, max_retries=1, ignore_failures=True).run(
            [Flaky(str(tmp_path), failures=2)], _ints(10))
        assert list(got) == [] and len(got.failed_tasks) == 10
        assert all(f.attempts == 2 for f in got.failed_tasks)

    # -- shuffle stages ----------------------------------------------------------------
    def test_shuffle_groups_every_task_of_a_key_in_task_id_order(self, make_executor: MakeExecutor) -> None:
        got = make_executor(show_progress=False).run([AddOne(), KeepFirst(7)], _ints(self.n))
        expected = _groups({str(i): i + 1 for i in range(self.n)}, lambda d: d % 7)
        assert {t.data["key"]: t.data["ids"] for t in got} == expected
        assert {t.task_id for t in got} == {f"keep_first#{key_digest(k)[:16]}" for k in expected}
        assert all(t.data["first"] == int(t.data["ids"][0]) + 1 for t in got)
        assert got.metrics["stages"]["keep_first"]["tasks_in"] == self.n
        assert got.metrics["stages"]["keep_first"]["tasks_out"] == len(expected)

    def test_shuffle_with_several_keys_or_none_per_task(self, make_executor: MakeExecutor) -> None:
        got = self.run_and_compare(make_executor, [Bands()], _ints(self.n))
        kept = [i for i in range(self.n) if i % 5]
        expected = {("a", r): sorted(i for i in kept if i % 3 == r) for r in range(3)}
        expected |= {("b", r): sorted(i for i in kept if i % 4 == r) for r in range(4)}
        assert {tuple(t.data["key"]): t.data["members"] for t in got} == {k: v for k, v in expected.items() if v}

    def test_shuffle_anywhere_and_twice_same_answer_as_local(self, make_executor: MakeExecutor) -> None:
        stages = [FanOut(2), KeepFirst(11, "first_pass"), Unwrap(), AddOne("again"), KeepFirst(3, "second_pass")]
        got = self.run_and_compare(make_executor, stages, _ints(self.n))
        # plain Python: fan-out data i*10+j (ids "i.j"), first of each group by data % 11 (in id order),
        # then grouped again by (first + 1) % 3
        fanned = {f"{i}.{j}": i * 10 + j for i in range(self.n) for j in range(2)}
        firsts = [fanned[ids[0]] for ids in _groups(fanned, lambda d: d % 11).values()]
        expected = sorted(len([f for f in firsts if (f + 1) % 3 == r]) for r in range(3))
        assert sorted(len(t.data["ids"]) for t in got) == [c for c in expected if c]

    def test_shuffle_ids_do_not_depend_on_the_partition_count(self, make_executor: MakeExecutor) -> None:
        one = make_executor(show_progress=False).run([KeepFirst(13, num_partitions=1)], _ints(self.n))
        many = make_executor(show_progress=False).run([KeepFirst(13, num_partitions=5)], _ints(self.n))
        assert canonical(one) == canonical(many) and len(one) == min(13, self.n)

    def test_shuffle_edge_cases_empty_input_singletons_and_skew(self, make_executor: MakeExecutor) -> None:
        ex = make_executor(show_progress=False)
        assert list(ex.run([DropAll(), KeepFirst()], _ints(self.n))) == []
        singles = ex.run([KeepFirst(10 * self.n)], _ints(self.n))
        assert sorted(t.data["ids"] for t in singles) == sorted([str(i)] for i in range(self.n))
        [skew] = ex.run([KeepFirst(1)], _ints(self.n))
        assert skew.data["ids"] == sorted((str(i) for i in range(self.n)), key=task_order)

    def test_shuffle_setup_before_reduce_and_teardown_once(self, make_executor: MakeExecutor, tmp_path: Any) -> None:
        log = LifecycleLog(tmp_path)
        got = make_executor(show_progress=False).run([RecordedShuffle(str(tmp_path))], _ints(self.n))
        assert len(got) == 5  # reduce raises if it runs on a worker that was not set up
        setups = log.per_who("setup", "recorded_shuffle")
        assert sum(setups.values()) >= 1 and all(c == 1 for c in setups.values())
        assert setups == log.per_who("teardown", "recorded_shuffle")

    def test_shuffle_failures_name_the_stage_and_the_task_or_key(self, make_executor: MakeExecutor,
                                                                tmp_path: Any) -> None:
        folder = str(tmp_path)
        with pytest.raises(StageFailedError) as info:
            make_executor(show_progress=False).run([RecordedShuffle(folder, fail_keys_on=(4,))], _ints(self.n))
        assert info.value.stage == "recorded_shuffle" and info.value.task_id == "4"
        assert "keys()" in info.value.error and "refuses 4" in info.value.error
        with pytest.raises(StageFailedError) as info:
            make_executor(show_progress=False).run([RecordedShuffle(folder, fail_reduce_on=(2,))], _ints(self.n))
        assert info.value.stage == "recorded_shuffle" and "reduce(key=2)" in info.value.error
        assert info.value.task_id == f"recorded_shuffle#{key_digest(2)[:16]}"
        with pytest.raises(StageFailedError, match="unsupported shuffle key") as info:
            make_executor(show_progress=False).run([RecordedShuffle(folder, bad_key_on=(3,))], _ints(self.n))
        assert info.value.stage == "recorded_shuffle" and info.value.task_id == "3"
        log = LifecycleLog(tmp_path)
        assert log.per_who("setup", "recorded_shuffle") == log.per_who("teardown", "recorded_shuffle")

    def test_shuffle_failures_become_records_with_ignore_failures(self, make_executor: MakeExecutor,
                                                                 tmp_path: Any) -> None:
        stage = RecordedShuffle(str(tmp_path), fail_keys_on=(4, 9), fail_reduce_on=(2,))
        got = self.run_and_compare(make_executor, [FailOn((7,), "picky"), stage], _ints(self.n),
                                   ignore_failures=True)
        failed = {(f.stage, f.task_id) for f in got.failed_tasks}
        assert failed == {("picky", "7"), ("recorded_shuffle", "4"), ("recorded_shuffle", "9"),
                          ("recorded_shuffle", f"recorded_shuffle#{key_digest(2)[:16]}")}
        assert sorted(t.data["key"] for t in got) == [0, 1, 3, 4]
        counts = got.metrics["stages"]["recorded_shuffle"]
        assert (counts["tasks_in"], counts["tasks_out"], counts["tasks_failed"]) == (self.n - 1, 4, 3)

    # -- gang stages ----------------------------------------------------------------
    def test_gang_ranks_start_together_talk_and_share_the_input_evenly(self, make_executor: MakeExecutor,
                                                                       tmp_path: Any) -> None:
        stages = [AddOne(), AllReduceSum(str(tmp_path)), Identity()]
        got = make_executor(show_progress=False).run(stages, _ints(self.n))
        assert len(got) == self.n
        total = sum(range(1, self.n + 1))
        assert all(t.data == {**t.data, "sum": total, "size": 2} for t in got)  # only talking ranks know it
        ids = sorted((str(i) for i in range(self.n)), key=task_order)
        half = self.n // 2
        assert sorted((t.data["rank"], tuple(t.data["ids"])) for t in got) == sorted(
            [(0, tuple(ids[:half]))] * half + [(1, tuple(ids[half:]))] * (self.n - half))
        assert sorted(t.task_id for t in got) == sorted(ids)  # one to one: the ids are kept
        log = LifecycleLog(tmp_path)
        assert sorted(log.per_who("setup", "all_reduce").values()) == [1, 1]
        assert log.per_who("setup", "all_reduce") == log.per_who("teardown", "all_reduce")

    def test_gang_rank_failure_fails_the_stage_and_every_rank_tears_down(self, make_executor: MakeExecutor,
                                                                        tmp_path: Any) -> None:
        with pytest.raises(StageFailedError) as info:
            make_executor(show_progress=False).run([AllReduceSum(str(tmp_path), fail_rank=1)], _ints(self.n))
        assert info.value.stage == "all_reduce"
        log = LifecycleLog(tmp_path)
        assert len(log.per_who("setup", "all_reduce")) == 2
        assert log.per_who("setup", "all_reduce") == log.per_who("teardown", "all_reduce")

    def test_gang_that_cannot_fit_fails_at_plan_time(self, make_executor: MakeExecutor, tmp_path: Any) -> None:
        executor = make_executor(show_progress=False)
        size = int(executor.capacity().total_cpus * 2) + 4  # 0.5 CPU a rank: more ranks than fit
        with pytest.raises(PlanError, match=rf"gang stage 'all_reduce' needs {size} ranks of cpus=0.5"):
            executor.run([AllReduceSum(str(tmp_path), gang_size=size)], _ints(3))
        assert LifecycleLog(tmp_path).entries() == []  # nothing started

    # -- resumable runs --------------------------------------------------------
    def _driver(self, make_executor: MakeExecutor, driver_env: dict[str, str], checkpoint: Any,
                **params: Any) -> subprocess.Popen[bytes]:
        """``curator-exec run`` of the resume pipeline in a process of its own (its own session, so
        the test can kill its whole process group), with this executor and its options."""
        executor = make_executor(show_progress=False)
        sets = [f"{f.name}={json.dumps(v)}" for f in attrs.fields(type(executor.options))
                if (v := getattr(executor.options, f.name)) != f.default]
        env = {**os.environ, **driver_env, RESUME_ENV: json.dumps(params)}
        name = executor.executor_name
        if name not in {spec.name for spec in list_executors()}:  # not registered (yet): by its class, importable from its folder
            cls = type(executor)
            name = f"{cls.__module__}:{cls.__qualname__}"
            folder = os.path.dirname(os.path.abspath(sys.modules[cls.__module__].__file__ or "."))
            while os.path.exists(os.path.join(folder, "__init__.py")):
                folder = os.path.dirname(folder)
            env["PYTHONPATH"] = os.pathsep.join(p for p in (folder, env.get("PYTHONPATH", "")) if p)
        cmd = [sys.executable, "-m", "curator_exec_core", "run", "--pipeline",
               "curator_exec_core.testing.stages:resume_pipeline", "--executor", name,
               "--checkpoint", str(checkpoint), "--json", *[a for kv in sets for a in ("--set", kv)]]
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)

    def _resume_and_compare(self, make_executor: MakeExecutor, checkpoint: Any, **params: Any) -> PipelineResult:
        stages, tasks = resume_stages(**params)
        expected = reference_run(stages, tasks)
        got = make_executor(show_progress=False).run(stages, tasks, checkpoint_path=checkpoint)
        assert canonical(got) == canonical(expected)
        assert got.failed_tasks == [] and got.metrics["checkpoint"]["source_tasks"] == len(tasks)
        return got

    @staticmethod
    def _wait_for(predicate: Callable[[], bool], proc: subprocess.Popen[bytes], timeout: float = 180) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            if proc.poll() is not None:
                return False
            time.sleep(0.02)
        raise AssertionError(f"the driver did not get there in {timeout} s")

    @staticmethod
    def _journal_written(checkpoint: Any) -> Callable[[], bool]:
        def written() -> bool:
            folder = os.path.join(str(checkpoint), "part-0")
            return os.path.isdir(folder) and any(os.path.getsize(os.path.join(folder, f)) > 0
                                                 for f in os.listdir(folder) if f.endswith(".journal"))
        return written

    def test_resume_of_a_finished_run_returns_its_result_without_work(self, make_executor: MakeExecutor,
                                                                      tmp_path: Any) -> None:
        stages, tasks = resume_stages(n=self.n, seconds=0.0)
        expected = reference_run(stages, tasks)
        first = make_executor(show_progress=False).run(stages, tasks, checkpoint_path=tmp_path / "ck")
        assert canonical(first) == canonical(expected)
        assert first.metrics["checkpoint"]["resumed_tasks"] == 0
        stages, tasks = resume_stages(n=self.n, seconds=0.0)
        again = make_executor(show_progress=False).run(stages, tasks, checkpoint_path=tmp_path / "ck")
        assert canonical(again) == canonical(expected)
        assert again.metrics["checkpoint"]["resumed_tasks"] == self.n
        assert all(m["tasks_in"] == 0 for m in again.metrics["stages"].values())  # nothing ran again

    @pytest.mark.parametrize("seed", [0, 1, 2])
    def test_resume_after_the_driver_is_killed_at_a_random_point(self, make_executor: MakeExecutor,
                                                                  driver_env: dict[str, str], tmp_path: Any,
                                                                  seed: int) -> None:
        params = {"n": self.n, "seconds": self.resume_seconds}
        ck = tmp_path / "ck"
        proc = self._driver(make_executor, driver_env, ck, **params)
        try:
            if self._wait_for(self._journal_written(ck), proc):
                time.sleep(random.Random(seed).uniform(0.0, self.resume_kill_window))
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # the driver and everything in its process group
            out, err = proc.communicate()
        assert proc.returncode in (0, -signal.SIGKILL), err.decode()[-2000:]
        got = self._resume_and_compare(make_executor, ck, **params)
        if proc.returncode != 0:  # killed mid-run: some work came from the checkpoint, the rest ran now
            assert got.metrics["checkpoint"]["resumed_tasks"] < self.n

    def test_resume_after_a_worker_is_killed(self, make_executor: MakeExecutor, driver_env: dict[str, str],
                                             tmp_path: Any) -> None:
        params = {"n": self.n, "seconds": self.resume_seconds, "kill_dir": str(tmp_path), "kill_on": 401}
        proc = self._driver(make_executor, driver_env, tmp_path / "ck", **params)
        out, err = proc.communicate(timeout=300)
        assert os.path.exists(tmp_path / "killed"), "the stage did not kill its worker"
        # the engine either replaced the worker and finished, or the run died with it
        assert proc.returncode in (0, 1, -signal.SIGKILL), err.decode()[-2000:]
        self._resume_and_compare(make_executor, tmp_path / "ck", **params)

    def test_resume_after_a_finished_shuffle_does_not_redo_it(self, make_executor: MakeExecutor,
                                                              driver_env: dict[str, str], tmp_path: Any) -> None:
        params = {"n": self.n, "seconds": self.resume_seconds, "shuffle": True}
        ck = tmp_path / "ck"
        proc = self._driver(make_executor, driver_env, ck, **params)
        try:
            finished = self._wait_for(lambda: os.path.exists(ck / "part-1.outputs"), proc)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
        assert finished, "the driver ended before its shuffle finished"
        got = self._resume_and_compare(make_executor, ck, **params)
        assert got.metrics["checkpoint"]["resumed_after"] == "keep_first"
        assert got.metrics["checkpoint"]["resumed_tasks"] == self.n
        before = [m for m in got.metrics["stages"].values() if m["index"] <= 2]  # branchy, paced_1, keep_first
        assert all(m["tasks_in"] == 0 for m in before), "work before the finished shuffle was redone"

    def test_torn_journal_end_is_ignored(self, make_executor: MakeExecutor, tmp_path: Any) -> None:
        stages, tasks = resume_stages(n=self.n, seconds=0.0)
        make_executor(show_progress=False).run(stages, tasks, checkpoint_path=tmp_path)
        journals = sorted((tmp_path / "part-0").glob("*.journal"))
        assert journals
        with open(journals[-1], "r+b") as f:  # a kill in the middle of the last write
            f.truncate(max(1, os.path.getsize(journals[-1]) - 7))
        got = self._resume_and_compare(make_executor, tmp_path, n=self.n, seconds=0.0)
        assert got.metrics["checkpoint"]["resumed_tasks"] < self.n

    def test_checkpoint_mismatch_lock_and_bad_paths_are_clear_errors(self, make_executor: MakeExecutor,
                                                                     tmp_path: Any) -> None:
        executor = make_executor(show_progress=False)
        stages, tasks = resume_stages(n=6, seconds=0.0)
        executor.run(stages, tasks, checkpoint_path=tmp_path / "ck")
        manifest = (tmp_path / "ck" / "manifest.json").read_bytes()
        with pytest.raises(CheckpointError, match=r"stage 1 name: 'paced_1' -> 'renamed'.*overwrite=True"):
            executor.run([stages[0], Paced(0.0, "renamed"), stages[2]], tasks, checkpoint_path=tmp_path / "ck")
        with pytest.raises(CheckpointError, match=r"initial tasks: 6 tasks .* -> 7 tasks"):
            executor.run(stages, [*tasks, Task(data=6, task_id="6")], checkpoint_path=tmp_path / "ck")
        assert (tmp_path / "ck" / "manifest.json").read_bytes() == manifest  # nothing overwritten
        fresh = executor.run(stages[:1], tasks, checkpoint_path=tmp_path / "ck", overwrite=True)
        assert canonical(fresh) == canonical(reference_run(stages[:1], tasks))
        holder = Checkpoint(tmp_path / "ck")
        holder.open(stages[:1], tasks, False)
        try:
            with pytest.raises(CheckpointError, match="in use by another run"):
                executor.run(stages[:1], tasks, checkpoint_path=tmp_path / "ck")
        finally:
            holder.close()
        (tmp_path / "file").write_text("x")
        with pytest.raises(CheckpointError, match="is a file"):
            executor.run(stages, tasks, checkpoint_path=tmp_path / "file")
        (tmp_path / "other").mkdir()
        (tmp_path / "other" / "notes.txt").write_text("mine")
        with pytest.raises(CheckpointError, match="holds no curator-exec checkpoint"):
            executor.run(stages, tasks, checkpoint_path=tmp_path / "other", overwrite=True)
        assert (tmp_path / "other" / "notes.txt").read_text() == "mine"
        newer = json.loads(manifest)
        newer["format"] = 99
        (tmp_path / "ck" / "manifest.json").write_text(json.dumps(newer))
        with pytest.raises(CheckpointError, match="format 99 by a newer curator-exec"):
            executor.run(stages, tasks, checkpoint_path=tmp_path / "ck", overwrite=True)

    # -- config, plan, capacity --------------------------------------------------
    def test_config_typo_is_an_error(self, make_executor: MakeExecutor) -> None:
        with pytest.raises(ConfigError, match="ignore_failures"):
            make_executor(ignore_failurs=True)
        with pytest.raises(ConfigError, match="max_retries"):
            make_executor(max_retries="twice")

    def test_infeasible_request_fails_at_plan_time(self, make_executor: MakeExecutor, tmp_path: Any) -> None:
        executor = make_executor(show_progress=False)
        too_many = executor.capacity().total_gpus + 2
        stage = Recorded(str(tmp_path), "greedy", resources=Resources(cpus=0.5, gpus=float(too_many)))
        with pytest.raises(PlanError, match="greedy"):
            executor.run([stage], _ints(3))
        assert LifecycleLog(tmp_path).entries() == []  # nothing started

    def test_capacity_shape(self, make_executor: MakeExecutor) -> None:
        cap = make_executor(show_progress=False).capacity()
        assert isinstance(cap, Capacity) and cap.nodes
        for node in cap.nodes:
            assert isinstance(node, NodeCapacity)
            assert node.cpus > 0 and node.memory > 0 and node.node_id
            assert all(isinstance(g, GpuInfo) for g in node.gpus)
            if not node.gpus:
                assert node.gpu_reason
        assert cap.total_cpus == sum(n.cpus for n in cap.nodes)

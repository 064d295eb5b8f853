"""`local`'s shuffle under a memory budget: the same answer spilled or not, spill files removed,
input read once, failure records passed through, memory bounded, and the options."""

from __future__ import annotations

import os
import stat
import tracemalloc
from collections.abc import Iterator
from typing import Any

import pytest

from curator_exec_core import Pipeline, ShuffleStage, Task, WorkerMetadata, get_executor
from curator_exec_core.errors import ConfigError, StageContractError, StageFailedError
from curator_exec_core.shuffle import ManagedShuffle, SpillingGrouper, group_in_process, key_digest
from curator_exec_core.tasks import FailedTask
from curator_exec_core.testing.kit.shuffle import ShuffleTests
from curator_exec_core.testing.stages import AddOne, Bands, FailOn, FanOut, HashDedup, KeepFirst
from curator_exec_local.executor import parse_memory_budget


class TestShuffleKitSpillingEverything(ShuffleTests):
    """The kit's shuffle tests with a budget of 0 bytes: every chunk of keyed pieces goes to disk,
    every partition file is split until it holds one key."""

    @pytest.fixture
    def make_executor(self, tmp_path):
        return lambda **options: get_executor("local", **{"shuffle_memory_budget": 0,
                                                          "shuffle_spill_dir": str(tmp_path / "spill"), **options})


class TestShuffleKitSmallBudget(ShuffleTests):
    """... and with a budget of a few KB: some pieces held, some spilled, some partitions split."""

    @pytest.fixture
    def make_executor(self):
        return lambda **options: get_executor("local", **{"shuffle_memory_budget": 3000, **options})


def managed(stage: ShuffleStage, **options: Any) -> ManagedShuffle:
    ex = get_executor("local", show_progress=False, **options)
    [m] = ex.managed_stages([stage])
    assert isinstance(m, ManagedShuffle)
    m.setup(WorkerMetadata(worker_id="test", node_id="here"))
    return m


def ints(n: int) -> list[Task]:
    return [Task(data=i, task_id=str(i)) for i in range(n)]


def answer(tasks: list[Task]) -> list[tuple[str, str]]:
    return [(t.task_id, repr(t.data)) for t in tasks]


@pytest.mark.parametrize("stage", [KeepFirst(7), KeepFirst(1000), HashDedup(), Bands()], ids=repr)
@pytest.mark.parametrize("budget", [0, 1, 500, 5000, 50_000])
def test_same_answer_and_order_with_and_without_spilling(stage, budget, tmp_path):
    expected = answer(list(group_in_process(managed(stage), ints(2000))))
    got = answer(list(group_in_process(managed(stage), ints(2000), memory_budget=budget, spill_dir=str(tmp_path))))
    assert got == expected  # the same outputs, ids and order (digest order, partition by partition)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("budget", [None, 0, 4000])
def test_pipeline_answer_does_not_depend_on_the_budget(budget):
    stages = [FanOut(3), AddOne(), KeepFirst(13)]
    reference = Pipeline("p", stages).run(get_executor("local", show_progress=False, shuffle_memory_budget=None),
                                          ints(500))
    got = Pipeline("p", stages).run(get_executor("local", show_progress=False, shuffle_memory_budget=budget),
                                    ints(500))
    assert answer(got) == answer(reference)
    assert got.metrics["stages"]["keep_first"]["tasks_in"] == 1500
    assert got.metrics["stages"]["keep_first"]["tasks_out"] == 13


class Peek(KeepFirst):
    """KeepFirst that looks into the spill directory from reduce() and can fail there."""

    def __init__(self, spill_dir: str, fail_on: int | None = None) -> None:
        super().__init__(5, name="peek")
        self.spill_dir = spill_dir
        self.fail_on = fail_on
        self.seen: list[tuple[str, int]] = []

    def reduce(self, key: Any, tasks: list[Task]) -> Task:
        for name in os.listdir(self.spill_dir):
            self.seen.append((name, stat.S_IMODE(os.stat(os.path.join(self.spill_dir, name)).st_mode)))
        if key == self.fail_on:
            raise ValueError(f"reduce() refuses {key}")
        return super().reduce(key, tasks)


def test_spill_files_in_a_private_directory_removed_after_success(tmp_path):
    stage = Peek(str(tmp_path))
    out = list(group_in_process(managed(stage), ints(300), memory_budget=100, spill_dir=str(tmp_path)))
    assert len(out) == 5
    assert stage.seen and all(name.startswith("curator-exec-shuffle-") and mode == 0o700 for name, mode in stage.seen)
    assert os.listdir(tmp_path) == []


def test_spill_files_removed_after_a_reduce_that_raises(tmp_path):
    stage = Peek(str(tmp_path), fail_on=3)
    with pytest.raises(StageFailedError, match="refuses 3"):
        list(group_in_process(managed(stage), ints(300), memory_budget=100, spill_dir=str(tmp_path)))
    assert stage.seen
    assert os.listdir(tmp_path) == []


def test_spill_files_removed_when_the_outputs_are_abandoned(tmp_path):
    outputs = group_in_process(managed(KeepFirst(50)), ints(300), memory_budget=100, spill_dir=str(tmp_path))
    next(outputs)
    assert len(os.listdir(tmp_path)) == 1
    outputs.close()
    assert os.listdir(tmp_path) == []


def test_through_the_executor_spill_files_removed_after_a_failing_run(tmp_path):
    ex = get_executor("local", show_progress=False, shuffle_memory_budget=0, shuffle_spill_dir=str(tmp_path))
    stage = Peek(str(tmp_path), fail_on=2)
    with pytest.raises(StageFailedError):
        Pipeline("p", [AddOne(), stage]).run(ex, ints(200))
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("budget", [None, 0, 100_000])
def test_a_generator_input_is_read_once_and_lazily(budget):
    pulled: list[int] = []

    def source() -> Iterator[Task]:
        for t in ints(1000):
            pulled.append(int(t.task_id))
            yield t

    outputs = group_in_process(managed(KeepFirst(7)), source(), memory_budget=budget)
    assert pulled == []  # nothing runs before the first next()
    got = list(outputs)
    assert pulled == list(range(1000))
    assert answer(got) == answer(list(group_in_process(managed(KeepFirst(7)), ints(1000))))


def test_run_barrier_takes_any_iterable():
    ex = get_executor("local", show_progress=False, shuffle_memory_budget=0)
    [stage] = ex.managed_stages([KeepFirst(3)])
    out = ex.run_barrier(stage, iter(ints(30)))
    assert sorted(t.data["key"] for t in out) == [0, 1, 2]


@pytest.mark.parametrize("budget", [None, 0, 1000, 10**9])
def test_failure_records_pass_through_first(budget, tmp_path):
    stages = [FailOn((3, 17, 40)), KeepFirst(4)]
    ex = get_executor("local", show_progress=False, ignore_failures=True, shuffle_memory_budget=budget,
                      shuffle_spill_dir=str(tmp_path))
    got = Pipeline("p", stages).run(ex, ints(100))
    assert sorted(t.task_id for t in got.failed_tasks) == ["17", "3", "40"]
    assert {t.task_id for t in got} == {f"keep_first#{key_digest(k)[:16]}" for k in range(4)}
    assert os.listdir(tmp_path) == []


class FailingKeys(KeepFirst):
    def keys(self, task: Task) -> list[int]:
        if task.data % 10 == 0:
            raise ValueError(f"no key for {task.data}")
        return super().keys(task)


@pytest.mark.parametrize("budget", [None, 0, 2000])
def test_keys_failures_come_first_in_input_order(budget):
    tasks = ints(95)
    incoming = Task(data=None, task_id="x")

    record = FailedTask.from_exception(incoming, "earlier", ValueError("before"), 1)
    got = list(group_in_process(managed(FailingKeys(3), ignore_failures=True, max_retries=1),
                                [*tasks[:50], record, *tasks[50:]], memory_budget=budget))
    failed = [t.task_id for t in got if isinstance(t, FailedTask)]
    assert failed == ["0", "10", "20", "30", "40", "x", "50", "60", "70", "80", "90"]
    assert all(isinstance(t, FailedTask) for t in got[:len(failed)])
    assert len(got) == len(failed) + 3


def test_one_group_larger_than_the_budget_is_reduced_anyway(caplog, tmp_path):
    tasks = [Task(data=i, task_id=str(i)) for i in range(200)]
    got = list(group_in_process(managed(KeepFirst(1)), tasks, memory_budget=500, spill_dir=str(tmp_path)))
    assert len(got) == 1 and len(got[0].data["ids"]) == 200
    assert "one group (one key)" in caplog.text
    assert os.listdir(tmp_path) == []


class Blobs(ShuffleStage):
    name = "blobs"

    def keys(self, task: Task) -> list[int]:
        return [task.data["i"] % 20]

    def reduce(self, key: Any, tasks: list[Task]) -> Task:
        return Task(data={"key": key, "bytes": sum(len(t.data["blob"]) for t in tasks)})


def blob_source(n: int, size: int) -> Iterator[Task]:
    for i in range(n):
        yield Task(data={"i": i, "blob": bytes([i % 251 + 1]) * size}, task_id=str(i))


def test_memory_stays_near_the_budget_for_a_shuffle_larger_than_it(tmp_path):
    """32 MB of tasks through a 4 MB budget: the traced peak stays far below the input."""
    n, size, budget = 320, 100_000, 4_000_000
    stage = managed(Blobs())
    tracemalloc.start()
    try:
        out = list(group_in_process(stage, blob_source(n, size), memory_budget=budget, spill_dir=str(tmp_path)))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sum(t.data["bytes"] for t in out) == n * size and len(out) == 20
    assert peak < 3 * budget, f"peak {peak / 1e6:.1f} MB for a {budget / 1e6:.0f} MB budget"
    assert os.listdir(tmp_path) == []


def test_grouper_reports_what_it_spilled(tmp_path):
    grouper = SpillingGrouper(managed(Blobs()), 1_000_000, str(tmp_path))
    out = list(grouper.run(blob_source(100, 50_000)))
    assert len(out) == 20
    assert grouper.flushes >= 4 and grouper.spilled_bytes >= 100 * 50_000


# -- the options -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "expected"), [
    (None, None), (0, 0), (123, 123), ("1GiB", 2**30), ("2GB", 2 * 10**9), ("1.5g", int(1.5 * 2**30)),
    ("512 MiB", 512 * 2**20), ("100", 100), ("25%", 2**28), ("auto", 2**28), ("AUTO", 2**28), ("50%", 2**29),
])
def test_memory_budget_values(value, expected):
    assert parse_memory_budget(value, memory=2**30) == expected


@pytest.mark.parametrize("value", ["lots", "1 parsec", "-5MB", -1, "%", 1.5])
def test_bad_memory_budgets_are_config_errors(value):
    with pytest.raises(ConfigError, match="shuffle_memory_budget"):
        get_executor("local", shuffle_memory_budget=value)


def test_default_budget_is_a_quarter_of_the_machine():
    from curator_exec_core.capacity import local_capacity

    ex = get_executor("local")
    assert ex.options.shuffle_memory_budget == "auto"
    assert ex.shuffle_memory_budget() == int(local_capacity().nodes[0].memory * 0.25)
    assert ex.options.shuffle_spill_dir is None


def test_a_task_that_does_not_pickle_is_a_clear_error_when_it_must_spill(tmp_path):
    import threading

    tasks = [Task(data=threading.Lock() if i == 7 else i, task_id=str(i)) for i in range(20)]

    class ByKind(KeepFirst):
        def keys(self, task: Task) -> list[int]:
            return [0 if isinstance(task.data, int) else 1]

    with pytest.raises(StageContractError, match="must be pickled to spill.*shuffle_memory_budget=None"):
        list(group_in_process(managed(ByKind()), tasks, memory_budget=0, spill_dir=str(tmp_path)))
    assert os.listdir(tmp_path) == []
    assert len(list(group_in_process(managed(ByKind()), tasks, memory_budget=None))) == 2

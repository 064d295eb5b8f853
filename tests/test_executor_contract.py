"""What BaseExecutor promises every backend and every user: execute typed as called, metrics that
keep stages apart and count failures apart, stages checked picklable, option aliases."""

from __future__ import annotations

import pickle
import threading

import pytest

from curator_exec_core import (
    BaseExecutor,
    ConfigError,
    ExecutorOptions,
    ManagedStage,
    PlanError,
    Task,
    describe_options,
    get_executor,
    option,
)
from curator_exec_core.testing.stages import AddOne, FailOn


class Strict(BaseExecutor):
    """Records what execute() is given; runs stage after stage in this process."""

    name = "strict"
    seen: list[tuple[list, list]] = []

    def execute(self, stages, initial_tasks):
        if not self.is_prepared(stages):  # the documented rule for a direct call with plain stages
            return self.execute_unprepared(stages, initial_tasks)
        type(self).seen.append((list(stages), list(initial_tasks)))
        assert all(isinstance(s, ManagedStage) and s.plan is not None for s in stages)
        assert initial_tasks and all(t.task_id for t in initial_tasks)
        tasks = initial_tasks
        for stage in stages:
            tasks = stage.process_batch(tasks)
        return tasks


def test_run_calls_execute_with_planned_managed_stages_and_tasks_with_ids():
    Strict.seen.clear()
    result = Strict().run([AddOne("a"), AddOne("b")], [Task(data=1), Task(data=2)])
    assert sorted(t.data for t in result) == [3, 4]
    stages, tasks = Strict.seen[-1]
    assert [s.index for s in stages] == [0, 1] and [t.task_id for t in tasks] == ["0", "1"]


def test_execute_called_directly_with_plain_stages_runs_the_whole_lifecycle():
    Strict.seen.clear()
    ex = Strict(ignore_failures=True)
    out = ex.execute([AddOne("a"), FailOn((1,), "picky")], [Task(data=0), Task(data=1), Task(data=2)])
    assert len(Strict.seen) == 1 and all(isinstance(s, ManagedStage) for s in Strict.seen[0][0])
    assert sorted((type(t).__name__, t.task_id) for t in out) == [("FailedTask", "0"), ("Task", "1"), ("Task", "2")]


def test_a_subclass_calling_super_execute_is_not_run_twice():
    class Outer(Strict):
        name = "outer"

        def execute(self, stages, initial_tasks):
            return super().execute(stages, initial_tasks)

    Strict.seen.clear()
    assert len(Outer().execute([AddOne()], [Task(data=1)])) == 1
    assert len(Strict.seen) == 1


def test_metrics_keep_two_stages_with_one_name_apart_and_count_failures_apart():
    stages = [AddOne("add"), FailOn((2,), "picky"), AddOne("add")]
    result = get_executor("local", ignore_failures=True).run(stages, [Task(data=i) for i in range(5)])
    m = result.metrics["stages"]
    assert list(m) == ["add#0", "picky", "add#2"]
    assert m["add#0"] == {"index": 0, "tasks_in": 5, "tasks_out": 5, "tasks_failed": 0}
    # data 1 failed in "picky" (its input was 2 after add): one record, not an output
    assert m["picky"] == {"index": 1, "tasks_in": 5, "tasks_out": 4, "tasks_failed": 1}
    # the record passes "add" untouched: neither processed nor counted as an output
    assert m["add#2"] == {"index": 2, "tasks_in": 4, "tasks_out": 4, "tasks_failed": 0}
    assert len(result) == 4 and len(result.failed_tasks) == 1


class Unpicklable(AddOne):
    def __init__(self):
        super().__init__("holds_a_lock")
        self.lock = threading.Lock()


class Shipping(Strict):
    name = "shipping"

    def stage_serializer(self):
        return pickle.dumps


def test_a_stage_that_cannot_be_pickled_fails_at_plan_time_naming_it():
    with pytest.raises(PlanError, match=r"stage 1 'holds_a_lock' cannot be pickled.*setup\(\)"):
        Shipping().run([AddOne(), Unpicklable()], [Task(data=1)])
    # an executor whose workers run in this process does not need to pickle it
    assert len(Strict().run([Unpicklable()], [Task(data=1)])) == 1


def test_option_aliases_one_name_or_the_other_never_both():
    import attrs

    @attrs.define(kw_only=True)
    class Opts(ExecutorOptions):
        aliases = {"pool_size": "max_workers"}
        max_workers: int | None = option(None, int, "cap", minimum=1, allow_none=True)

    class WithAlias(Strict):
        name = "with_alias"
        Options = Opts

    assert WithAlias(pool_size=3).options.max_workers == 3
    with pytest.raises(ConfigError, match="give one of them"):
        WithAlias(pool_size=3, max_workers=3)
    with pytest.raises(ConfigError, match=r"option 'pool_size' \(another name of 'max_workers'\) must be >= 1"):
        WithAlias(pool_size=0)
    with pytest.raises(ConfigError, match="did you mean 'pool_size'"):
        WithAlias(pool_sise=2)
    assert "pool_size" in [row["name"] for row in describe_options(Opts)]

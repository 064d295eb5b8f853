"""Pipeline API as users call it, on the default embedded backend."""

from __future__ import annotations

import pytest

from curator_exec_core import (
    ConfigError,
    EmptyTask,
    Pipeline,
    PipelineResult,
    ProcessingStage,
    Resources,
    Task,
    UnknownExecutorError,
    get_executor,
)
from curator_exec_core.testing.stages import AddOne, FailOn, FanOut, Generate, KeepEven


def test_default_executor_is_local_and_result_is_a_list():
    pipeline = Pipeline(name="p", description="demo").add_stage(AddOne()).add_stage(KeepEven())
    result = pipeline.run(initial_tasks=[Task(data=i) for i in range(10)])
    assert isinstance(result, list) and isinstance(result, PipelineResult)
    assert len(result) == 5 and result.executor == "local"
    assert result.metrics["stages"]["add_one"] == {"index": 0, "tasks_in": 10, "tasks_out": 10, "tasks_failed": 0}
    assert result.metrics["stages"]["keep_even"] == {"index": 1, "tasks_in": 10, "tasks_out": 5, "tasks_failed": 0}
    assert result.plan.stages[0].name == "add_one"


def test_run_accepts_name_instance_or_none():
    p = Pipeline("p", [AddOne()])
    tasks = lambda: [Task(data=1)]  # noqa: E731
    assert [t.data for t in p.run("local", tasks())] == [2]
    assert [t.data for t in p.run(get_executor("local"), tasks())] == [2]
    assert [t.data for t in p.run(None, tasks())] == [2]


def test_no_initial_tasks_starts_from_an_empty_task():
    seen = []

    class Source(ProcessingStage):
        def process(self, task):
            seen.append(type(task))
            return [Task(data=i) for i in range(3)]

    result = Pipeline("p", [Source(), AddOne()]).run()
    assert seen == [EmptyTask] and sorted(t.data for t in result) == [1, 2, 3]
    assert sorted(t.task_id for t in result) == ["0.0", "0.1", "0.2"]


def test_failed_tasks_are_reachable_from_the_result(caplog):
    result = Pipeline("p", [FailOn((1, 2)), AddOne()]).run(
        get_executor("local", ignore_failures=True), [Task(data=i) for i in range(4)])
    assert sorted(t.data for t in result) == [1, 4]
    assert sorted((f.stage, f.task_id) for f in result.failed_tasks) == [("fail_on", "1"), ("fail_on", "2")]
    assert "task 1 failed in stage 'fail_on'" in caplog.text


def test_bad_input_gets_clear_errors():
    with pytest.raises(ValueError, match="no stages"):
        Pipeline("empty").run()
    with pytest.raises(TypeError, match="ProcessingStage"):
        Pipeline("p").add_stage(lambda t: t)
    with pytest.raises(TypeError, match="not a Task"):
        Pipeline("p", [AddOne()]).run(initial_tasks=[1, 2])
    with pytest.raises(UnknownExecutorError, match="Did you mean 'local'"):
        Pipeline("p", [AddOne()]).run("locl")
    with pytest.raises(ConfigError, match="did you mean 'max_retries'"):
        get_executor("local", max_retry=2)


def test_describe_shows_the_plan_without_running():
    ran = []

    class Spy(ProcessingStage):
        resources = Resources(cpus=0.5)

        def setup(self, worker_metadata=None):
            ran.append("setup")

        def process(self, task):
            return task

    text = Pipeline("p", [Spy(), FanOut(2)], description="d").describe("local")
    assert "Spy" in text and "fan_out" in text and "Plan for executor 'local'" in text
    assert "cpus=0.5" in text and ran == []


def test_local_streams_depth_first():
    """A task goes through every stage before the next one is pulled: intermediates stay bounded."""
    alive = {"now": 0, "max": 0}

    class Make(ProcessingStage):
        def process(self, task):
            alive["now"] += 1
            alive["max"] = max(alive["max"], alive["now"])
            return Task(data=bytes(1000))

    class Drop(ProcessingStage):
        batch_size = 4

        def process(self, task):
            alive["now"] -= 1
            return Task(data=len(task.data))

    result = Pipeline("p", [Make(), Drop()]).run("local", [Task(data=i) for i in range(1000)])
    assert len(result) == 1000 and alive["max"] <= 4


def test_generate_from_seed():
    assert len(Pipeline("p", [Generate(5)]).run()) == 5


def test_explicit_size_is_a_fixed_num_workers_or_a_planner_cap():
    from curator_exec_core import BaseExecutor
    from curator_exec_core.runner import ManagedStage

    class Fixed(AddOne):
        def num_workers(self):
            return 3

    class Free(BaseExecutor):
        name = "free"

        def execute(self, stages, initial_tasks=None):
            return []

    class Capped(Free):
        def plan_options(self):
            return {"max_workers_per_stage": 2}

    free = Free()
    assert not free.explicit_size(AddOne()) and not free.explicit_size(ManagedStage(AddOne()))
    assert free.explicit_size(Fixed()) and free.explicit_size(ManagedStage(Fixed()))
    assert Capped().explicit_size(ManagedStage(AddOne()))

"""Plugins observe and wrap every lifecycle phase through the hooks, on a real run."""

from __future__ import annotations

import attrs
import pytest

from curator_exec_core import (
    BaseExecutor,
    Pipeline,
    PlanError,
    StageFailedError,
    Task,
    get_executor,
    hookimpl,
    register_plugin,
    unregister_plugin,
)
from curator_exec_core.hookspecs import HOOKS
from curator_exec_core.testing.stages import AddOne, FailOn, FanOut


class Observer:
    """Wraps every phase (wrapper=True) and records progress events."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.events: list = []

    @hookimpl(wrapper=True)
    def curator_exec_capacity(self, executor):
        self.calls.append("capacity:before")
        result = yield
        self.calls.append(f"capacity:after:{len(result.nodes)}")
        return result

    @hookimpl(wrapper=True)
    def curator_exec_plan(self, executor, stages, capacity):
        self.calls.append(f"plan:before:{len(stages)}")
        result = yield
        self.calls.append("plan:after")
        return result

    @hookimpl(wrapper=True)
    def curator_exec_schedule(self, executor, plan):
        self.calls.append("schedule")
        return (yield)

    @hookimpl(wrapper=True)
    def curator_exec_execute(self, executor, stages, initial_tasks):
        self.calls.append(f"execute:before:{len(initial_tasks)}")
        result = list((yield))  # an executor that streams (local) returns an iterator: read it here
        self.calls.append(f"execute:after:{len(result)}")
        return result

    @hookimpl
    def curator_exec_teardown(self, executor, error):
        self.calls.append(f"teardown:{type(error).__name__ if error else None}")

    @hookimpl
    def curator_exec_progress(self, event):
        self.events.append(event)


@pytest.fixture
def observer():
    obs = Observer()
    register_plugin(obs, name="test-observer")
    yield obs
    unregister_plugin(name="test-observer")


def test_hook_names_are_what_the_docs_promise():
    assert set(HOOKS) == {
        "curator_exec_register_executors", "curator_exec_capacity", "curator_exec_plan",
        "curator_exec_schedule", "curator_exec_execute", "curator_exec_teardown", "curator_exec_progress",
    }


def test_observer_wraps_each_phase_in_order(observer):
    result = Pipeline("p", [AddOne(), FanOut(2)]).run("local", [Task(data=i) for i in range(5)])
    assert len(result) == 10
    assert observer.calls == [
        "capacity:before", "capacity:after:1", "plan:before:2", "plan:after", "schedule",
        "execute:before:5", "execute:after:10", "teardown:None",
    ]


def test_progress_events_from_a_real_run(observer):
    Pipeline("p", [AddOne(), FanOut(3)]).run(get_executor("local", show_progress=False),
                                             [Task(data=i) for i in range(50)])
    kinds = [e.kind for e in observer.events]
    assert kinds[0] == "run_started" and kinds[-1] == "run_finished"
    assert observer.events[0].stages == ("add_one", "fan_out") and observer.events[0].total == 50
    last = {}
    for e in observer.events:
        if e.kind == "stage_progress":
            last[e.stage] = (e.tasks_in, e.tasks_out)
    assert last == {"add_one": (50, 50), "fan_out": (50, 150)}
    assert observer.events[-1].error is None and observer.events[-1].seconds > 0


def test_teardown_hook_sees_the_error(observer):
    with pytest.raises(StageFailedError):
        Pipeline("p", [FailOn((2,))]).run("local", [Task(data=i) for i in range(5)])
    assert observer.calls[-1] == "teardown:StageFailedError"
    assert observer.events[-1].kind == "run_finished" and isinstance(observer.events[-1].error, StageFailedError)


def test_teardown_runs_when_planning_fails(observer):
    from curator_exec_core import Resources

    stage = AddOne()
    stage.resources = Resources(cpus=1000)
    with pytest.raises(PlanError, match="add_one"):
        Pipeline("p", [stage]).run("local", [Task(data=1)])
    assert "execute:before:1" not in observer.calls
    assert observer.calls[-1] == "teardown:PlanError"


class CapWorkers:
    """A policy plugin: wraps planning and caps every stage at one worker."""

    @hookimpl(wrapper=True)
    def curator_exec_plan(self, executor, stages, capacity):
        plan = yield
        return attrs.evolve(plan, stages=[attrs.evolve(s, workers=1) for s in plan.stages],
                            notes=(*plan.notes, "capped by policy"))


def test_wrapper_can_replace_the_plan():
    class Wide(BaseExecutor):
        name = "wide"

        def execute(self, stages, initial_tasks=None):
            self.seen = [s.num_workers() for s in stages]
            out = initial_tasks
            for s in stages:
                s.setup(None)
                out = s.process_batch(out)
            return out

    from curator_exec_core import Resources

    stage = AddOne()
    stage.resources = Resources(cpus=0.25)
    ex = Wide(show_progress=False)
    ex.run([stage], [Task(data=1)])
    assert ex.seen[0] > 1
    register_plugin(CapWorkers(), name="cap")
    try:
        result = ex.run([stage], [Task(data=1)])
    finally:
        unregister_plugin(name="cap")
    assert ex.seen == [1] and "capped by policy" in result.plan.notes


class AnswerExecuteFirst:
    @hookimpl(tryfirst=True)
    def curator_exec_execute(self, executor, stages, initial_tasks):
        return [Task(data="answered", task_id="x")]


def test_a_plugin_can_answer_a_phase_first():
    register_plugin(AnswerExecuteFirst(), name="answer")
    try:
        result = Pipeline("p", [AddOne()]).run("local", [Task(data=1)])
    finally:
        unregister_plugin(name="answer")
    assert [t.data for t in result] == ["answered"]

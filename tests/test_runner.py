"""The shared stage runner (ManagedStage): ids, batching, failures, retries, lifecycle."""

from __future__ import annotations

import pickle

import pytest

from curator_exec_core import FailedTask, ProcessingStage, StageFailedError, Task
from curator_exec_core.runner import FailurePolicy, ManagedStage
from curator_exec_core.testing.stages import AddOne, FanOut, LifecycleLog, Recorded


class Batchy(ProcessingStage):
    batch_size = 3

    def __init__(self):
        self.sizes = []

    def process_batch(self, tasks):
        self.sizes.append(len(tasks))
        return [Task(data=t.data * 2) for t in tasks]


def test_rebatches_any_chunk_to_batch_size():
    stage = Batchy()
    managed = ManagedStage(stage)
    out = managed.process_batch([Task(data=i, task_id=str(i)) for i in range(8)])
    assert stage.sizes == [3, 3, 2]
    assert [(t.task_id, t.data) for t in out] == [(str(i), 2 * i) for i in range(8)]


def test_fan_out_ids_and_inherited_history():
    managed = ManagedStage(FanOut(2))
    parent = Task(data=3, task_id="7", metadata={"source": "a"})
    out = managed.process(parent)
    assert [t.task_id for t in out] == ["7.0", "7.1"]
    assert all(t.metadata == {"source": "a"} for t in out)
    assert [p.stage for p in out[0].stage_perf] == ["fan_out"]


def test_bad_return_type_is_a_failure_naming_the_stage():
    class Bad(ProcessingStage):
        def process(self, task):
            return 42

    with pytest.raises(StageFailedError, match="returned int"):
        ManagedStage(Bad()).process(Task(data=1, task_id="0"))


def test_failed_tasks_pass_through_later_stages_untouched():
    first = ManagedStage(AddOne(), policy=FailurePolicy(ignore_failures=True))
    failed = FailedTask(data=Task(data=1), task_id="9", stage="earlier", error="boom")
    out = first.process_batch([failed, Task(data=1, task_id="1")])
    assert out[0] is failed and out[1].data == 2


def test_custom_batch_failure_marks_every_task_of_the_batch():
    class Explode(ProcessingStage):
        batch_size = 2

        def process_batch(self, tasks):
            raise RuntimeError("whole batch")

    managed = ManagedStage(Explode(), policy=FailurePolicy(ignore_failures=True, max_retries=2))
    out = managed.process_batch([Task(data=i, task_id=str(i)) for i in range(3)])
    assert [(f.task_id, f.attempts) for f in out] == [("0", 3), ("1", 3), ("2", 3)]
    assert all(isinstance(f, FailedTask) and "whole batch" in f.error for f in out)


def test_stage_error_pickles_with_its_fields():
    err = StageFailedError("s", "t1", "ValueError('x')", 2, "Traceback...")
    again = pickle.loads(pickle.dumps(err))
    assert (again.stage, again.task_id, again.attempts, again.remote_traceback) == ("s", "t1", 2, "Traceback...")
    assert str(again) == str(err)


def test_managed_stage_pickles_without_the_run():
    from curator_exec_core.stats import RunStats

    managed = ManagedStage(AddOne())
    managed.stats = RunStats(["add_one"])
    managed.run = object()  # the driver's Run: never travels to a worker
    clone = pickle.loads(pickle.dumps(managed))
    assert clone.stats is None and clone.run is None and clone.name == "add_one"


def test_setup_on_node_once_per_node_across_copies(tmp_path):
    """Two workers (copies, as engines make them) on one node: setup_on_node runs once."""
    from curator_exec_core import WorkerMetadata

    managed = ManagedStage(Recorded(str(tmp_path), "rec"), run_id=f"run-{tmp_path.name}-{id(tmp_path):x}")
    a, b = pickle.loads(pickle.dumps(managed)), pickle.loads(pickle.dumps(managed))
    a.setup(WorkerMetadata("w1", node_id="n1"))
    b.setup(WorkerMetadata("w2", node_id="n1"))
    c = pickle.loads(pickle.dumps(managed))
    c.setup(WorkerMetadata("w3", node_id="n2"))
    log = LifecycleLog(tmp_path)
    assert log.count("setup_on_node", "rec") == 2
    assert log.per_who("setup_on_node", "rec") == {"n1": 1, "n2": 1}
    assert log.count("setup", "rec") == 3
    for m in (a, b, c):
        m.teardown()
        m.teardown()
    assert log.count("teardown", "rec") == 3


def test_teardown_without_setup_does_nothing(tmp_path):
    managed = ManagedStage(Recorded(str(tmp_path), "rec"))
    managed.teardown()
    assert LifecycleLog(tmp_path).entries() == []


def test_find_stage_error_prefers_the_plain_error_inside_an_engine_wrapper():
    """Ray raises a class that is both its wrapper and the cause's type; users get the plain error."""
    from curator_exec_core.errors import find_stage_error

    plain = StageFailedError("s", "3", "ValueError('x')")

    class EngineError(Exception):
        pass

    class DualWrapper(EngineError, StageFailedError):  # what RayTaskError.as_instanceof_cause() builds
        def __init__(self, cause):
            Exception.__init__(self, "ray traceback text")
            self.cause = cause

    wrapper = DualWrapper(plain)
    assert find_stage_error(wrapper) is plain
    outer = RuntimeError("engine failed")
    outer.__cause__ = wrapper
    assert find_stage_error(outer) is plain
    assert find_stage_error(RuntimeError("unrelated")) is None


def test_has_lifecycle_tells_stateless_stages_apart():
    from curator_exec_core.stages import has_lifecycle

    class Plain(ProcessingStage):
        def process(self, task):
            return task

    class WithSetup(Plain):
        def setup(self, worker_metadata=None):
            self.model = object()

    class WithNodeSetup(Plain):
        def setup_on_node(self, node_info=None, worker_metadata=None):
            pass

    class WithTeardown(Plain):
        def teardown(self):
            pass

    class InheritsSetup(WithSetup):
        pass

    assert not has_lifecycle(Plain())
    assert [has_lifecycle(c()) for c in (WithSetup, WithNodeSetup, WithTeardown, InheritsSetup)] == [True] * 4
    # the managed stage answers for the user's stage, not for its own (always present) methods
    assert ManagedStage(Plain()).has_lifecycle is False
    assert ManagedStage(WithTeardown()).has_lifecycle is True

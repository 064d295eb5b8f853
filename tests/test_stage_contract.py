"""A stage that breaks its contract fails clearly, names itself, and is not retried; an error that a
retry may fix still suggests ``max_retries``."""

from __future__ import annotations

import pickle

import pytest

from curator_exec_core import (
    FailedTask,
    GroupBy,
    ProcessingStage,
    ShuffleStage,
    StageContractError,
    StageFailedError,
    Task,
    get_executor,
)


def ints(n: int) -> list[Task]:
    return [Task(data=i) for i in range(n)]


class DocKey(ShuffleStage):
    """Returns the key itself instead of a list of keys (``return task.data`` for ``[task.data]``)."""

    name = "doc_key"

    def __init__(self, kind: type = str) -> None:
        self.kind = kind

    def keys(self, task: Task):  # type: ignore[override]
        return self.kind(f"doc-{task.data % 3}".encode() if self.kind is bytes else f"doc-{task.data % 3}")

    def reduce(self, key, tasks):
        return Task(data=len(tasks))


class DictOut(ProcessingStage):
    name = "dict_out"

    def __init__(self) -> None:
        self.calls = 0

    def process(self, task: Task):  # type: ignore[override]
        self.calls += 1
        return {"value": task.data}


class Boom(ProcessingStage):
    name = "boom"

    def process(self, task: Task) -> Task:
        raise ValueError("flaky service")


@pytest.mark.parametrize("kind", [str, bytes])
def test_keys_returning_one_string_is_refused_naming_the_stage(kind: type) -> None:
    with pytest.raises(StageFailedError) as info:
        get_executor("local", show_progress=False, max_retries=3).run([DocKey(kind)], ints(6))
    err = info.value
    assert err.stage == "doc_key" and "keys()" in err.error and "not a list of keys" in err.error
    assert "return [key]" in err.error and err.attempts == 1  # not retried
    assert "max_retries" not in str(err) and "retrying cannot help" in str(err)


def test_keys_returning_a_list_of_strings_still_works() -> None:
    got = get_executor("local", show_progress=False).run([GroupBy(lambda t: f"doc-{t.data % 3}")], ints(6))
    assert sorted(t.metadata["group"] for t in got) == ["doc-0", "doc-1", "doc-2"]


def test_a_wrong_return_type_is_not_retried_and_says_a_retry_cannot_help() -> None:
    stage = DictOut()
    with pytest.raises(StageFailedError) as info:
        get_executor("local", show_progress=False, max_retries=3).run([stage], ints(1))
    assert "returned dict" in info.value.error and info.value.attempts == 1 and stage.calls == 1
    assert "max_retries" not in str(info.value)
    assert isinstance(info.value.__cause__, StageContractError) and isinstance(info.value.__cause__, TypeError)


def test_an_error_a_retry_may_fix_still_suggests_max_retries() -> None:
    with pytest.raises(StageFailedError) as info:
        get_executor("local", show_progress=False).run([Boom()], ints(1))
    assert info.value.retryable and "max_retries=N to retry" in str(info.value)


def test_the_retry_advice_survives_pickling() -> None:
    err = StageFailedError("s", "t", "TypeError('x')", 1, "", retryable=False)
    again = pickle.loads(pickle.dumps(err))
    assert again.retryable is False and str(again) == str(err)


def test_under_ignore_failures_a_broken_contract_is_a_failure_record() -> None:
    result = get_executor("local", show_progress=False, ignore_failures=True).run([DocKey(str)], ints(4))
    assert len(result) == 0 and all(isinstance(f, FailedTask) for f in result.failed_tasks)
    assert sorted(f.task_id for f in result.failed_tasks) == ["0", "1", "2", "3"]


def test_barrier_stages_refuse_the_map_path() -> None:
    """A managed shuffle or gang runs through its own calls; handing it to a map path is a clear error."""
    from curator_exec_core import ManagedGang, ManagedShuffle
    from curator_exec_core.testing.stages import AllReduceSum, KeepFirst

    with pytest.raises(TypeError, match="key_tasks"):
        ManagedShuffle(KeepFirst()).process_counted(ints(2))
    with pytest.raises(TypeError, match="run_share"):
        ManagedGang(AllReduceSum("/tmp")).process_batch(ints(2))

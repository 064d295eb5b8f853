"""Shuffle stages: grouping by key, ids, edge cases, lifecycle and failures.

See :mod:`curator_exec_core.testing.kit`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from curator_exec_core.errors import StageFailedError
from curator_exec_core.shuffle import key_digest, task_order
from curator_exec_core.testing.kit.base import ConformanceBase, MakeExecutor, _groups, _ints, canonical
from curator_exec_core.testing.stages import (
    AddOne,
    Bands,
    DropAll,
    FailOn,
    FanOut,
    HashDedup,
    KeepFirst,
    LifecycleLog,
    RecordedShuffle,
    Unwrap,
    WrongReduce,
)


class ShuffleTests(ConformanceBase):
    """``ShuffleStage``: every task of a key in one group, in task id order; several keys or none per
    task; shuffles anywhere in a pipeline and twice; ids that do not depend on the partition count;
    empty input, singletons and skew; setup before reduce and one teardown; failures in ``keys()``
    and ``reduce()`` named, or records with ``ignore_failures``."""

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

    def test_shuffle_groups_across_source_windows(self, make_executor: MakeExecutor) -> None:
        """An executor that takes its source window by window (``source_window``) still groups every task
        of the run: a key's tasks in different windows end in one group."""
        got = self.run_and_compare(make_executor, [AddOne(), KeepFirst(7)], _ints(self.n), source_window=11)
        assert sorted(len(t.data["ids"]) for t in got) == sorted(
            len(ids) for ids in _groups({str(i): i + 1 for i in range(self.n)}, lambda d: d % 7).values())

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

    def test_shuffle_setup_before_reduce_and_teardown_once(self, make_executor: MakeExecutor, tmp_path: Path) -> None:
        log = LifecycleLog(tmp_path)
        got = make_executor(show_progress=False).run([RecordedShuffle(str(tmp_path))], _ints(self.n))
        assert len(got) == 5  # reduce raises if it runs on a worker that was not set up
        setups = log.per_who("setup", "recorded_shuffle")
        assert sum(setups.values()) >= 1 and all(c == 1 for c in setups.values())
        assert setups == log.per_who("teardown", "recorded_shuffle")

    def test_shuffle_failures_name_the_stage_and_the_task_or_key(self, make_executor: MakeExecutor,
                                                                tmp_path: Path) -> None:
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

    def test_shuffle_keys_built_with_hash_group_right(self, make_executor: MakeExecutor) -> None:
        """``hash()`` of a ``str`` is salted per process: keys built with it are right only if every
        worker hashes alike (the Ray backends start their clusters with one ``PYTHONHASHSEED``)."""
        got = make_executor(show_progress=False).run([AddOne(), HashDedup()], _ints(200))
        assert sorted(t.data for t in got) == list(range(1, 26))  # one output per distinct text

    def test_shuffle_reduce_returning_the_wrong_type_is_a_stage_failure(self, make_executor: MakeExecutor) -> None:
        """A ``reduce()`` that returns a dict is a stage failure like any other, on every backend: the
        core's error naming the stage and the key, not retried (no ``max_retries`` advice: retrying
        cannot help), and a failure record under ``ignore_failures``."""
        with pytest.raises(StageFailedError) as info:
            make_executor(show_progress=False, max_retries=2).run([WrongReduce()], _ints(self.n))
        err = info.value
        assert err.stage == "wrong_reduce" and "reduce(key=1)" in err.error and "returned dict" in err.error
        assert err.attempts == 1 and not err.retryable and "max_retries" not in str(err)
        got = self.run_and_compare(make_executor, [WrongReduce()], _ints(self.n), ignore_failures=True)
        assert [f.task_id for f in got.failed_tasks] == [f"wrong_reduce#{key_digest(1)[:16]}"]
        assert sorted(t.data["key"] for t in got) == [0, 2]

    def test_shuffle_failures_become_records_with_ignore_failures(self, make_executor: MakeExecutor,
                                                                 tmp_path: Path) -> None:
        stage = RecordedShuffle(str(tmp_path), fail_keys_on=(4, 9), fail_reduce_on=(2,))
        got = self.run_and_compare(make_executor, [FailOn((7,), "picky"), stage], _ints(self.n),
                                   ignore_failures=True)
        failed = {(f.stage, f.task_id) for f in got.failed_tasks}
        assert failed == {("picky", "7"), ("recorded_shuffle", "4"), ("recorded_shuffle", "9"),
                          ("recorded_shuffle", f"recorded_shuffle#{key_digest(2)[:16]}")}
        assert sorted(t.data["key"] for t in got) == [0, 1, 3, 4]
        counts = got.metrics["stages"]["recorded_shuffle"]
        assert (counts["tasks_in"], counts["tasks_out"], counts["tasks_failed"]) == (self.n - 1, 4, 3)

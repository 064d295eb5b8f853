"""Outputs: the same outputs as the reference run, for every shape of pipeline.

See :mod:`curator_exec_core.testing.kit`.
"""

from __future__ import annotations

from typing import Any

from curator_exec_core.stages import ProcessingStage
from curator_exec_core.testing.kit.base import ConformanceBase, MakeExecutor, _ints, canonical
from curator_exec_core.testing.stages import AddOne, DropAll, FanOut, Generate, Identity, KeepEven, SquareBatch


class OutputTests(ConformanceBase):
    """Outputs, task ids, counts: identity, new tasks, fan-out, filter, batches, many stages, empty
    input, everything filtered, an ``EmptyTask`` seed, ``large_n`` tasks, deterministic ids."""

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
        stages: list[ProcessingStage[Any, Any]] = [AddOne(f"add{i}") for i in range(4)]
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

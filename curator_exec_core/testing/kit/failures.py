"""Failures: a failure aborts naming its stage and task; ``ignore_failures``; retries.

See :mod:`curator_exec_core.testing.kit`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from curator_exec_core.errors import FailureBudgetExceeded, StageFailedError
from curator_exec_core.tasks import FailedTask
from curator_exec_core.testing.kit.base import ConformanceBase, MakeExecutor, _ints
from curator_exec_core.testing.stages import AddOne, FailOn, Flaky, Stuck


class FailureTests(ConformanceBase):
    """A failing task aborts the run with a ``StageFailedError`` naming the stage and the task (with
    the remote traceback); ``ignore_failures=True`` returns a record for every failed task;
    ``max_retries`` retries, and exhausted retries are records with their attempt count; more failures
    than ``max_failed_tasks`` abort the run naming the first errors; ``task_timeout`` stops a call that
    runs too long (a failure of its task)."""

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

    def test_max_retries(self, make_executor: MakeExecutor, tmp_path: Path) -> None:
        got = make_executor(show_progress=False, max_retries=1).run([Flaky(str(tmp_path))], _ints(self.n))
        assert sorted(t.data for t in got) == list(range(self.n)) and not got.failed_tasks

    def test_retries_exhausted(self, make_executor: MakeExecutor, tmp_path: Path) -> None:
        got = make_executor(show_progress=False, max_retries=1, ignore_failures=True).run(
            [Flaky(str(tmp_path), failures=2)], _ints(10))
        assert list(got) == [] and len(got.failed_tasks) == 10
        assert all(f.attempts == 2 for f in got.failed_tasks)

    def test_failure_budget_aborts_the_run(self, make_executor: MakeExecutor) -> None:
        values = tuple(range(0, self.n, 3))
        with pytest.raises(FailureBudgetExceeded) as info:
            make_executor(show_progress=False, ignore_failures=True, max_failed_tasks=4).run(
                [AddOne(), FailOn(values, "picky")], _ints(self.n))
        err = info.value
        assert "max_failed_tasks=4" in str(err) and err.failed > 4
        assert err.first_errors, "the error names the first failures (stage, task id, error)"
        assert all(e.startswith("picky: ") and "cannot take" in e for e in err.first_errors)
        assert "cannot take" in str(err)
        # a budget that is not spent changes nothing (a fraction of the source tasks)
        got = self.run_and_compare(make_executor, [FailOn(values, "picky")], _ints(self.n), ignore_failures=True,
                                   max_failed_tasks=0.5)
        assert len(got.failed_tasks) == len(values)

    def test_task_timeout_stops_a_call(self, make_executor: MakeExecutor) -> None:
        got = make_executor(show_progress=False, ignore_failures=True, task_timeout=1.0).run(
            [Stuck((3,)), AddOne()], _ints(12))
        assert sorted(t.data for t in got) == [i + 1 for i in range(12) if i != 3]
        [failed] = got.failed_tasks
        assert (failed.task_id, failed.stage) == ("3", "stuck")
        assert "TaskTimeoutError" in failed.error and "task_timeout=1s" in failed.error
        # the stage's own limit wins; without ignore_failures the run aborts naming stage, task and limit
        with pytest.raises(StageFailedError) as info:
            make_executor(show_progress=False).run([Stuck((5,), task_timeout=0.5)], _ints(8))
        assert (info.value.stage, info.value.task_id) == ("stuck", "5")
        assert "task_timeout=0.5s" in str(info.value)

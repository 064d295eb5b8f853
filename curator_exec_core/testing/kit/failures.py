"""Failures: a failure aborts naming its stage and task; ``ignore_failures``; retries.

See :mod:`curator_exec_core.testing.kit`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from curator_exec_core.errors import StageFailedError
from curator_exec_core.tasks import FailedTask
from curator_exec_core.testing.kit.base import ConformanceBase, MakeExecutor, _ints
from curator_exec_core.testing.stages import AddOne, FailOn, Flaky


class FailureTests(ConformanceBase):
    """A failing task aborts the run with a ``StageFailedError`` naming the stage and the task (with
    the remote traceback); ``ignore_failures=True`` returns a record for every failed task;
    ``max_retries`` retries, and exhausted retries are records with their attempt count."""

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

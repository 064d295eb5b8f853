"""Lifecycle: setup, setup_on_node and teardown, once each, also after a failure.

See :mod:`curator_exec_core.testing.kit`.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from curator_exec_core.errors import StageFailedError
from curator_exec_core.tasks import PipelineResult
from curator_exec_core.testing.kit.base import ConformanceBase, MakeExecutor, _ints, canonical, reference_run
from curator_exec_core.testing.stages import AddOne, FanOut, KeepEven, LifecycleLog, Recorded


class LifecycleTests(ConformanceBase):
    """One ``setup`` and one ``teardown`` per worker and one ``setup_on_node`` per node, also when
    a stage fails. Lifecycle calls are counted in files under ``tmp_path``: every worker must see
    this machine's filesystem."""

    def test_setup_and_teardown_counts(self, make_executor: MakeExecutor, tmp_path: Path) -> None:
        log = LifecycleLog(tmp_path)
        stages = [Recorded(str(tmp_path), "first"), AddOne(), Recorded(str(tmp_path), "second")]
        got = make_executor(show_progress=False).run(stages, _ints(self.n))
        assert len(got) == self.n
        for name in ("first", "second"):
            setups = log.per_who("setup", name)
            teardowns = log.per_who("teardown", name)
            assert sum(setups.values()) >= 1, f"{name}: setup never ran"
            assert all(c == 1 for c in setups.values()), f"{name}: a worker ran setup twice: {setups}"
            assert setups == teardowns, f"{name}: setup/teardown per worker differ: {setups} vs {teardowns}"
            nodes = log.per_who("setup_on_node", name)
            assert nodes and all(c == 1 for c in nodes.values()), f"{name}: setup_on_node per node: {nodes}"

    def test_teardown_after_failure(self, make_executor: MakeExecutor, tmp_path: Path) -> None:
        log = LifecycleLog(tmp_path)
        stages = [Recorded(str(tmp_path), "ok"), Recorded(str(tmp_path), "bad", fail_on=(7,))]
        with pytest.raises(StageFailedError):
            make_executor(show_progress=False).run(stages, _ints(self.n))
        for name in ("ok", "bad"):
            assert log.per_who("setup", name) == log.per_who("teardown", name), name

    def test_two_runs_on_one_executor_at_once(self, make_executor: MakeExecutor) -> None:
        """An executor holds settings, a run holds its state: two threads running two pipelines on one
        instance both get their own right answer and counts (the runs are serialized)."""
        executor = make_executor(show_progress=False)
        pipelines = {"a": [AddOne(), KeepEven()], "b": [FanOut(3), AddOne()]}
        results: dict[str, PipelineResult] = {}
        errors: list[BaseException] = []

        def run(key: str) -> None:
            try:
                results[key] = executor.run(pipelines[key], _ints(self.n))
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(key,)) for key in pipelines]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        for key, stages in pipelines.items():
            expected = reference_run(stages, _ints(self.n))
            assert canonical(results[key]) == canonical(expected)
            assert results[key].metrics["stages"] == expected.metrics["stages"]

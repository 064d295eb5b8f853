"""Lifecycle: setup, setup_on_node and teardown, once each, also after a failure.

See :mod:`curator_exec_core.testing.kit`.
"""

from __future__ import annotations

from typing import Any

import pytest

from curator_exec_core.errors import StageFailedError
from curator_exec_core.testing.kit.base import ConformanceBase, MakeExecutor, _ints
from curator_exec_core.testing.stages import AddOne, LifecycleLog, Recorded


class LifecycleTests(ConformanceBase):
    """One ``setup`` and one ``teardown`` per worker and one ``setup_on_node`` per node, also when
    a stage fails. Lifecycle calls are counted in files under ``tmp_path``: every worker must see
    this machine's filesystem."""

    def test_setup_and_teardown_counts(self, make_executor: MakeExecutor, tmp_path: Any) -> None:
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

    def test_teardown_after_failure(self, make_executor: MakeExecutor, tmp_path: Any) -> None:
        log = LifecycleLog(tmp_path)
        stages = [Recorded(str(tmp_path), "ok"), Recorded(str(tmp_path), "bad", fail_on=(7,))]
        with pytest.raises(StageFailedError):
            make_executor(show_progress=False).run(stages, _ints(self.n))
        for name in ("ok", "bad"):
            assert log.per_who("setup", name) == log.per_who("teardown", name), name

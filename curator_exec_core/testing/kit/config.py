"""Config, plan, capacity: option typos, infeasible requests, the shape of ``capacity()``.

See :mod:`curator_exec_core.testing.kit`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from curator_exec_core.capacity import Capacity, GpuInfo, NodeCapacity
from curator_exec_core.errors import ConfigError, PlanError
from curator_exec_core.stages import Resources
from curator_exec_core.testing.kit.base import ConformanceBase, MakeExecutor, _ints
from curator_exec_core.testing.stages import LifecycleLog, Recorded


class ConfigTests(ConformanceBase):
    """A misspelt or mistyped option is a ``ConfigError`` naming it; a GPU request beyond the
    capacity is a ``PlanError`` before any setup; ``capacity()`` has the documented shape."""

    def test_config_typo_is_an_error(self, make_executor: MakeExecutor) -> None:
        with pytest.raises(ConfigError, match="ignore_failures"):
            make_executor(ignore_failurs=True)
        with pytest.raises(ConfigError, match="max_retries"):
            make_executor(max_retries="twice")

    def test_infeasible_request_fails_at_plan_time(self, make_executor: MakeExecutor, tmp_path: Path) -> None:
        executor = make_executor(show_progress=False)
        too_many = executor.capacity().total_gpus + 2
        stage = Recorded(str(tmp_path), "greedy", resources=Resources(cpus=0.5, gpus=float(too_many)))
        with pytest.raises(PlanError, match="greedy"):
            executor.run([stage], _ints(3))
        assert LifecycleLog(tmp_path).entries() == []  # nothing started

    def test_capacity_shape(self, make_executor: MakeExecutor) -> None:
        cap = make_executor(show_progress=False).capacity()
        assert isinstance(cap, Capacity) and cap.nodes
        for node in cap.nodes:
            assert isinstance(node, NodeCapacity)
            assert node.cpus > 0 and node.memory > 0 and node.node_id
            assert all(isinstance(g, GpuInfo) for g in node.gpus)
            if not node.gpus:
                assert node.gpu_reason
        assert cap.total_cpus == sum(n.cpus for n in cap.nodes)

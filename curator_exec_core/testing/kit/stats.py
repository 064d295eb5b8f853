"""Statistics: what stages record and what every call measured reach ``result.metrics["stats"]``,
the periodic ``"stats"`` event and, with a checkpoint, ``stats.json``.

See :mod:`curator_exec_core.testing.kit`.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import pytest

from curator_exec_core.hookspecs import hookimpl
from curator_exec_core.progress import ProgressEvent
from curator_exec_core.registry import get_plugin_manager
from curator_exec_core.testing.kit.base import ConformanceBase, MakeExecutor, _ints
from curator_exec_core.testing.stages import AddOne, Measured, MeasuredGroups


class _StatsEvents:
    """An observer keeping the snapshots of ``"stats"`` events."""

    def __init__(self) -> None:
        self.snapshots: list[dict[str, Any]] = []

    @hookimpl
    def curator_exec_progress(self, event: ProgressEvent) -> None:
        if event.kind == "stats" and event.stats is not None:
            self.snapshots.append(event.stats)


class StatsTests(ConformanceBase):
    """Counters a stage records with ``self.record`` (in ``process``, ``keys`` and ``reduce``) and the
    figures of every call (tasks, wall and CPU seconds, per worker) reach the driver from wherever the
    stage ran, merged exactly; observers get ``"stats"`` events; a checkpointed run writes
    ``stats.json`` and a resumed run merges the earlier run's figures."""

    def test_recorded_counters_and_call_figures_reach_the_result(self, make_executor: MakeExecutor) -> None:
        n = self.n
        got = self.run_and_compare(make_executor, [Measured(), AddOne(), MeasuredGroups(5)], _ints(n))
        stats = got.metrics["stats"]
        assert list(stats) == list(got.metrics["stages"]), "metrics['stats'] has one entry per stage, in order"
        measured = stats["measured"]
        value = measured["counters"]["value"]
        assert (value["count"], value["sum"], value["min"], value["max"]) == (n, sum(range(n)), 0, n - 1), (
            "the counters a stage records with self.record() must reach the driver exactly once per call, "
            "from every worker (they travel in the call's Counts.perf)")
        assert value["mean"] == pytest.approx((n - 1) / 2)
        assert value["std"] == pytest.approx(statistics.pstdev(range(n)))
        assert measured["counters"]["seen"]["sum"] == n
        workers = measured["per_worker"]
        assert measured["workers"] == len(workers) >= 1
        assert sum(w["tasks_in"] for w in workers.values()) == measured["tasks_in"] == n
        assert sum(w["tasks_out"] for w in workers.values()) == measured["tasks_out"] == n
        calls = measured["process_s"]
        assert calls["count"] >= 1 and calls["sum"] >= 0 and calls["min"] <= calls["max"]
        assert measured["cpu_s"]["count"] == calls["count"]
        assert sum(w["process_s"]["count"] for w in workers.values()) == calls["count"]
        groups = stats["measured_groups"]["counters"]
        assert groups["keyed"]["sum"] == n, "keys() counters"
        assert (groups["group_size"]["count"], groups["group_size"]["sum"]) == (5, n), "reduce() counters"

    def test_stats_event_and_stats_file_with_a_checkpoint(self, make_executor: MakeExecutor, tmp_path: Path) -> None:
        n = self.n
        observer = _StatsEvents()
        pm = get_plugin_manager()
        pm.register(observer)
        folder = tmp_path / "ckpt"
        try:
            got = make_executor(show_progress=False, progress_interval=0.2).run(
                [Measured(), AddOne()], _ints(n), checkpoint_path=str(folder))
        finally:
            pm.unregister(observer)
        assert observer.snapshots, "no 'stats' progress event was sent"
        last = observer.snapshots[-1]
        assert last["finished"] is True and last["error"] is None and last["run_id"]
        assert last["stats"]["measured"]["counters"] == got.metrics["stats"]["measured"]["counters"]
        assert last["stages"] == got.metrics["stages"]
        on_disk = json.loads((folder / "stats.json").read_text())
        assert on_disk["finished"] is True
        assert on_disk["stats"]["measured"]["counters"]["value"]["sum"] == sum(range(n))
        # a resumed run (nothing left to do) reports the figures of the run before it, merged
        again = make_executor(show_progress=False).run([Measured(), AddOne()], _ints(n), checkpoint_path=str(folder))
        assert again.metrics["checkpoint"]["resumed_tasks"] == n
        assert again.metrics["stats"]["measured"]["counters"]["value"]["sum"] == sum(range(n))

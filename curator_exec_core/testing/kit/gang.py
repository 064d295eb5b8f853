"""Gang stages: ranks start together and talk; a rank failure; a gang that cannot fit.

See :mod:`curator_exec_core.testing.kit`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from curator_exec_core.errors import PlanError, StageFailedError
from curator_exec_core.shuffle import task_order
from curator_exec_core.testing.kit.base import ConformanceBase, MakeExecutor, _ints
from curator_exec_core.testing.stages import AddOne, AllReduceSum, Identity, LifecycleLog, RootHeldGang


class GangTests(ConformanceBase):
    """``GangStage``: the ranks start together, talk, share the input evenly in task id order and
    keep the ids; one failing rank fails the stage and every rank tears down; a gang larger than
    the capacity is a ``PlanError`` before anything starts."""

    def test_gang_ranks_start_together_talk_and_share_the_input_evenly(self, make_executor: MakeExecutor,
                                                                       tmp_path: Path) -> None:
        stages = [AddOne(), AllReduceSum(str(tmp_path)), Identity()]
        # source windows smaller than the input: the gang still gets all of it (one global sum)
        got = make_executor(show_progress=False, source_window=11).run(stages, _ints(self.n))
        assert len(got) == self.n
        total = sum(range(1, self.n + 1))
        assert all(t.data == {**t.data, "sum": total, "size": 2} for t in got)  # only talking ranks know it
        ids = sorted((str(i) for i in range(self.n)), key=task_order)
        half = self.n // 2
        assert sorted((t.data["rank"], tuple(t.data["ids"])) for t in got) == sorted(
            [(0, tuple(ids[:half]))] * half + [(1, tuple(ids[half:]))] * (self.n - half))
        assert sorted(t.task_id for t in got) == sorted(ids)  # one to one: the ids are kept
        log = LifecycleLog(tmp_path)
        assert sorted(log.per_who("setup", "all_reduce").values()) == [1, 1]
        assert log.per_who("setup", "all_reduce") == log.per_who("teardown", "all_reduce")

    def test_gang_root_runs_on_rank_zeros_own_instance(self, make_executor: MakeExecutor) -> None:
        """What ``gang_root()`` makes stays on rank 0: its listening socket is the one rank 0's
        ``setup`` accepts the other ranks on (the race-free TCP pattern; an NCCL id kept by the root)."""
        got = make_executor(show_progress=False).run([RootHeldGang(gang_size=2)], _ints(self.n))
        assert sorted(t.data["value"] for t in got) == list(range(self.n))
        assert {t.data["rank"] for t in got} == {0, 1}
        assert all(t.data["peers"] == [1] for t in got if t.data["rank"] == 0)

    def test_gang_rank_failure_fails_the_stage_and_every_rank_tears_down(self, make_executor: MakeExecutor,
                                                                        tmp_path: Path) -> None:
        with pytest.raises(StageFailedError) as info:
            make_executor(show_progress=False).run([AllReduceSum(str(tmp_path), fail_rank=1)], _ints(self.n))
        assert info.value.stage == "all_reduce"
        log = LifecycleLog(tmp_path)
        assert len(log.per_who("setup", "all_reduce")) == 2
        assert log.per_who("setup", "all_reduce") == log.per_who("teardown", "all_reduce")

    def test_gang_that_cannot_fit_fails_at_plan_time(self, make_executor: MakeExecutor, tmp_path: Path) -> None:
        executor = make_executor(show_progress=False)
        size = int(executor.capacity().total_cpus * 2) + 4  # 0.5 CPU a rank: more ranks than fit
        with pytest.raises(PlanError, match=rf"gang stage 'all_reduce' needs {size} ranks of cpus=0.5"):
            executor.run([AllReduceSum(str(tmp_path), gang_size=size)], _ints(3))
        assert LifecycleLog(tmp_path).entries() == []  # nothing started

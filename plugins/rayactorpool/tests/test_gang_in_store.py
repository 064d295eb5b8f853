"""A gang on Ray keeps its data in the object store: the driver holds refs, ids and counts.

The tasks carry :class:`Sealed` data, made in a Ray worker, that refuses to be unpickled in the
driver process: the run fails if the driver ever fetches a share or an output.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import pytest
from ray import cloudpickle

from curator_exec_core.gang import GangStage
from curator_exec_core.runner import task_order
from curator_exec_core.stages import Resources, WorkerMetadata
from curator_exec_core.tasks import FailedTask, Task
from curator_exec_ray.chunking import TaskChunk
from curator_exec_ray.executor import RayExecutorBase
from curator_exec_rayactorpool import RayActorPoolExecutor

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import this module


def _thaw(value: Any, pid: int) -> Sealed:
    if os.getpid() == pid:
        raise RuntimeError(f"sealed data {value!r} was unpickled in the driver process")
    return Sealed(value, pid)


class Sealed:
    """A value that unpickles anywhere but in the process ``pid`` (the driver's)."""

    def __init__(self, value: Any, pid: int) -> None:
        self.value, self.pid = value, pid

    def __reduce__(self) -> tuple[Any, ...]:
        return _thaw, (self.value, self.pid)


def make_sealed(ids: list[int], pid: int) -> list[Task]:
    """In a Ray worker: a chunk of sealed tasks (and, for id 0, a failure record that came in)."""
    out: list[Task] = [Task(data=Sealed(i, pid), task_id=str(i)) for i in ids]
    if 0 in ids:
        out.insert(1, FailedTask(data=Task(data="plain", task_id="r"), task_id="r", stage="before", error="boom"))
    return out


def unseal(*chunks: list[Task]) -> list[tuple[str, Any]]:
    """In a Ray worker: what a run's sealed outputs hold, as plain values."""
    return [(t.task_id, "record" if isinstance(t, FailedTask) else t.data.value) for c in chunks for t in c]


class SealedGang(GangStage):
    """Two ranks; each output says which rank had it and that rank's share (ids in order)."""

    name = "sealed_gang"
    gang_size = 2
    resources = Resources(cpus=0.5)

    def setup(self, worker_metadata: WorkerMetadata | None = None) -> None:
        assert worker_metadata is not None and worker_metadata.gang is not None
        self.rank = worker_metadata.gang.rank

    def process_batch(self, tasks: list[Task]) -> list[Task]:
        ids = [t.task_id for t in tasks]
        return [Task(data=Sealed((t.data.value, self.rank, ids), t.data.pid)) for t in tasks]


class GangChunksOnly(RayActorPoolExecutor):
    """Runs one gang stage through ``gang_chunks`` on chunks made in a worker (``last=False``)."""

    native_stage_kinds = frozenset({"shuffle", "gang"})
    chunk_ids = ([12, 13, 14, 15, 16, 17, 18, 19], [0, 1, 2, 3, 4, 5, 6], [7, 9, 8, 10, 11])

    def execute(self, stages: Any, initial_tasks: list[Task]) -> list[Task]:
        import ray

        from curator_exec_ray.gang import gang_chunks

        (stage,) = stages
        pid, make = os.getpid(), ray.remote(make_sealed)
        inputs = [TaskChunk(ref=make.remote(ids, pid), n=len(ids) + (0 in ids)) for ids in self.chunk_ids]
        self.out = gang_chunks(self.ray_run(stages), stage, inputs, last=False)
        values = ray.get(ray.remote(unseal).remote(*[c.ref for c in self.out]))
        return [Task(data=v, task_id=tid) for tid, v in values]


def test_a_gang_s_shares_and_outputs_stay_in_the_object_store(ray_attached: Any) -> None:
    ex = GangChunksOnly(show_progress=False)
    result = ex.run([SealedGang()], [Task(data=0, task_id="seed")])
    assert all(isinstance(c, TaskChunk) and c.in_store for c in ex.out)
    assert [c.n for c in ex.out] == [1, 10, 10]  # the record that came in, then each rank's outputs
    got = {t.task_id: t.data for t in result}
    assert got.pop("r") == "record"
    ids = sorted((str(i) for i in range(20)), key=task_order)
    shares = [ids[:10], ids[10:]]  # ManagedGang.shares: contiguous halves in task id order
    assert got == {tid: (int(tid), r, shares[r]) for r in (0, 1) for tid in shares[r]}
    gang = result.metrics["stages"]["sealed_gang"]
    assert (gang["tasks_in"], gang["tasks_out"], gang["tasks_failed"]) == (20, 20, 0)  # reported once per rank


@pytest.mark.skipif("gang" not in RayExecutorBase.native_stage_kinds,
                    reason="the Ray executors do not run gangs natively yet (RayExecutorBase.native_stage_kinds)")
def test_a_gang_between_map_stages_never_brings_its_data_to_the_driver(ray_attached: Any) -> None:
    from curator_exec_core.stages import ProcessingStage

    pid = os.getpid()

    class Seal(ProcessingStage):
        name = "seal"

        def process(self, task: Task) -> Task:
            return Task(data=Sealed(task.data, pid))

    class Open(ProcessingStage):
        name = "open"

        def process(self, task: Task) -> Task:
            value, rank, share = task.data.value
            return Task(data={"value": value, "rank": rank, "share": share})

    result = RayActorPoolExecutor(show_progress=False).run(
        [Seal(), SealedGang(), Open()], [Task(data=i, task_id=str(i)) for i in range(20)])
    ids = sorted((str(i) for i in range(20)), key=task_order)
    shares = [ids[:10], ids[10:]]
    assert sorted((t.task_id, t.data["value"], t.data["rank"], tuple(t.data["share"])) for t in result) == sorted(
        (tid, int(tid), r, tuple(shares[r])) for r in (0, 1) for tid in shares[r])
    assert result.metrics["stages"]["sealed_gang"]["tasks_in"] == 20

"""Several raylets on this machine (ray.cluster_utils.Cluster): placement and GPUs.

Head node: 1 CPU, no GPU. Worker node: 2 CPUs and 2 fake GPUs (Ray ``GPU``
resources; the capacity probe sees them through the core's fake NVML module).
"""

from __future__ import annotations

import pytest
from rd_stages import WhoAmI, read_rows

from curator_exec_core import PlanError, Resources, Task
from curator_exec_core.testing.stages import LifecycleLog, Recorded
from curator_exec_ray.testing import RayPlacementTests
from curator_exec_raydata import RayDataExecutor

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def _ints(n: int) -> list[Task]:
    return [Task(data=i) for i in range(n)]


def test_capacity_is_per_node_and_ignore_head_node_drops_the_head(ray_two_node_cluster) -> None:
    c = ray_two_node_cluster
    cap = RayDataExecutor(show_progress=False).capacity()
    assert {n.node_id: (n.cpus, n.num_gpus, n.is_head) for n in cap.nodes} == {
        c.head_node_id: (1.0, 0, True), c.worker_node_ids[0]: (2.0, 2, False)}
    cap = RayDataExecutor(show_progress=False, ignore_head_node=True).capacity()
    assert [n.node_id for n in cap.nodes] == [c.worker_node_ids[0]]


def test_ignore_head_node_places_no_stage_actor_on_the_head(ray_two_node_cluster, tmp_path) -> None:
    c = ray_two_node_cluster
    # 3 actors of 0.5 CPU: without the constraint Ray would happily put one on the 1-CPU head
    stages = [Recorded(str(tmp_path), "rec"), WhoAmI(str(tmp_path), workers=2)]
    got = RayDataExecutor(show_progress=False, ignore_head_node=True).run(stages, _ints(40))
    assert len(got) == 40
    assert {row[1] for row in read_rows(str(tmp_path), "who", "setup")} == {c.worker_node_ids[0]}
    log = LifecycleLog(tmp_path)
    assert set(log.per_who("setup_on_node", "rec")) == {c.worker_node_ids[0]}
    assert log.per_who("setup", "rec") == log.per_who("teardown", "rec")


def test_without_ignore_head_node_both_nodes_work_and_setup_on_node_runs_once_per_node(
        ray_two_node_cluster, tmp_path) -> None:
    c = ray_two_node_cluster
    stage = WhoAmI(str(tmp_path), workers=3, resources=Resources(cpus=1.0))  # 3 x 1 CPU: both nodes
    rec = Recorded(str(tmp_path), "rec", resources=Resources(cpus=0.0001))
    got = RayDataExecutor(show_progress=False).run([stage, rec], _ints(60))
    assert len(got) == 60
    nodes = [row[1] for row in read_rows(str(tmp_path), "who", "setup")]
    assert sorted(nodes) == sorted([c.head_node_id, c.worker_node_ids[0], c.worker_node_ids[0]])
    per_node = LifecycleLog(tmp_path).per_who("setup_on_node", "rec")
    assert all(n == 1 for n in per_node.values())


def test_gpu_stage_actors_get_their_own_gpu_on_the_gpu_node(ray_two_node_cluster, tmp_path) -> None:
    c = ray_two_node_cluster
    stage = WhoAmI(str(tmp_path), name="gpu", workers=2, resources=Resources(cpus=0.5, gpus=1))
    got = RayDataExecutor(show_progress=False).run([stage], _ints(20))
    assert len(got) == 20
    setups = read_rows(str(tmp_path), "gpu", "setup")
    assert {row[1] for row in setups} == set(c.gpu_node_ids)
    assert sorted(row[2] for row in setups) == ["0", "1"]  # one GPU each, not shared


def test_more_gpu_workers_than_gpus_is_refused_before_starting(ray_two_node_cluster, tmp_path) -> None:
    stage = WhoAmI(str(tmp_path), name="gpu", workers=3, resources=Resources(cpus=0.5, gpus=1))
    with pytest.raises(PlanError, match="gpu"):
        RayDataExecutor(show_progress=False).run([stage], _ints(5))
    assert read_rows(str(tmp_path), "gpu", "setup") == []


class TestPlacement(RayPlacementTests):
    """The Ray layer's two-node placement checks (ignore_head_node, a pinned stage) on this executor."""

    @pytest.fixture
    def make_executor(self):
        return lambda **options: RayDataExecutor(**options)

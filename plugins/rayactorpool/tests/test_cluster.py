"""Multi-node behaviour on a ray.cluster_utils.Cluster: head (1 CPU) + worker (2 CPUs, 2 fake GPUs).

One Cluster serves the whole module (the ``ray_two_node_cluster`` fixture); the
fake NVML module reports the worker's 2 GPUs to the per-node capacity probe.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from rap_stages import Logged, read

from curator_exec_core import CheckpointError, PlanError, Task
from curator_exec_core.testing.stages import Traced, read_trace
from curator_exec_ray.cluster import cluster_capacity
from curator_exec_ray.session import current_session
from curator_exec_ray.testing import RayPlacementTests
from curator_exec_rayactorpool import RayActorPoolExecutor

pytestmark = pytest.mark.timeout(900)


def ints(n: int) -> list[Task]:
    return [Task(data=i) for i in range(n)]


def setups(stage: Logged) -> list[dict]:
    return [e for e in read(stage.log) if e["event"] == "setup"]


def test_capacity_per_node_through_the_nvml_probe(ray_two_node_cluster):
    c = ray_two_node_cluster
    assert current_session().how == "connected" and not current_session().owned
    cap = cluster_capacity()
    nodes = {n.node_id: n for n in cap.nodes}
    assert set(nodes) == {c.head_node_id, *c.worker_node_ids}
    head, worker = nodes[c.head_node_id], nodes[c.worker_node_ids[0]]
    assert head.is_head and head.cpus == 1 and head.num_gpus == 0 and head.gpu_reason
    assert not worker.is_head and worker.cpus == 2 and worker.num_gpus == 2
    assert {g.name for g in worker.gpus} == {"Fake GPU"} and all(g.memory_total_gb == 16 for g in worker.gpus)
    assert cap.total_gpus == 2 and cap.total_cpus == 3
    without_head = RayActorPoolExecutor(ignore_head_node=True).capacity()
    assert [n.node_id for n in without_head.nodes] == [c.worker_node_ids[0]]


def test_ignore_head_node_places_no_actor_on_the_head(ray_two_node_cluster, tmp_path):
    c = ray_two_node_cluster
    a, b = Logged(tmp_path, "a", cpus=0.25), Logged(tmp_path, "b", cpus=0.25)
    ex = RayActorPoolExecutor(ignore_head_node=True, show_progress=False, pool_size=2)
    result = ex.run([a, b], ints(40))
    assert sorted(t.data for t in result) == list(range(2, 42))
    placed = {e["node"] for e in setups(a) + setups(b)}
    assert placed == {c.worker_node_ids[0]}
    assert sum(sp.workers for sp in result.plan.stages) > 2  # several actors, none of them on the head
    # without it, the head's CPU is part of the plan
    plan = RayActorPoolExecutor().plan([a, b], RayActorPoolExecutor().capacity())
    assert plan.capacity.total_cpus == 3


def test_ignore_head_node_places_no_task_on_the_head(ray_two_node_cluster, tmp_path):
    c = ray_two_node_cluster
    a, b = Traced(tmp_path, "a", cpus=0.25), Traced(tmp_path, "b", cpus=0.25)  # no lifecycle: run as tasks
    result = RayActorPoolExecutor(ignore_head_node=True, show_progress=False).run([a, b], ints(60))
    assert sorted(t.data for t in result) == list(range(2, 62))
    assert {e["node"] for e in read_trace(tmp_path, "a") + read_trace(tmp_path, "b")} == {c.worker_node_ids[0]}


def test_gpu_stage_lands_only_on_the_gpu_node(ray_two_node_cluster, tmp_path):
    c = ray_two_node_cluster
    cpu, gpu = Logged(tmp_path, "cpu", cpus=0.25), Logged(tmp_path, "gpu", cpus=0.25, gpus=1)
    result = RayActorPoolExecutor(show_progress=False, pool_size=2).run([cpu, gpu], ints(20))
    assert sorted(t.data for t in result) == list(range(2, 22))
    gpu_setups = setups(gpu)
    assert gpu_setups and {e["node"] for e in gpu_setups} == {c.gpu_node_ids[0]}
    assert all(e["cuda"] in ("0", "1") for e in gpu_setups)  # Ray gave each actor one GPU
    assert result.plan.stage("gpu").resources.gpus == 1


def test_gpu_memory_request_resolves_against_the_probed_gpus(ray_two_node_cluster, tmp_path):
    stage = Logged(tmp_path, "half", cpus=0.25, gpu_memory_gb=8)
    ex = RayActorPoolExecutor(show_progress=False, pool_size=2)
    result = ex.run([stage], ints(10))
    assert result.plan.stage("half").resources.gpus == 0.5  # 8 of 16 GiB
    assert len(result) == 10


def test_reserved_gpus_are_held_back(ray_two_node_cluster, tmp_path):
    stage = Logged(tmp_path, "g", cpus=0.1, gpus=1)
    ex = RayActorPoolExecutor(config={"reserved_gpus": 1})
    assert ex.plan([stage], ex.capacity()).stages[0].workers == 1
    with pytest.raises(PlanError, match="reserved_gpus"):
        RayActorPoolExecutor(config={"reserved_gpus": 2}).plan([stage], ex.capacity())


def test_infeasible_gpu_request_fails_at_plan_time(ray_two_node_cluster, tmp_path):
    stage = Logged(tmp_path, "greedy", cpus=0.25, gpus=3)
    with pytest.raises(PlanError, match="greedy"):
        RayActorPoolExecutor(show_progress=False).run([stage], ints(3))
    with pytest.raises(PlanError, match="greedy"):  # 4 CPUs per actor: the head is ignored, the worker has 2
        RayActorPoolExecutor(ignore_head_node=True, show_progress=False).run(
            [Logged(tmp_path, "greedy", cpus=4)], ints(3))
    assert setups(stage) == []


def test_cli_info_prints_the_cluster_capacity(ray_two_node_cluster):
    c = ray_two_node_cluster
    exe = os.path.join(os.path.dirname(sys.executable), "curator-exec")
    if not os.path.exists(exe):
        pytest.skip("the curator-exec command is not installed in this environment")
    env = {**os.environ, "RAY_ADDRESS": c.address}
    out = subprocess.run([exe, "info", "ray_actor_pool"], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert c.head_node_id in out.stdout and c.worker_node_ids[0] in out.stdout
    assert "Fake GPU" in out.stdout and "pool_size" in out.stdout


def test_strict_spread_gang_over_two_raylets_all_reduces(ray_two_node_cluster, tmp_path):
    from curator_exec_core.testing.stages import AllReduceSum

    c = ray_two_node_cluster
    gang = AllReduceSum(str(tmp_path), placement_strategy="STRICT_SPREAD")
    gang.resources = gang.resources.__class__(cpus=1)
    result = RayActorPoolExecutor(show_progress=False).run([gang], ints(20))
    assert len(result) == 20 and {t.data["sum"] for t in result} == {sum(range(20))}
    assert {t.data["node"] for t in result} == {c.head_node_id, c.worker_node_ids[0]}  # one rank per raylet
    # three such ranks cannot spread over two nodes: refused before anything starts
    wide = AllReduceSum(str(tmp_path), name="wide", gang_size=3, placement_strategy="STRICT_SPREAD")
    with pytest.raises(PlanError, match=r"gang stage 'wide' needs 3 ranks .*STRICT_SPREAD"):
        RayActorPoolExecutor(show_progress=False).run([wide], ints(3))


def test_checkpoint_on_a_cluster_every_node_confirms_it_sees_the_directory(ray_two_node_cluster, tmp_path):
    from curator_exec_core.testing.conformance import canonical, reference_run
    from curator_exec_core.testing.stages import Paced, resume_stages
    from curator_exec_ray import cluster as ray_cluster_module

    c = ray_two_node_cluster
    stages, tasks = resume_stages(n=40, seconds=0.0)
    got = RayActorPoolExecutor(show_progress=False).run(stages, tasks, checkpoint_path=tmp_path / "ck")
    assert canonical(got) == canonical(reference_run(stages, tasks))
    assert any(key[0] == str(tmp_path / "ck") for key in ray_cluster_module._visible)  # both nodes answered
    assert not os.listdir(tmp_path / "ck" / ".nodes")  # the markers are cleaned up

    # a node that never answers (its raylet stopped): a clear error within the bound, not a hang
    import signal
    import time

    import ray

    node = c.cluster.add_node(num_cpus=1)
    c.cluster.wait_for_nodes()
    raylet = node.all_processes["raylet"][0].process
    ex = RayActorPoolExecutor(show_progress=False)
    ex.run([Paced(0.0)], ints(3))  # the capacity of the three nodes, cached before the raylet stops
    os.kill(raylet.pid, signal.SIGSTOP)
    try:
        bound = ray_cluster_module.SHARED_PATH_TIMEOUT
        ray_cluster_module.SHARED_PATH_TIMEOUT = 5.0
        started = time.monotonic()
        with pytest.raises(CheckpointError, match=rf"node {node.node_id[:12]} .* did not answer within 5 s.*NFS"):
            ex.run([Paced(0.0)], ints(3), checkpoint_path=tmp_path / "ck2")
        assert time.monotonic() - started < 60
    finally:
        ray_cluster_module.SHARED_PATH_TIMEOUT = bound
        os.kill(raylet.pid, signal.SIGCONT)
        c.cluster.remove_node(node)
    assert ray.is_initialized()


class TestPlacement(RayPlacementTests):
    """The Ray layer's two-node placement checks (ignore_head_node, a pinned stage) on this executor."""

    @pytest.fixture
    def make_executor(self):
        return lambda **options: RayActorPoolExecutor(**options)

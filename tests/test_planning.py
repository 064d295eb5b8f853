"""Planning: stages x capacity -> ExecutionPlan, the same for every backend.

Capacities are built by hand (GpuInfo with real-looking sizes), so these tests do
not depend on the machine; one test runs the real ``local`` executor to show that
an infeasible request fails at plan time, before any stage is set up.
"""

from __future__ import annotations

import math

import attrs
import pytest

from curator_exec_core import Pipeline, PlanError, ProcessingStage, Resources, Task
from curator_exec_core.capacity import Capacity, GpuInfo, NodeCapacity
from curator_exec_core.planning import ExecutionPlan, StagePlan, plan_stages

GiB = 1024**3


def gpu(index: int, gib: float, node: str = "n") -> GpuInfo:
    return GpuInfo(index=index, uuid=f"GPU-{node}-{index}", name=f"Fake{gib:g}G",
                   memory_total=int(gib * GiB), memory_free=int(gib * GiB))


def node(node_id: str, cpus: float, gpus_gib=(), *, head: bool = False, reason: str | None = None) -> NodeCapacity:
    return NodeCapacity(node_id, f"host-{node_id}", cpus=cpus, memory=64 * GiB,
                        gpus=[gpu(i, g, node_id) for i, g in enumerate(gpus_gib)], is_head=head,
                        gpu_reason=reason if not gpus_gib else None)


def cap(*nodes: NodeCapacity) -> Capacity:
    return Capacity(nodes=nodes)


class S(ProcessingStage):
    """A stage whose name, resources, fixed workers and batch size are set per instance."""

    def __init__(self, name: str = "s", resources: Resources | None = None, workers: int | None = None,
                 batch_size: int = 1) -> None:
        self.name = name
        if resources is not None:
            self.resources = resources
        self._workers = workers
        self.batch_size = batch_size

    def num_workers(self):
        return self._workers

    def process(self, task):
        return task


def cpus_used(plan: ExecutionPlan) -> float:
    return sum(sp.workers * sp.resources.cpus for sp in plan.stages)


def gpus_used(plan: ExecutionPlan) -> float:
    return sum(sp.workers * sp.resources.gpus for sp in plan.stages)


def fits_gpu_by_gpu(plan: ExecutionPlan) -> bool:
    """Best-fit placement of the plan's GPU workers: fractions on one GPU, whole GPUs on one node."""
    free = {(n.node_id, g.index): 1.0 for n in plan.capacity.nodes for g in n.gpus}
    workers = sorted((sp.resources.gpus for sp in plan.stages for _ in range(sp.workers) if sp.resources.gpus),
                     reverse=True)
    for need in workers:
        if need >= 1:
            node = next((n.node_id for n in plan.capacity.nodes
                         if sum(free[(n.node_id, g.index)] == 1.0 for g in n.gpus) >= need), None)
            if node is None:
                return False
            for key in [k for k, v in free.items() if k[0] == node and v == 1.0][: int(need)]:
                free[key] = 0.0
        else:
            room = [k for k, v in free.items() if v + 1e-9 >= need]
            if not room:
                return False
            best = min(room, key=lambda k: free[k])
            free[best] -= need
    return True


NO_GPU = "NVML unavailable: NVML Shared Library Not Found"


# -- gpu_memory_gb resolves against the real GPUs --------------------------------------


@pytest.mark.parametrize(("gib", "ask", "fraction"), [(16, 8, 0.5), (80, 8, 0.1), (16, 12, 0.75), (80, 80, 1.0),
                                                      (16, 16, 1.0)])
def test_gpu_memory_gb_resolves_to_a_fraction_of_the_real_gpu(gib, ask, fraction):
    plan = plan_stages([S("embed", Resources(gpu_memory_gb=ask))], cap(node("n", 8, [gib])))
    sp = plan.stage("embed")
    assert sp.resources.gpus == fraction
    assert sp.resources.gpu_memory_gb == 0  # resolved: backends see a plain GPU fraction
    assert sp.requested == Resources(gpu_memory_gb=ask)  # what the user asked stays visible
    assert any(f"gpu_memory_gb={ask:g} -> gpus={fraction:g}" in n for n in sp.notes)


def test_gpu_memory_gb_on_mixed_gpus_uses_the_smallest():
    plan = plan_stages([S("embed", Resources(gpu_memory_gb=8))], cap(node("a", 8, [80]), node("b", 8, [16])))
    assert plan.stage("embed").resources.gpus == 0.5


def test_gpu_memory_gb_above_the_smallest_of_mixed_gpus_fails():
    # 40 GiB fits the 80 GiB GPU but not the 16 GiB one, and a worker may land on either
    with pytest.raises(PlanError) as err:
        plan_stages([S("embed", Resources(gpu_memory_gb=40))], cap(node("a", 8, [80]), node("b", 8, [16])))
    msg = str(err.value)
    assert "'embed'" in msg and "gpu_memory_gb=40" in msg and "smallest has 16.0 GiB" in msg and "gpus=N" in msg


def test_gpu_memory_gb_workers_share_gpus():
    plan = plan_stages([S("embed", Resources(cpus=1, gpu_memory_gb=8))], cap(node("n", 16, [16, 16])))
    # 0.5 GPU each on 2 GPUs: 4 workers
    assert plan.stage("embed").workers == 4


def test_gpu_memory_gb_larger_than_the_largest_gpu_fails():
    with pytest.raises(PlanError) as err:
        plan_stages([S("llm", Resources(gpu_memory_gb=100))], cap(node("a", 8, [80]), node("b", 8, [16])))
    msg = str(err.value)
    assert "'llm'" in msg and "gpu_memory_gb=100" in msg and "80.0 GiB" in msg


def test_gpu_memory_gb_without_any_gpu_fails_naming_the_reason():
    with pytest.raises(PlanError) as err:
        plan_stages([S("embed", Resources(gpu_memory_gb=8))], cap(node("n", 8, reason=NO_GPU)))
    msg = str(err.value)
    assert "'embed'" in msg and "gpu_memory_gb=8" in msg and "no GPU" in msg and NO_GPU in msg


# -- infeasible requests fail at plan time with a clear message --------------------------


def test_two_gpu_stage_on_a_cpu_only_capacity_fails():
    with pytest.raises(PlanError) as err:
        plan_stages([S("cpu", Resources(cpus=1)), S("train", Resources(cpus=1, gpus=2))],
                    cap(node("vm", 2, reason=NO_GPU)))
    msg = str(err.value)
    assert "'train'" in msg  # the stage
    assert "gpus=2" in msg  # what it asked
    assert "vm: 2 CPUs, 0 GPUs" in msg and NO_GPU in msg  # what exists


def test_more_cpus_than_any_node_has_fails_even_if_the_total_would_do():
    with pytest.raises(PlanError) as err:
        plan_stages([S("big", Resources(cpus=12))], cap(node("a", 8), node("b", 8)))
    msg = str(err.value)
    assert "'big'" in msg and "cpus=12" in msg and "no node can give" in msg
    assert "a: 8 CPUs, 0 GPUs" in msg and "b: 8 CPUs, 0 GPUs" in msg


def test_whole_gpus_must_fit_on_one_node():
    # 4 GPUs in total, but no node has 3
    with pytest.raises(PlanError, match="'t'.*gpus=3.*no node can give"):
        plan_stages([S("t", Resources(gpus=3))], cap(node("a", 8, [80, 80]), node("b", 8, [80, 80])))


def test_gpu_and_cpu_must_fit_on_the_same_node():
    # one node has the CPUs, the other the GPU: nothing can host a worker
    with pytest.raises(PlanError, match="no node can give"):
        plan_stages([S("t", Resources(cpus=8, gpus=1))], cap(node("a", 8), node("b", 2, [80])))


def test_batch_size_below_one_fails():
    with pytest.raises(PlanError, match="'s'.*batch_size"):
        plan_stages([S("s", batch_size=0)], cap(node("n", 4)))


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2"])
def test_num_workers_must_be_a_positive_int(bad):
    with pytest.raises(PlanError, match="num_workers"):
        plan_stages([S("s", workers=bad)], cap(node("n", 4)))


def test_empty_capacity_fails_with_a_hint():
    with pytest.raises(PlanError, match="no node.*ignore_head_node"):
        plan_stages([S()], Capacity(nodes=[]), executor="x")


# -- concurrent stages sharing CPUs ------------------------------------------------------


def test_concurrent_stages_that_over_ask_get_scaled_with_a_note():
    stages = [S("a"), S("b"), S("c")]  # 1 CPU each, 2 cores
    plan = plan_stages(stages, cap(node("n", 2)), concurrent=True)
    assert [sp.workers for sp in plan.stages] == [1, 1, 1]
    assert all(0 < sp.resources.cpus < 1 for sp in plan.stages)
    assert all(sp.requested.cpus == 1 for sp in plan.stages)
    assert plan.notes and "scaled" in plan.notes[0] and "3" in plan.notes[0] and "2" in plan.notes[0]
    # every worker must really fit (an engine would leave the last one pending forever)
    assert cpus_used(plan) <= 2


def test_concurrent_over_ask_refused_without_scaling():
    with pytest.raises(PlanError) as err:
        plan_stages([S("a"), S("b"), S("c")], cap(node("n", 2)), concurrent=True, scale_cpus_to_fit=False)
    msg = str(err.value)
    assert "3 stages" in msg and "need 3 CPUs" in msg and "2 are available" in msg


def test_stage_after_stage_needs_no_scaling():
    plan = plan_stages([S("a"), S("b"), S("c")], cap(node("n", 2)), concurrent=False)
    assert plan.notes == ()
    assert [(sp.workers, sp.resources.cpus) for sp in plan.stages] == [(2, 1), (2, 1), (2, 1)]
    assert not plan.concurrent


def test_concurrent_stages_share_the_cpus():
    plan = plan_stages([S("a"), S("b")], cap(node("n", 8)), concurrent=True)
    assert [sp.workers for sp in plan.stages] == [4, 4]
    assert plan.notes == ()


@pytest.mark.parametrize(
    ("total", "asks"),
    [(2, [1, 1, 1]), (4, [3, 1]), (8, [3, 1]), (6, [1, 2, 3]), (5, [0.5, 4]), (10, [7, 1, 1]), (3, [1] * 7)],
)
def test_concurrent_plans_never_oversubscribe_cpus(total, asks):
    stages = [S(f"s{i}", Resources(cpus=c)) for i, c in enumerate(asks)]
    plan = plan_stages(stages, cap(node("n", total)), concurrent=True)
    assert all(sp.workers >= 1 for sp in plan.stages)
    assert cpus_used(plan) <= total + 1e-9, plan.describe()


def test_unequal_concurrent_stages_use_the_cpus():
    # 8 CPUs, a 3-CPU stage and a 1-CPU stage: both run, and little is left idle
    plan = plan_stages([S("big", Resources(cpus=3)), S("small")], cap(node("n", 8)), concurrent=True)
    assert plan.stage("big").workers >= 1 and plan.stage("small").workers >= 2
    assert 8 - cpus_used(plan) < 3


# -- fixed workers, caps and reservations ------------------------------------------------


def test_fixed_num_workers_is_honoured():
    plan = plan_stages([S("fixed", workers=3), S("auto")], cap(node("n", 8)), concurrent=True)
    assert plan.stage("fixed").workers == 3
    assert plan.stage("auto").workers == 5  # what is left
    # a fixed count is not subject to the automatic cap
    plan = plan_stages([S("fixed", workers=3)], cap(node("n", 8)), max_workers_per_stage=1)
    assert plan.stage("fixed").workers == 3


def test_fixed_gpu_workers_must_fit_on_the_gpus():
    with pytest.raises(PlanError, match="'g' wants 3 workers with gpus=1.*only 2 fit"):
        plan_stages([S("g", Resources(gpus=1), workers=3)], cap(node("n", 8, [80, 80])))


def test_max_workers_per_stage_caps_automatic_sizing():
    plan = plan_stages([S("a")], cap(node("n", 16)), max_workers_per_stage=4)
    sp = plan.stage("a")
    assert sp.workers == 4 and any("capped" in n and "4" in n for n in sp.notes)
    plan = plan_stages([S("a")], cap(node("n", 16)), max_workers_per_stage=1)
    assert plan.stage("a").workers == 1 and plan.stage("a").notes == ()
    assert plan_stages([S("a")], cap(node("n", 2)), max_workers_per_stage=4).stage("a").workers == 2


def test_reserved_cpus_are_held_back():
    plan = plan_stages([S("a")], cap(node("n", 8)), reserved_cpus=2)
    assert plan.stage("a").workers == 6
    with pytest.raises(PlanError, match="reserved_cpus=8 leaves no CPU"):
        plan_stages([S("a")], cap(node("n", 8)), reserved_cpus=8)


def test_reserved_gpus_are_held_back():
    capacity = cap(node("n", 16, [80, 80, 80, 80]))
    plan = plan_stages([S("g", Resources(gpus=1))], capacity, reserved_gpus=2)
    assert plan.stage("g").workers == 2
    assert gpus_used(plan) <= 2
    with pytest.raises(PlanError, match="'g' asks for gpus=3.*only 2 GPU"):
        plan_stages([S("g", Resources(gpus=3))], capacity, reserved_gpus=2)
    with pytest.raises(PlanError, match="'g' wants 3 workers.*only 2 fit"):
        plan_stages([S("g", Resources(gpus=1), workers=3)], capacity, reserved_gpus=2)


def test_concurrent_gpu_stages_share_the_gpus():
    plan = plan_stages([S("a", Resources(gpus=1)), S("b", Resources(gpus=1)), S("c")],
                       cap(node("n", 16, [80, 80, 80, 80])), concurrent=True)
    assert plan.stage("a").workers == 2 and plan.stage("b").workers == 2
    assert gpus_used(plan) <= 4
    with pytest.raises(PlanError, match="need 3 GPUs.*2 are available"):
        plan_stages([S("a", Resources(gpus=1)), S("b", Resources(gpus=2))], cap(node("n", 16, [80, 80])))


@pytest.mark.parametrize(
    ("gpus_per_node", "asks"),
    [([3], [2, 0.5]), ([1], [0.6, 0.3]), ([2], [1, 0.3]), ([4], [0.25, 0.5, 1]), ([2, 2], [2, 0.5]),
     ([8], [0.5, 0.3]), ([3, 3], [0.4, 0.7, 2]), ([2, 1], [0.35, 0.35, 0.35])],
)
def test_concurrent_plans_never_oversubscribe_gpus(gpus_per_node, asks):
    nodes = [node(f"n{i}", 32, [80] * k) for i, k in enumerate(gpus_per_node)]
    plan = plan_stages([S(f"s{i}", Resources(gpus=g)) for i, g in enumerate(asks)], cap(*nodes), concurrent=True)
    assert all(sp.workers >= 1 for sp in plan.stages)
    assert gpus_used(plan) <= sum(gpus_per_node) + 1e-9, plan.describe()
    assert fits_gpu_by_gpu(plan), plan.describe()


def test_concurrent_fractional_gpu_stages_fit_gpu_by_gpu():
    # 0.5 + 0.3 GPU workers on 8 GPUs: totals alone would allow 8 + 13 workers (7.9 GPUs),
    # but 0.3 shares cannot use the halves of GPUs already holding two 0.5 workers
    plan = plan_stages([S("a", Resources(cpus=0.1, gpus=0.5)), S("b", Resources(cpus=0.1, gpus=0.3))],
                       cap(node("n", 64, [80] * 8)), concurrent=True)
    assert fits_gpu_by_gpu(plan), plan.describe()
    assert plan.stage("a").workers >= 4 and plan.stage("b").workers >= 4
    assert gpus_used(plan) > 6  # and the GPUs are still well used


def test_concurrent_gpu_minimum_that_cannot_be_placed_fails():
    # 1.8 GPUs in total for one worker each, on 2 GPUs, but no GPU can hold two 0.6 shares
    with pytest.raises(PlanError, match="do not fit on the GPUs.*cannot span two GPUs"):
        plan_stages([S(f"s{i}", Resources(gpus=0.6)) for i in range(3)], cap(node("n", 8, [80, 80])))
    # stage after stage, each gets the GPUs in turn
    plan = plan_stages([S(f"s{i}", Resources(gpus=0.6)) for i in range(3)], cap(node("n", 8, [80, 80])),
                       concurrent=False)
    assert [sp.workers for sp in plan.stages] == [2, 2, 2]


# -- ignore_head_node and multi-node capacities ------------------------------------------


def test_ignore_head_node_on_a_one_node_capacity_fails_with_a_hint():
    one = cap(node("vm", 8, head=True))
    with pytest.raises(PlanError) as err:
        plan_stages([S()], one.without_head(), executor="ray_actor_pool")
    msg = str(err.value)
    assert "'ray_actor_pool'" in msg and "ignore_head_node" in msg and "worker nodes" in msg


def test_ignore_head_node_on_local_fails_at_plan_time():
    calls = []

    class Probe(S):
        def setup(self, worker_metadata=None):
            calls.append("setup")

    with pytest.raises(PlanError, match="ignore_head_node"):
        Pipeline("p", [Probe("probe")]).run(_local(ignore_head_node=True))
    assert calls == []


def _local(**options):
    from curator_exec_core import get_executor

    return get_executor("local", **options)


def multi_node() -> Capacity:
    return cap(
        node("head", 8, head=True, reason=NO_GPU),
        node("w1", 8, [80, 80, 80]),
        node("w2", 8, [80, 80, 80]),
        node("cpu1", 16, reason=NO_GPU),
    )


def test_gpu_stage_workers_only_count_gpu_nodes():
    plan = plan_stages([S("g", Resources(cpus=1, gpus=1))], multi_node())
    # 40 CPUs would allow 40 workers, but only 6 GPUs exist (on w1 and w2)
    assert plan.stage("g").workers == 6


def test_whole_gpu_packing_is_per_node():
    plan = plan_stages([S("g", Resources(cpus=1, gpus=2))], multi_node())
    # 6 GPUs in total, but 3 per node: one 2-GPU worker per node
    assert plan.stage("g").workers == 2
    with pytest.raises(PlanError, match="only 2 fit"):
        plan_stages([S("g", Resources(cpus=1, gpus=2), workers=3)], multi_node())


def test_fractional_gpus_pack_per_gpu():
    plan = plan_stages([S("g", Resources(cpus=1, gpus=0.4))], multi_node())
    # a 0.4 share cannot span two GPUs: 2 per GPU, 6 per GPU node (not floor(3 / 0.4) = 7)
    assert plan.stage("g").workers == 12
    assert fits_gpu_by_gpu(plan)


def test_cpu_stage_uses_every_node_and_ignore_head_node_removes_one():
    assert plan_stages([S("c")], multi_node()).stage("c").workers == 40
    assert plan_stages([S("c")], multi_node().without_head()).stage("c").workers == 32


def test_multi_node_cpu_only_capacity_refuses_gpu_stage():
    with pytest.raises(PlanError) as err:
        plan_stages([S("g", Resources(gpus=1))], cap(node("a", 8, reason=NO_GPU), node("b", 8, reason=NO_GPU)))
    assert "a: 8 CPUs, 0 GPUs" in str(err.value) and "b: 8 CPUs, 0 GPUs" in str(err.value)


# -- the plan records ---------------------------------------------------------------------


def test_plan_records_and_lookup():
    plan = plan_stages([S("read", batch_size=4), S("embed", Resources(cpus=2, gpu_memory_gb=8))],
                       cap(node("n", 8, [16])), executor="demo")
    assert isinstance(plan.stages, tuple) and all(isinstance(sp, StagePlan) for sp in plan.stages)
    assert plan.executor == "demo" and plan.concurrent
    assert plan.stage(0) is plan.stage("read")
    assert plan.stage(1).name == "embed" and plan.stage(1).index == 1
    assert plan.stage("read").batch_size == 4
    with pytest.raises(KeyError):
        plan.stage("nope")
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        plan.stage(0).workers = 9  # type: ignore[misc]


def test_plan_describe():
    plan = plan_stages([S("read", batch_size=4), S("embed", Resources(cpus=2, gpu_memory_gb=8)),
                        S("write"), S("w2"), S("w3")],
                       cap(node("n", 4, [16])), executor="demo")
    text = plan.describe()
    assert text.startswith("Plan for executor 'demo': all stages at once (streaming)")
    assert "1 node(s): cpus=4 gpus=1" in text  # the capacity
    assert "stage" in text and "workers" in text and "per worker" in text and "batch" in text
    read_line = next(line for line in text.splitlines() if " read " in line)
    assert read_line.split()[:3] == ["0", "read", str(plan.stage("read").workers)] and read_line.endswith(" 4")
    assert "gpus=0.5" in text and "note: gpu_memory_gb=8 -> gpus=0.5" in text
    assert "note: stages need 6 CPUs" in text  # plan-level note (scaling)
    sequential = plan_stages([S("a")], cap(node("n", 2)), concurrent=False)
    assert "stage after stage" in sequential.describe()


def test_plan_can_be_changed_with_attrs_evolve():
    plan = plan_stages([S("a"), S("b")], cap(node("n", 8)))
    capped = attrs.evolve(plan, stages=[attrs.evolve(sp, workers=1) for sp in plan.stages])
    assert [sp.workers for sp in capped.stages] == [1, 1] and isinstance(capped.stages, tuple)


# -- through the real `local` executor -----------------------------------------------------


def test_local_plan_is_one_worker_per_stage_in_turn():
    plan = Pipeline("p", [S("a"), S("b")]).plan("local")
    assert plan.executor == "local" and not plan.concurrent
    assert [sp.workers for sp in plan.stages] == [1, 1]


def test_gpu_stage_on_local_fails_at_plan_time_before_any_setup():
    from curator_exec_core.capacity import local_capacity

    if local_capacity().total_gpus >= 2:
        pytest.skip("this machine has 2 GPUs")
    calls: list[str] = []

    class Recorder(ProcessingStage):
        def __init__(self, name, resources):
            self.name = name
            self.resources = resources

        def setup_on_node(self, node_info=None, worker_metadata=None):
            calls.append(f"setup_on_node:{self.name}")

        def setup(self, worker_metadata=None):
            calls.append(f"setup:{self.name}")

        def process(self, task):
            calls.append(f"process:{self.name}")
            return task

        def teardown(self):
            calls.append(f"teardown:{self.name}")

    pipeline = Pipeline("gpu", [Recorder("cpu_first", Resources(cpus=1)), Recorder("train", Resources(gpus=2))])
    with pytest.raises(PlanError) as err:
        pipeline.run(initial_tasks=[Task(data=1)])  # default executor: local
    assert "'train'" in str(err.value) and "gpus=2" in str(err.value) and "0 GPUs" in str(err.value)
    assert calls == []  # no stage was set up, not even the CPU one before it


# -- Resources validation --------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"cpus": -1},
        {"gpus": -0.5},
        {"gpu_memory_gb": -8},
        {"gpus": 1.5},
        {"gpus": 2.25},
        {"gpus": 1, "gpu_memory_gb": 8},
        {"gpus": 0.5, "gpu_memory_gb": 8},
    ],
)
def test_resources_rejects_bad_values(kwargs):
    with pytest.raises(ValueError):
        Resources(**kwargs)


@pytest.mark.parametrize("kwargs", [{"cpus": math.nan}, {"gpus": math.nan}, {"gpu_memory_gb": math.nan},
                                    {"cpus": "2"}, {"gpus": None}, {"cpus": True}])
def test_resources_rejects_non_numbers(kwargs):
    with pytest.raises(TypeError, match="must be a number"):
        Resources(**kwargs)


@pytest.mark.parametrize("field", ["cpus", "gpus", "gpu_memory_gb"])
def test_resources_rejects_infinite_values(field):
    with pytest.raises(ValueError, match="must be finite"):
        Resources(**{field: math.inf})


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"cpus": 0}, {"cpus": 0.5}, {"gpus": 0.25}, {"gpus": 1}, {"gpus": 2.0}, {"gpus": 8}, {"gpu_memory_gb": 24}],
)
def test_resources_accepts_valid_values(kwargs):
    r = Resources(**kwargs)
    assert r.requires_gpu == bool(kwargs.get("gpus") or kwargs.get("gpu_memory_gb"))


def test_resources_is_frozen_and_describes_itself():
    r = Resources(cpus=2, gpus=0.5)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        r.cpus = 4  # type: ignore[misc]
    assert r.describe() == "cpus=2, gpus=0.5"
    assert Resources(gpu_memory_gb=8).describe() == "cpus=1, gpu_memory_gb=8"

"""Options, per-stage Xenna options, planning and the mapping onto Xenna's spec (no Ray cluster needed)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from curator_exec_core import (
    Capacity,
    ConfigError,
    NodeCapacity,
    PlanError,
    ProcessingStage,
    Resources,
    Task,
    get_executor,
)
from curator_exec_core.testing.stages import AddOne
from curator_exec_xenna import XennaExecutor

SEED_CONFIG = {
    "execution_mode": "streaming",
    "logging_interval": 60,
    "ignore_failures": False,
    "cpu_allocation_percentage": 0.95,
    "autoscale_interval_s": 180,
}


def one_node(cpus: float) -> Capacity:
    return Capacity(nodes=[NodeCapacity(node_id="n1", hostname="h", cpus=cpus, memory=8 * 1024**3, is_head=True,
                                        gpu_reason="no NVML")])


class Opts(ProcessingStage):
    name = "opts"
    resources = Resources(cpus=0.5)

    def __init__(self, xenna: dict | None = None, workers: int | None = None, name: str = "opts",
                 cpus: float = 0.5) -> None:
        self.name = name
        self.resources = Resources(cpus=cpus)
        self.backend_options = {"xenna": xenna} if xenna is not None else {}
        self._workers = workers

    def num_workers(self) -> int | None:
        return self._workers

    def process(self, task: Task) -> Task:
        return task


def test_listing_and_getting_the_executor_imports_no_engine() -> None:
    code = (
        "import sys\n"
        "from curator_exec_core import list_executors, get_executor\n"
        "names = [getattr(e, 'name', e) for e in list_executors()]\n"
        "assert 'xenna' in names, names\n"
        "ex = get_executor('xenna', execution_mode='batch')\n"
        "bad = [m for m in ('ray', 'cosmos_xenna') if m in sys.modules]\n"
        "assert not bad, bad\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr


def test_seed_config_and_top_level_import() -> None:
    ex = XennaExecutor(config=SEED_CONFIG)
    assert ex.options.execution_mode == "streaming" and ex.options.cpu_allocation_percentage == 0.95
    assert ex.concurrent_stages is True
    batch = get_executor("xenna", execution_mode="batch", max_workers_per_stage=3, ignore_head_node=True)
    assert isinstance(batch, XennaExecutor) and batch.concurrent_stages is False
    assert batch.ignore_head_node is True and batch.options.max_workers_per_stage == 3


@pytest.mark.parametrize(
    "values, match",
    [
        ({"execution_mod": "batch"}, "execution_mode"),
        ({"execution_mode": "serving"}, "execution_mode"),
        ({"cpu_allocation_percentage": 0.0}, "cpu_allocation_percentage"),
        ({"cpu_allocation_percentage": 1.5}, "cpu_allocation_percentage"),
        ({"logging_interval": "often"}, "logging_interval"),
        ({"autoscale_interval_s": 0}, "autoscale_interval_s"),
        ({"max_workers_per_stage": 0}, "max_workers_per_stage"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"pool_size": 4}, "pool_size"),
    ],
)
def test_bad_options_are_config_errors(values: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        XennaExecutor(config=values)


@pytest.mark.parametrize(
    "xenna, match",
    [
        ({"slots_per_actr": 4}, "slots_per_actor"),
        ({"num_workers": 2}, "num_workers"),
        ({"slots_per_actor": 0}, "slots_per_actor"),
        ({"num_workers_per_node": -1}, "num_workers_per_node"),
        ({"over_provision_factor": "big"}, "over_provision_factor"),
        ({"max_setup_failure_percentage": 150}, "max_setup_failure_percentage"),
    ],
)
def test_bad_stage_options_fail_at_plan_time(xenna: dict, match: str) -> None:
    ex = XennaExecutor()
    with pytest.raises(ConfigError, match=match):
        ex.plan([AddOne(), Opts(xenna)], one_node(1.0))


def test_num_workers_and_num_workers_per_node_conflict() -> None:
    with pytest.raises(ConfigError, match="not both"):
        XennaExecutor().plan([Opts({"num_workers_per_node": 1}, workers=2)], one_node(2.0))


def test_two_stages_fit_on_xennas_one_cpu_by_fractional_cpus() -> None:
    # what Xenna sees on a 2-core node with the default 0.95: floor(1.9) = 1 CPU
    stages = [AddOne("a", cpus=1.0), AddOne("b", cpus=1.0)]
    plan = XennaExecutor().plan(stages, one_node(1.0))
    assert [sp.resources.cpus for sp in plan.stages] == [0.5, 0.5]
    assert sum(sp.resources.cpus * sp.workers for sp in plan.stages) <= 1.0
    # batch mode: stage after stage, each may use the whole CPU
    batch = XennaExecutor(execution_mode="batch").plan(stages, one_node(1.0))
    assert [sp.resources.cpus for sp in batch.stages] == [1.0, 1.0]


def test_plan_refuses_when_xenna_has_no_cpu_naming_the_option() -> None:
    with pytest.raises(PlanError, match="cpu_allocation_percentage"):
        XennaExecutor(cpu_allocation_percentage=0.4).plan([AddOne()], one_node(0.0))


def test_pipeline_spec_mapping() -> None:
    pytest.importorskip("cosmos_xenna")
    ex = XennaExecutor(config={**SEED_CONFIG, "execution_mode": "batch", "logging_interval": 5,
                               "autoscale_interval_s": 30, "cpu_allocation_percentage": 0.5,
                               "ignore_failures": True, "max_retries": 2})
    stages = [
        Opts({"slots_per_actor": 3, "over_provision_factor": 1.5, "worker_max_lifetime_m": 10}, name="tuned"),
        Opts(workers=2, name="pinned"),
        Opts({"num_workers_per_node": 1.0}, name="per_node"),
        Opts(name="auto"),
    ]
    plan = ex.plan(stages, one_node(2.0))
    managed = ex.managed_stages(stages, plan)
    tasks = [Task(data=i, task_id=str(i)) for i in range(40)]
    spec = ex.build_pipeline_spec(managed, tasks, chunk=16)
    cfg = spec.config
    assert cfg.execution_mode.name == "BATCH"
    assert cfg.logging_interval_s == 5 and cfg.cpu_allocation_percentage == 0.5
    assert cfg.mode_specific.autoscale_interval_s == 30
    # failures and retries are the core's: Xenna must never drop or retry by itself
    assert cfg.ignore_failures is False and cfg.num_run_attempts_python == 1
    assert cfg.return_last_stage_outputs is True
    tuned, pinned, per_node, auto = spec.stages
    assert (tuned.slots_per_actor, tuned.over_provision_factor, tuned.worker_max_lifetime_m) == (3, 1.5, 10)
    assert tuned.num_workers is None and auto.num_workers is None
    assert pinned.num_workers == 2
    assert per_node.num_workers_per_node == 1.0 and per_node.num_workers is None
    assert [s.stage.required_resources.cpus for s in spec.stages] == [sp.resources.cpus for sp in plan.stages]
    assert all(s.stage.stage_batch_size == 1 for s in spec.stages)
    # the input is chunked; every task is there once
    assert [len(c) for c in spec.input_data] == [13, 13, 14]  # near-equal chunks of at most 16
    assert sorted(t.task_id for c in spec.input_data for t in c.tasks) == sorted(t.task_id for t in tasks)
    assert "Chunk of 13 tasks" in repr(spec.input_data[0])  # Xenna logs its spec: keep it short


def test_max_workers_per_stage_pins_auto_stages() -> None:
    pytest.importorskip("cosmos_xenna")
    ex = XennaExecutor(max_workers_per_stage=2, execution_mode="batch")
    stages = [Opts(name="small", cpus=0.25), Opts(workers=3, name="fixed", cpus=0.25)]
    plan = ex.plan(stages, one_node(2.0))
    assert [sp.workers for sp in plan.stages] == [2, 3]
    spec = ex.build_pipeline_spec(ex.managed_stages(stages, plan), [Task(data=1, task_id="0")], chunk=16)
    assert [s.num_workers for s in spec.stages] == [2, 3]


def test_default_chunk_size_scales_with_input() -> None:
    ex = XennaExecutor()
    stages = [AddOne(cpus=1.0)]  # one worker on Xenna's one CPU
    managed = ex.managed_stages(stages, ex.plan(stages, one_node(1.0)))
    assert ex._chunk_size(10, managed) == 16
    assert ex._chunk_size(2_000, managed) == 125
    assert ex._chunk_size(1_000_000, managed) == 256
    assert XennaExecutor(chunk_size=7)._chunk_size(2_000, managed) == 7


def test_importing_xenna_leaves_the_environment_alone() -> None:
    pytest.importorskip("cosmos_xenna")
    code = (
        "import os\n"
        "import ray  # Ray sets its own variables on import; we check what Xenna adds\n"
        "before = dict(os.environ)\n"
        "from curator_exec_xenna.executor import _import_xenna\n"
        "_import_xenna()\n"
        "changed = {k for k in set(before) | set(os.environ) if before.get(k) != os.environ.get(k)}\n"
        "assert not changed, changed\n"
        "print('ok')\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr

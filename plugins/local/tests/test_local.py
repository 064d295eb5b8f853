"""The `local` plugin: conformance, and what is particular to it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from curator_exec_core import Pipeline, Task, get_executor, list_executors
from curator_exec_core.capacity import usable_cpus
from curator_exec_core.testing import ExecutorConformance
from curator_exec_core.testing.stages import AddOne, FanOut
from curator_exec_local import LocalExecutor


class TestLocalConformance(ExecutorConformance):
    @pytest.fixture
    def make_executor(self):
        return lambda **options: get_executor("local", **options)


def test_registered_through_its_entry_point():
    spec = next(s for s in list_executors() if s.name == "local")
    assert spec.distribution == "curator-exec-local"
    assert spec.factory == "curator_exec_local.executor:LocalExecutor"
    assert isinstance(get_executor("local"), LocalExecutor)


def test_capacity_is_this_machine_and_one_worker_per_stage():
    ex = get_executor("local")
    cap = ex.capacity()
    assert len(cap.nodes) == 1 and cap.nodes[0].cpus == usable_cpus()
    plan = Pipeline("p", [AddOne(), FanOut(2)]).plan(ex)
    assert [s.workers for s in plan.stages] == [1, 1]


def test_runs_in_process_without_ray():
    code = (
        "import sys; from curator_exec_core import Pipeline, Task;"
        "from curator_exec_core.testing.stages import AddOne;"
        "r = Pipeline('p', [AddOne()]).run('local', [Task(data=1)]);"
        "assert [t.data for t in r] == [2];"
        "print(sorted(m for m in ('ray', 'cosmos_xenna') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_workers_are_this_process():
    result = Pipeline("p", [AddOne()]).run("local", [Task(data=i) for i in range(3)])
    workers = {p.worker for t in result for p in t.stage_perf}
    assert workers == {f"local:{os.getpid()}:0"}

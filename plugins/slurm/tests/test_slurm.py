"""The slurm executor beyond the conformance kit, on the session's one-node Slurm: the answers of
`local` for an exact dedup and a gang, a cancelled element resubmitted, a SIGUSR1 requeue, a killed
driver whose rerun resubmits only unfinished shards, wait=False followed with `curator-exec status`,
arrays split past max_array_size; options and errors that need no cluster."""

from __future__ import annotations

import glob
import json
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from curator_exec_core import ConfigError, PlanError, Resources, Task, get_executor, list_executors
from curator_exec_core.testing.kit.base import canonical, reference_run
from curator_exec_core.testing.stages import AddOne, AllReduceSum, KeepFirst, Paced, Unwrap
from curator_exec_slurm import SlurmExecutor
from curator_exec_slurm.commands import Slurm, parse_records
from curator_exec_slurm.executor import _gres_gpus
from curator_exec_slurm.jobs import _array_spec


def ints(n: int) -> list[Task]:
    return [Task(data=i) for i in range(n)]


# -- no cluster needed -------------------------------------------------------------------------


def test_registered_and_listing_imports_nothing_heavy():
    assert "slurm" in {spec.name for spec in list_executors()}
    code = ("import sys; from curator_exec_core import list_executors; list_executors(); "
            "print('curator_exec_slurm.executor' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"


def test_options_are_validated():
    ex = get_executor("slurm", partition="gpu", time_limit="1-00:00:00", mem_per_task="4G", max_concurrent=4,
                      sbatch_args=["--exclusive"], max_array_size=500)
    assert (ex.options.partition, ex.options.max_concurrent, ex.options.max_array_size) == ("gpu", 4, 500)
    with pytest.raises(ConfigError, match="did you mean 'partition'"):
        get_executor("slurm", partiton="gpu")
    with pytest.raises(ConfigError, match="not a Slurm time"):
        get_executor("slurm", time_limit="an hour")
    with pytest.raises(ConfigError, match="not a Slurm memory size"):
        get_executor("slurm", mem_per_task="4 gigs")
    with pytest.raises(ConfigError, match="list of strings"):
        get_executor("slurm", sbatch_args=["--exclusive", 3])
    with pytest.raises(ConfigError, match="max_concurrent"):
        get_executor("slurm", max_concurrent=0)


def test_helpers_parse_slurm_output():
    assert _array_spec([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8"
    assert _gres_gpus("gpu:a100:4(S:0-1),gpu:2") == 6 and _gres_gpus("(null)") == 0
    records = parse_records("NodeName=n1 CPUTot=8 OS=Linux 6.1.0 #1 SMP RealMemory=1000\nNodeName=n2 CPUTot=4\n")
    assert records[0]["OS"] == "Linux 6.1.0 #1 SMP" and records[0]["RealMemory"] == "1000"
    assert records[1] == {"NodeName": "n2", "CPUTot": "4"}


def test_missing_commands_are_a_clear_plan_error(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(PlanError, match="sbatch"):
        SlurmExecutor().capacity()


# -- on the session's Slurm ------------------------------------------------------------------------


def test_a_run_needs_a_shared_run_directory(slurm_env):
    ex = SlurmExecutor(config={"slurm_env": slurm_env, "show_progress": False})
    with pytest.raises(ConfigError, match="checkpoint_path=.*scratch_dir"):
        ex.run([AddOne()], ints(3))


def test_the_run_directory_is_proven_shared_once_per_filesystem(make_slurm, slurm_env, tmp_path, monkeypatch):
    from curator_exec_slurm import executor as module

    monkeypatch.setattr(module, "_SHARED", set())
    ex = make_slurm()
    ex.run([AddOne()], ints(2), checkpoint_path=tmp_path / "a")
    ex.run([AddOne()], ints(2), checkpoint_path=tmp_path / "b")
    assert len(module._SHARED) == 1  # one check job for both (same filesystem, partition)
    assert os.listdir(tmp_path / "a" / "slurm" / ".nodes") == []  # its markers are removed


def test_capacity_is_the_partitions_nodes(cluster, make_slurm):
    cap = make_slurm().capacity()
    assert [n.node_id for n in cap.nodes] == [cluster.node]
    assert cap.total_cpus == cluster.cpus and not cap.nodes[0].is_head
    assert make_slurm(ignore_head_node=True).capacity().total_cpus == cluster.cpus  # no head node on Slurm
    with pytest.raises(Exception, match="no partition 'nope'.*debug"):
        make_slurm(partition="nope").capacity()
    big = AddOne()
    big.resources = Resources(cpus=cluster.cpus + 1)
    with pytest.raises(PlanError):
        make_slurm().run([big], ints(2))


def test_exact_dedup_and_a_gang_give_locals_answer(make_slurm, tmp_path):
    stages = [AddOne(), KeepFirst(modulo=13), Unwrap(), AllReduceSum(str(tmp_path / "gang"), gang_size=2)]
    (tmp_path / "gang").mkdir()
    (tmp_path / "gang-local").mkdir()
    tasks = ints(300)
    expected = get_executor("local", show_progress=False).run(
        [AddOne(), KeepFirst(modulo=13), Unwrap(), AllReduceSum(str(tmp_path / "gang-local"), gang_size=2)], tasks)
    got = make_slurm(tasks_per_element=40).run(stages, ints(300), checkpoint_path=tmp_path / "ck")
    assert canonical(got) == canonical(expected) and len(got) == 13
    jobs = got.metrics["engine"]["slurm"]["job_ids"]
    assert len(jobs) == 5  # a map array, the shuffle's key and reduce arrays, a map array, the gang


def _running_elements(slurm: Slurm, job_name: str) -> list[str]:
    out = slurm.run(["squeue", "-h", "-r", "-n", job_name, "-t", "RUNNING", "-o", "%i"], check=False)
    return [line.strip() for line in out.splitlines() if "_" in line]


def _in_thread(fn):
    box: dict = {}

    def main():
        try:
            box["result"] = fn()
        except BaseException as exc:
            box["error"] = exc
    thread = threading.Thread(target=main, daemon=True)
    thread.start()
    return thread, box


def _wait_running(slurm: Slurm, name: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        running = _running_elements(slurm, name)
        if running:
            return running[0]
        time.sleep(0.1)
    raise AssertionError(f"no element of {name} ran within {timeout} s")


def test_a_cancelled_element_is_resubmitted_and_the_answer_is_exact(make_slurm, slurm_env, tmp_path):
    stages = [Paced(0.3, name="slow"), AddOne()]  # 3 s per element: cancelled while it runs
    ex = make_slurm(tasks_per_element=10, job_name="cancelme")
    thread, box = _in_thread(lambda: ex.run(stages, ints(40), checkpoint_path=tmp_path / "ck"))
    element = _wait_running(Slurm(slurm_env), "cancelme-map-slow..add_one")
    index = int(element.split("_")[1])
    deadline = time.monotonic() + 60
    # cancelled once its Python runs (cancelled while Slurm still launches it, Slurm requeues it itself)
    while not any(f"element map {index} " in open(p).read()
                  for p in glob.glob(str(tmp_path / "ck" / "slurm" / "*" / "*" / f"log-0+{index}.txt"))):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    Slurm(slurm_env).cancel([element])
    thread.join(180)
    assert "error" not in box, box.get("error")
    got = box["result"]
    assert canonical(got) == canonical(reference_run(stages, ints(40)))
    logs = {os.path.basename(p): open(p).read() for p in glob.glob(str(tmp_path / "ck" / "slurm" / "*" / "*" / "log-*"))}
    assert len(got.metrics["engine"]["slurm"]["job_ids"]) == 2, (element, logs)  # the array, then the element again


def test_sigusr1_requeues_an_element_that_then_finishes(make_slurm, slurm_env, tmp_path):
    stages = [Paced(0.15, name="slow")]
    ex = make_slurm(tasks_per_element=10, job_name="requeue")
    thread, box = _in_thread(lambda: ex.run(stages, ints(20), checkpoint_path=tmp_path / "ck"))
    slurm = Slurm(slurm_env)
    element = _wait_running(slurm, "requeue-map-slow")
    slurm.run(["scancel", "--signal=USR1", "--batch", element])
    thread.join(180)
    assert "error" not in box, box.get("error")
    assert canonical(box["result"]) == canonical(reference_run(stages, ints(20)))
    logs = "".join(open(p).read() for p in glob.glob(str(tmp_path / "ck" / "slurm" / "*" / "*" / "log-*.txt")))
    assert "SIGUSR1: requeueing this element" in logs and "(restart 1)" in logs
    assert len(box["result"].metrics["engine"]["slurm"]["job_ids"]) == 1  # Slurm requeued it, not the driver


DRIVER = textwrap.dedent("""
    import sys
    from curator_exec_core import Task
    from curator_exec_core.testing.stages import Paced
    from curator_exec_slurm import SlurmExecutor
    import json
    ex = SlurmExecutor(config=json.loads(sys.argv[2]))
    ex.run([Paced(0.1, name="slow")], [Task(data=i) for i in range(60)], checkpoint_path=sys.argv[1])
""")


def test_a_killed_driver_then_a_rerun_resubmits_only_unfinished_shards(slurm_env, tmp_path):
    ck = tmp_path / "ck"
    config = {"slurm_env": slurm_env, "poll_interval": 0.1, "tasks_per_element": 10, "max_concurrent": 1,
              "show_progress": False, "job_name": "killed"}
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, str(ck), json.dumps(config)], start_new_session=True,
                            env={**os.environ, **slurm_env})
    try:
        deadline = time.monotonic() + 120
        while len(glob.glob(str(ck / "slurm" / "*" / "*" / "out-*.pkl"))) < 2:
            assert proc.poll() is None and time.monotonic() < deadline, "the driver ended or stalled"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    slurm = Slurm(slurm_env)
    assert slurm.alive(open(ck / "slurm" / "jobs").read().split())  # its array is still there, orphaned
    before = set(glob.glob(str(ck / "slurm" / "*" / "")))
    got = SlurmExecutor(config={**config, "max_concurrent": None}).run(
        [Paced(0.1, name="slow")], ints(60), checkpoint_path=ck)
    assert canonical(got) == canonical(reference_run([Paced(0.1, name="slow")], ints(60)))
    resumed = got.metrics["checkpoint"]["resumed_tasks"]
    assert resumed >= 20
    assert not _running_elements(slurm, "killed-map-slow")  # the orphans were cancelled
    (rerun,) = set(glob.glob(str(ck / "slurm" / "*" / ""))) - before
    rerun_inputs = sum(len(pickle.load(open(p, "rb"))) for p in glob.glob(os.path.join(rerun, "*", "in-*.pkl")))
    assert rerun_inputs == 60 - resumed  # only what the journals did not finish was submitted again


def test_wait_false_returns_at_once_and_status_follows_the_run(make_slurm, slurm_env, tmp_path):
    ck = tmp_path / "ck"
    stages = [Paced(0.05, name="slow"), AddOne()]
    result = make_slurm(wait=False, tasks_per_element=10).run(stages, ints(30), checkpoint_path=ck)
    assert list(result) == [] and result.metrics["slurm"]["driver_job"].isdigit()
    env = {**os.environ, **slurm_env}
    job = result.metrics["slurm"]["driver_job"]
    deadline = time.monotonic() + 180
    seen_states = set()
    while True:
        status = subprocess.run([sys.executable, "-m", "curator_exec_core", "status", "--json", str(ck)],
                                capture_output=True, text=True, env=env)
        report = json.loads(status.stdout)
        seen_states.add(report["state"])
        if report["state"] == "submitted":  # before the driver job opened the checkpoint: the executor's note
            assert status.returncode == 3 and f"driver job {job}" in report["notes"][0]
        if status.returncode == 0 and report.get("finished"):
            assert f"driver job {job}" in " ".join(report["notes"])
            break
        assert time.monotonic() < deadline, status.stdout + status.stderr
        time.sleep(0.5)
    got = make_slurm().run(stages, ints(30), checkpoint_path=ck)  # the outputs, from the checkpoint
    assert canonical(got) == canonical(reference_run(stages, ints(30)))
    assert got.metrics["checkpoint"]["resumed_tasks"] == 30 and "slurm" not in got.metrics.get("engine", {})


def test_arrays_past_max_array_size_are_split(make_slurm):
    got = make_slurm(tasks_per_element=2, max_array_size=3).run([AddOne()], ints(14))
    assert canonical(got) == canonical(reference_run([AddOne()], ints(14)))
    assert len(got.metrics["engine"]["slurm"]["job_ids"]) == 3  # 7 elements: 3 + 3 + 1


class DiesEveryTime(Paced):
    """Kills its own process: an element that never finishes (what a node failure looks like)."""

    def process(self, task):
        os.kill(os.getpid(), signal.SIGKILL)


def test_an_element_that_never_finishes_fails_the_run_naming_it_and_its_log(make_slurm):
    from curator_exec_slurm.jobs import SlurmJobError

    with pytest.raises(SlurmJobError) as info:
        make_slurm(tasks_per_element=5, max_element_retries=1).run([AddOne(), DiesEveryTime(name="dies")], ints(10))
    message = str(info.value)
    assert "2 element(s)" in message and "after 2 submission(s) (max_element_retries=1)" in message
    assert "log-0+0.txt" in message and "curator-exec slurm element map 0" in message  # the log's tail

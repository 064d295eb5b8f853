"""Ray session ownership (curator_exec_ray.session) as the Ray plugins rely on it.

Cases that need a driver in another state than this test process (a user's own
``ray.init``, ``RAY_ADDRESS``, no Ray at all) run a small script in a subprocess.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import textwrap

import attrs
import pytest

from curator_exec_core.testing.stages import AddOne
from curator_exec_ray import cluster as cl
from curator_exec_ray import session as rs

SCRIPT_HEAD = """
import os, sys
import ray
from curator_exec_core import Task
from curator_exec_ray import cluster as cl, session as rs
from curator_exec_core.testing.stages import AddOne
from curator_exec_rayactorpool import RayActorPoolExecutor

def run_pipeline(**config):
    out = RayActorPoolExecutor(config={"show_progress": False, **config}).run([AddOne()], [Task(data=i) for i in range(5)])
    assert sorted(t.data for t in out) == [1, 2, 3, 4, 5], out
"""


def run_script(body: str, env: dict[str, str | None]) -> str:
    full_env = dict(os.environ)
    for key, value in env.items():
        if value is None:
            full_env.pop(key, None)
        else:
            full_env[key] = value
    code = SCRIPT_HEAD + textwrap.dedent(body)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full_env, timeout=420)
    assert out.returncode == 0, f"stdout:\n{out.stdout[-3000:]}\nstderr:\n{out.stderr[-5000:]}"
    return out.stdout


def test_session_is_reused_and_survives_runs(ray_attached):
    import ray

    first = rs.ensure_ray()
    assert rs.ensure_ray() is first and rs.current_session() is first
    from curator_exec_core import Task
    from curator_exec_rayactorpool import RayActorPoolExecutor

    RayActorPoolExecutor(show_progress=False).run([AddOne()], [Task(data=1)])
    assert ray.is_initialized() and rs.current_session() is first


def test_a_session_of_an_earlier_connection_is_never_shut_down(ray_attached, monkeypatch):
    import ray

    # what the module would hold had it started a cluster that the user has since replaced by their own
    stale = attrs.evolve(rs.ensure_ray(), owned=True, how="started", token=("session_gone", "01000000"))
    monkeypatch.setattr(rs, "_session", stale)
    assert rs.shutdown_if_owned() is False
    assert ray.is_initialized()
    assert rs.current_session() is None  # forgotten
    fresh = rs.ensure_ray()
    assert fresh.token != stale.token and fresh.owned is False and fresh.how == "existing"


def test_users_ray_init_and_ray_address_are_reused_never_shut_down(ray_attached):
    import ray

    address = ray.get_runtime_context().gcs_address
    # the user called ray.init themselves
    out = run_script(f"""
        ray.init(address={address!r})
        s = rs.ensure_ray(runtime_env={{"env_vars": {{"X": "1"}}}})
        assert (s.how, s.owned) == ("existing", False), s
        run_pipeline(runtime_env={{"env_vars": {{"X": "1"}}}})
        run_pipeline()
        assert rs.shutdown_if_owned() is False and ray.is_initialized()
        print("EXISTING-OK", ray.get_runtime_context().gcs_address)
    """, {"RAY_ADDRESS": None})
    assert f"EXISTING-OK {address}" in out
    # RAY_ADDRESS names the cluster to use
    out = run_script("""
        s = rs.ensure_ray()
        assert (s.how, s.owned) == ("connected", False), s
        run_pipeline()
        assert rs.shutdown_if_owned() is False and ray.is_initialized()
        print("CONNECTED-OK", ray.get_runtime_context().gcs_address)
    """, {"RAY_ADDRESS": address})
    assert f"CONNECTED-OK {address}" in out
    # and this session's cluster is still up
    assert ray.get(ray.remote(lambda: 42).remote(), timeout=120) == 42


@pytest.mark.timeout(600)
def test_starts_its_own_ray_only_when_none_exists(ray_attached):
    # A private Ray temp dir whose ray_current_cluster file names a cluster that is gone:
    # ensure_ray must start its own (with the runtime_env) instead of failing to connect.
    with tempfile.TemporaryDirectory(prefix="rs", dir="/tmp") as tmp:
        os.makedirs(os.path.join(tmp, "ray"))
        with open(os.path.join(tmp, "ray", "ray_current_cluster"), "w") as f:
            f.write("127.0.0.1:9")
        out = run_script("""
            s = rs.ensure_ray(runtime_env={"env_vars": {"RS_JOB_VAR": "from-job"}}, num_cpus=1)
            assert (s.how, s.owned) == ("started", True), s
            assert ray.get(ray.remote(lambda: os.environ.get("RS_JOB_VAR")).remote()) == "from-job"
            run_pipeline()
            assert rs.shutdown_if_owned() is True and not ray.is_initialized()
            print("STARTED-OK")
        """, {"RAY_ADDRESS": None, "RAY_TMPDIR": tmp})
    assert "STARTED-OK" in out


@pytest.mark.timeout(600)
def test_capacity_of_a_ray_we_started_is_probed_in_process(ray_attached):
    # the node of a Ray this process started is this machine: probed here, same answer as a probe task
    with tempfile.TemporaryDirectory(prefix="rs", dir="/tmp") as tmp:
        out = run_script("""
            s = rs.ensure_ray(num_cpus=2, num_gpus=1)
            assert s.how == "started"
            here = cl.cluster_capacity()
            there = ray.get(ray.remote(num_cpus=0)(cl._probe_on_node).remote(
                ray.get_runtime_context().get_node_id(), True, os.environ[cl.NVML_MODULE_ENV]))
            (node,) = here.nodes
            assert node.cpus == 2.0 and [g.name for g in node.gpus] == ["Fake GPU"], node  # Ray has 1 GPU of 3
            assert [g.uuid for g in there.gpus][:1] == [g.uuid for g in node.gpus] and node.node_id == there.node_id
            assert rs.shutdown_if_owned() is True
            print("PROBED-OK")
        """, {"RAY_ADDRESS": None, "RAY_TMPDIR": tmp, "CURATOR_EXEC_NVML_MODULE": "curator_exec_core.testing.fake_nvml",
              "CURATOR_EXEC_FAKE_GPUS": "3"})
    assert "PROBED-OK" in out


@pytest.mark.timeout(900)
def test_cluster_helper_stops_only_its_cluster_and_reattaches(ray_attached):
    import ray

    from curator_exec_ray.testing import _address_file, ray_cluster

    before = rs.current_session()
    address_file = _address_file()
    file_before = open(address_file).read() if address_file and os.path.exists(address_file) else None
    with ray_cluster(head={"num_cpus": 1}, workers=[{"num_cpus": 1, "num_gpus": 1}]) as c:
        assert ray.get_runtime_context().gcs_address == c.address
        s = rs.current_session()
        assert (s.how, s.owned) == ("connected", False)  # the executor must never stop the test's cluster
        cap = cl.cluster_capacity()
        assert sorted(n.num_gpus for n in cap.nodes) == [0, 1]
        from curator_exec_core import Task
        from curator_exec_rayactorpool import RayActorPoolExecutor

        out = RayActorPoolExecutor(show_progress=False).run([AddOne()], [Task(data=1)])
        assert [t.data for t in out] == [2]
        nodes = [c.cluster.head_node, *c.cluster.worker_nodes]
        pids = [p.process.pid for node in nodes for infos in node.all_processes.values() for p in infos]
    # the Cluster's processes are gone, this process is attached again the way it was, and Ray works
    assert pids
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert ray.is_initialized()
    after = rs.current_session()
    assert after is not None and (after.how, after.owned) == (before.how, before.owned)
    if before.how != "started":
        assert after.address == before.address  # a cluster we only connected to was left running
    assert ray.get(ray.remote(lambda: 7).remote(), timeout=120) == 7
    if address_file:
        assert (open(address_file).read() if os.path.exists(address_file) else None) == file_before
    assert cl.NVML_MODULE_ENV not in os.environ


def test_workers_of_a_cluster_we_start_hash_alike_and_a_foreign_one_is_warned_about(ray_attached):
    """hash() of a str is salted per process. A cluster the executor starts gives all its processes
    one PYTHONHASHSEED, so shuffle keys built with hash() group right; on a cluster the user started
    without one, the shuffle warns (it cannot know whether keys() uses hash())."""
    out = run_script("""
        import logging
        from curator_exec_core.testing.stages import HashDedup
        logging.basicConfig(level=logging.WARNING, stream=sys.stdout)
        def dedup():
            got = RayActorPoolExecutor(show_progress=False).run([AddOne(), HashDedup()],
                                                                [Task(data=i) for i in range(200)])
            return len(got)
        print("OURS", dedup(), rs.current_session().how)
        ray.shutdown()
        ray.init(num_cpus=2, include_dashboard=False)  # the user's own cluster, no common seed
        print("FOREIGN", dedup(), rs.current_session().how)
    """, {"RAY_ADDRESS": "local", "PYTHONHASHSEED": None})
    lines = dict(line.split(" ", 1) for line in out.splitlines() if line.startswith(("OURS", "FOREIGN")))
    assert lines["OURS"] == "25 started"  # one output per distinct text
    assert lines["FOREIGN"].endswith("existing") and lines["FOREIGN"] != "25 existing"  # wrong, as warned
    warnings = [line for line in out.splitlines() if "hash strings differently" in line]
    assert len(warnings) == 1 and "PYTHONHASHSEED" in warnings[0]

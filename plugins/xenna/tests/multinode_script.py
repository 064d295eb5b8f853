"""Run by test_multinode.py in a fresh interpreter: a 2-node ray.cluster_utils.Cluster on this host."""

from __future__ import annotations

import json
import os
import sys
import tempfile

from curator_exec_xenna.executor import XENNA_START_ENV

os.environ.update(XENNA_START_ENV)  # this throwaway process starts the cluster: its raylets need them

import ray
import ray.cloudpickle
import xenna_test_stages
from ray.cluster_utils import Cluster

from curator_exec_core import Resources, Task, get_executor
from curator_exec_core.testing import LifecycleLog


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# Xenna's monitor needs the dashboard; other clusters on this host may hold the default port
cluster = Cluster(initialize_head=True,
                  head_node_args={"num_cpus": 1, "include_dashboard": True, "dashboard_port": free_port()})
try:
    worker = cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)
    ray.cloudpickle.register_pickle_by_value(xenna_test_stages)
    head_id = next(n["NodeID"] for n in ray.nodes() if "node:__internal_head__" in n["Resources"])
    out: dict = {"head": head_id, "worker": worker.node_id}

    folder = tempfile.mkdtemp()
    ex = get_executor("xenna", ignore_head_node=True, cpu_allocation_percentage=1.0, show_progress=False)
    out["capacity_ignore_head"] = [(n.node_id, n.cpus, n.is_head) for n in ex.capacity().nodes]
    stage = xenna_test_stages.Placed(folder, "placed", resources=Resources(cpus=0.5))
    got = ex.run([stage], [Task(data=i) for i in range(40)])
    log = LifecycleLog(folder)
    out["ignore_head"] = {"n": len(got), "setup_nodes": sorted(log.per_who("setup_node", "placed")),
                          "setups": len(log.per_who("setup", "placed")),
                          "teardowns": len(log.per_who("teardown", "placed"))}

    folder = tempfile.mkdtemp()
    ex = get_executor("xenna", cpu_allocation_percentage=1.0, execution_mode="batch", chunk_size=1,
                      show_progress=False)
    out["capacity"] = sorted((n.node_id, n.cpus, n.is_head) for n in ex.capacity().nodes)
    stage = xenna_test_stages.Placed(folder, "both", resources=Resources(cpus=1.0))
    stage.workers = 3  # 1 CPU each: the 1-CPU head takes one, the 2-CPU node two
    stage.sleep = 0.25  # 10 s of work: both workers get to set up, however slowly they start
    got = ex.run([stage], [Task(data=i) for i in range(40)])
    log = LifecycleLog(folder)
    out["both"] = {"n": len(got), "setup_nodes": dict(log.per_who("setup_node", "both")),
                   "setup_on_node": dict(log.per_who("setup_on_node", "both")),
                   "setups": len(log.per_who("setup", "both")),
                   "teardowns": dict(log.per_who("teardown", "both")) == dict(log.per_who("setup", "both"))}

    # a schedule wrapper pins stage 1 to the head: Xenna keeps that stage's workers there (it hides the
    # other nodes from Xenna for the run), and refuses stages pinned to different nodes
    from curator_exec_core import register_plugin, unregister_plugin
    from curator_exec_core.testing.stages import Traced, read_trace
    from curator_exec_ray.testing import PinStage

    folder = tempfile.mkdtemp()
    pin = PinStage(1, [head_id])
    register_plugin(pin, name="test-pin-stage")
    try:
        ex = get_executor("xenna", cpu_allocation_percentage=1.0, show_progress=False)
        got = ex.run([Traced(folder, "free", cpus=0.25), Traced(folder, "pinned", cpus=0.25)],
                     [Task(data=i) for i in range(20)])
    finally:
        unregister_plugin(pin)
    out["pinned"] = {"n": len(got), "nodes": sorted({e["node"] for e in read_trace(folder, "pinned")})}
    print("RESULT " + json.dumps(out), flush=True)
finally:
    ray.shutdown()
    cluster.shutdown()
    sys.stdout.flush()

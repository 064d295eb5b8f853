"""Several raylets on this machine (ray.cluster_utils.Cluster), in a fresh interpreter so the
session's Ray stays untouched."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.timeout(600)

HERE = os.path.dirname(os.path.abspath(__file__))


def test_two_nodes_capacity_placement_and_setup_on_node() -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([HERE, env.get("PYTHONPATH", "")])
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run([sys.executable, os.path.join(HERE, "multinode_script.py")], capture_output=True,
                          text=True, timeout=540, env=env, cwd=HERE)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-4000:]
    out = json.loads(lines[-1][len("RESULT "):])
    head, worker = out["head"], out["worker"]
    # per-node capacity as Xenna sees it; ignore_head_node drops the head from capacity...
    assert out["capacity_ignore_head"] == [[worker, 2.0, False]]
    assert sorted(map(tuple, out["capacity"])) == sorted([(head, 1.0, True), (worker, 2.0, False)])
    # ... and from placement: every worker ran on the non-head node
    ih = out["ignore_head"]
    assert ih["n"] == 40 and ih["setup_nodes"] == [worker] and ih["setups"] == ih["teardowns"] >= 1
    # three 1-CPU workers on a 1-CPU head and a 2-CPU node: setup_on_node once per node
    both = out["both"]
    assert both["n"] == 40 and both["setups"] == 3 and both["teardowns"] is True
    assert both["setup_nodes"] == {head: 1, worker: 2}
    assert both["setup_on_node"] == {head: 1, worker: 1}
    # a stage pinned to a node by a schedule wrapper runs only there
    assert out["pinned"] == {"n": 20, "nodes": [head]}

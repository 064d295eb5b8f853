"""Shared fixtures: the core's opt-in Ray fixtures (one local Ray per session, multi-node clusters)."""

from __future__ import annotations

import os
import sys

from curator_exec_ray.testing import ray_attached, ray_driver_env, ray_session, ray_two_node_cluster  # noqa: F401

# the test stages module must be importable by Ray workers (they inherit the environment)
HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in os.environ.get("PYTHONPATH", "").split(os.pathsep):
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (HERE, os.environ.get("PYTHONPATH")) if p)
if HERE not in sys.path:
    sys.path.insert(0, HERE)

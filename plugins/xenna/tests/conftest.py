"""Shared Ray fixtures from the core (one Ray per test session), plus this plugin's test stages.

``ray_session`` comes from :mod:`curator_exec_ray.testing`: it reuses a running Ray
or starts a 2-CPU one *without* Xenna's start variables, so these tests also cover a
cluster whose dashboard accepts only 10,000 state-API rows (the executor lowers Xenna's
limit for its runs). The multi-node test runs its own ``Cluster`` in a fresh interpreter.
"""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

pytest_plugins = ["curator_exec_ray.testing"]


@pytest.fixture(scope="session", autouse=True)
def _ship_test_stages_by_value() -> None:
    """Ray workers cannot import the tests folder: pickle the test stages by value."""
    import ray.cloudpickle
    import xenna_test_stages

    ray.cloudpickle.register_pickle_by_value(xenna_test_stages)

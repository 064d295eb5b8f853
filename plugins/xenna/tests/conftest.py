"""One Ray cluster per test session, started the way the xenna executor would start it.

If ``curator_exec_core.testing.fixtures`` provides a session Ray fixture, prefer it;
until then this starts (and at the end stops) a 2-CPU local Ray with the dashboard
and the state-API limits Xenna needs. A cluster that was already running (RAY_ADDRESS)
is reused and never shut down.
"""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))


@pytest.fixture(scope="session")
def ray_session():
    from curator_exec_core.ray_session import ensure_ray, shutdown_if_owned
    from curator_exec_xenna.executor import XENNA_START_ENV

    import ray.cloudpickle

    import xenna_test_stages

    session = ensure_ray(start_env=XENNA_START_ENV, include_dashboard=True, num_cpus=2)
    # workers cannot import the tests folder: ship the test stages by value
    ray.cloudpickle.register_pickle_by_value(xenna_test_stages)
    yield session
    shutdown_if_owned()

"""One Ray cluster per test session, started the way the xenna executor would start it.

If ``curator_exec_core.testing.fixtures`` provides a session Ray fixture, prefer it;
until then this starts (and at the end stops) a 2-CPU local Ray with the dashboard
and the state-API limits Xenna needs. A cluster that was already running (RAY_ADDRESS)
is reused and never shut down.
"""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def ray_session():
    from curator_exec_core.ray_session import ensure_ray, shutdown_if_owned
    from curator_exec_xenna.executor import XENNA_START_ENV

    session = ensure_ray(start_env=XENNA_START_ENV, include_dashboard=True, num_cpus=2)
    yield session
    shutdown_if_owned()

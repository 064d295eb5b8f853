"""Shared fixtures: one local Ray for the whole test session (started here, stopped here)."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def ray_session():
    """A Ray to run on: the running one if any, else a local 2-CPU Ray we stop at the end."""
    from curator_exec_core import ray_session as rs

    session = rs.ensure_ray(num_cpus=2)
    yield session
    rs.shutdown_if_owned()


@pytest.fixture
def tmp_run_dir(tmp_path):
    os.makedirs(tmp_path, exist_ok=True)
    return tmp_path

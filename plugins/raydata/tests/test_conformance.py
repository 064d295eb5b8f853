"""The core conformance suite on the ray_data executor (a real local Ray)."""

from __future__ import annotations

import pytest

from curator_exec_core.testing import ExecutorConformance
from curator_exec_raydata import RayDataExecutor


class TestRayDataConformance(ExecutorConformance):
    large_n = 10_000

    @pytest.fixture
    def make_executor(self, ray_session):
        return lambda **options: RayDataExecutor(config=options)

    @pytest.fixture
    def driver_env(self, ray_driver_env):
        return ray_driver_env

"""The core conformance kit on the ray_actor_pool executor (one local Ray for the whole session)."""

import pytest

from curator_exec_core.testing import ExecutorConformance
from curator_exec_rayactorpool import RayActorPoolExecutor


class TestRayActorPoolConformance(ExecutorConformance):
    large_n = 10_000

    @pytest.fixture
    def make_executor(self, ray_attached):
        return lambda **options: RayActorPoolExecutor(config=options)

    @pytest.fixture
    def driver_env(self, ray_driver_env):
        return ray_driver_env

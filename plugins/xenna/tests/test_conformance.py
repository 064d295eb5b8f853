"""The core conformance kit, in streaming and in batch mode."""

from __future__ import annotations

import pytest

from curator_exec_core import get_executor
from curator_exec_core.testing import ExecutorConformance

pytestmark = pytest.mark.timeout(300)


class _Ray:
    @pytest.fixture
    def driver_env(self, ray_driver_env):
        return ray_driver_env


class TestXennaStreaming(_Ray, ExecutorConformance):
    @pytest.fixture
    def make_executor(self, ray_session):
        return lambda **options: get_executor("xenna", execution_mode="streaming", **options)


class TestXennaBatch(_Ray, ExecutorConformance):
    @pytest.fixture
    def make_executor(self, ray_session):
        return lambda **options: get_executor("xenna", execution_mode="batch", **options)

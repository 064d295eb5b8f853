"""The core conformance kit: all of it in streaming mode; in batch mode, what Xenna's mode changes.

Batch mode runs each stage to completion before the next, which changes how tasks flow through the
map stages, their workers' lifecycle and where failures surface: those mixins run in both modes.
Shuffles, gangs, resumes and option checks go through the Ray layer and the core the same way in
both modes, so they run once, in streaming mode (they are the kit's most expensive cases on Xenna,
whose every run creates its workers).
"""

from __future__ import annotations

import os

import pytest

from curator_exec_core import get_executor
from curator_exec_core.testing import ExecutorConformance
from curator_exec_core.testing.kit import DataPlaneTests, FailureTests, LifecycleTests, OutputTests, StatsTests

pytestmark = pytest.mark.timeout(300)

#: ``CURATOR_EXEC_XENNA_KIT=engine`` (the nox session sets it on every Xenna version but the first):
#: only the mixins whose runs go through Xenna's own code (outputs, failures, lifecycle, data plane,
#: statistics). Shuffles, gangs, resumes and option checks run on the Ray layer and the core, the same
#: whatever the Xenna version, so the suite runs them (its most expensive Xenna cases) once.
ENGINE_ONLY = os.environ.get("CURATOR_EXEC_XENNA_KIT") == "engine"
StreamingKit: type = (type("EngineKit", (DataPlaneTests, StatsTests, FailureTests, LifecycleTests, OutputTests), {})
                      if ENGINE_ONLY else ExecutorConformance)


class _Ray:
    @pytest.fixture
    def driver_env(self, ray_driver_env):
        return ray_driver_env


class TestXennaStreaming(_Ray, StreamingKit):
    @pytest.fixture
    def make_executor(self, ray_session):
        return lambda **options: get_executor("xenna", execution_mode="streaming", **options)


class TestXennaBatch(_Ray, FailureTests, LifecycleTests, OutputTests):
    @pytest.fixture
    def make_executor(self, ray_session):
        return lambda **options: get_executor("xenna", execution_mode="batch", **options)

"""NeMo Curator's documented custom executor passes the conformance kit unchanged."""

from __future__ import annotations

import pytest
from seed_custom_executor import MyCustomExecutor

from curator_exec_core.testing import ExecutorConformance


class TestSeedCustomExecutorConformance(ExecutorConformance):
    """NeMo Curator's documented custom executor, with only its imports changed to ours."""

    @pytest.fixture
    def make_executor(self):
        return lambda **options: MyCustomExecutor(config=options)

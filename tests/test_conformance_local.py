"""The `local` plugin and the seed's custom executor pass the conformance kit."""

from __future__ import annotations

import pytest

from curator_exec_core import get_executor
from curator_exec_core.testing import ExecutorConformance
from seed_custom_executor import MyCustomExecutor


class TestLocalConformance(ExecutorConformance):
    @pytest.fixture
    def make_executor(self):
        return lambda **options: get_executor("local", **options)


class TestSeedCustomExecutorConformance(ExecutorConformance):
    """NeMo Curator's documented custom executor, with only its imports changed to ours."""

    @pytest.fixture
    def make_executor(self):
        return lambda **options: MyCustomExecutor(config=options)

"""The core conformance kit on the slurm executor, against the session's one-node Slurm."""

import pytest

from curator_exec_core.testing import ExecutorConformance
from curator_exec_slurm import SlurmExecutor


class TestSlurmConformance(ExecutorConformance):
    large_n = 2_000

    @pytest.fixture
    def make_executor(self, slurm_env, scratch):  # scratch: see conftest
        return lambda **options: SlurmExecutor(config={"scratch_dir": scratch, "poll_interval": 0.1,
                                                       "slurm_env": slurm_env, **options})

    @pytest.fixture
    def driver_env(self, slurm_env):
        return slurm_env

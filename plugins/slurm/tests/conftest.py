"""The test session's own one-node Slurm (slurmctld + slurmd + munged on localhost), started once.

It is installed (Debian's slurm-wlm and munge) and started if absent, and stopped at the end, by
PID, only if this session started it. Where it cannot be (not root, no apt-get), every test here is
skipped with what it needs, so the README's test command passes on a laptop; with
``CURATOR_EXEC_REQUIRE_SLURM=1`` (``.ci/run`` sets it) that is an error instead.
"""

from __future__ import annotations

import os
import sys
import tempfile

import pytest

sys.path.insert(0, os.path.dirname(__file__))
import slurm_cluster

REQUIRE = os.environ.get("CURATOR_EXEC_REQUIRE_SLURM") == "1"


@pytest.fixture(scope="session")
def cluster():
    problem = slurm_cluster.ensure_installed()
    if problem is None:
        state = tempfile.mkdtemp(prefix="curator-exec-slurm-")
        try:
            found = slurm_cluster.start(state)
        except Exception as exc:
            problem = f"a one-node Slurm could not be started: {exc}"
    if problem is not None:
        message = f"Slurm tests need a one-node Slurm (root and apt-get to install slurm-wlm and munge): {problem}"
        if REQUIRE:
            pytest.fail(message + " (CURATOR_EXEC_REQUIRE_SLURM=1: a skip is an error)")
        pytest.skip(message)
    yield found
    found.stop()


@pytest.fixture(scope="session")
def slurm_env(cluster) -> dict[str, str]:
    """What Slurm's commands need to reach the test cluster (SLURM_CONF)."""
    return dict(cluster.env)


@pytest.fixture
def scratch(tmp_path_factory) -> str:
    """A run directory root (apart from the test's tmp_path, which a test may use as a checkpoint); /tmp
    is 'shared storage' on a one-node cluster."""
    return str(tmp_path_factory.mktemp("scratch"))


@pytest.fixture
def make_slurm(slurm_env, scratch):
    from curator_exec_slurm import SlurmExecutor

    def make(**options):
        config = {"scratch_dir": scratch, "poll_interval": 0.1, "slurm_env": slurm_env, "show_progress": False,
                  **options}
        return SlurmExecutor(config=config)
    return make

"""The executor conformance suite: every mixin of :mod:`curator_exec_core.testing.kit` in one class.

See :mod:`curator_exec_core.testing`; to run part of the kit, see :mod:`curator_exec_core.testing.kit`.
"""

from __future__ import annotations

from curator_exec_core.testing.kit import (
    ConfigTests,
    DataPlaneTests,
    FailureTests,
    GangTests,
    LifecycleTests,
    OutputTests,
    ResumeTests,
    ShuffleTests,
    StatsTests,
)
from curator_exec_core.testing.kit.base import MakeExecutor, canonical, reference_run
from curator_exec_core.testing.kit.base import _Reference as _Reference

__all__ = ["ExecutorConformance", "MakeExecutor", "canonical", "reference_run"]


# pytest collects a class's tests base class first (reverse MRO), so the bases are listed last
# capability first: the kit then runs outputs, lifecycle, failures, shuffle, gang, resume, config,
# in the order it always has.
class ExecutorConformance(DataPlaneTests, StatsTests, ConfigTests, ResumeTests, GangTests, ShuffleTests, FailureTests,
                          LifecycleTests, OutputTests):
    """Behaviour every executor must show: the whole kit. Subclass it and provide ``make_executor``.

    ``make_executor(**options)`` must return a new executor built with those
    options (``ignore_failures``, ``max_retries``, ``show_progress``, ...).
    Class attributes tune sizes for slow engines (``n``, ``large_n``,
    ``resume_seconds``, ``resume_kill_window``); ``driver_env`` is a fixture.
    """

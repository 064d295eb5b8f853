"""The conformance kit, one mixin class per capability.

:class:`curator_exec_core.testing.ExecutorConformance` is the union of every mixin
below: subclass it and define a ``make_executor`` fixture, and your executor gets the
whole kit. To run part of it (an engine that has no gang stages yet, a quick CI job,
a third-party backend growing capability by capability), compose the mixins you want
instead; each one subclasses :class:`ConformanceBase`, so any combination works::

    import pytest
    from curator_exec_core import get_executor
    from curator_exec_core.testing.kit import FailureTests, LifecycleTests, OutputTests

    class TestMyExecutorCore(OutputTests, LifecycleTests, FailureTests):
        @pytest.fixture
        def make_executor(self):
            return lambda **options: get_executor("mine", **options)

(Name the composed class ``Test...`` so that pytest collects it; the mixins' own names
do not start with ``Test``, so importing them into a test module collects nothing.)

:class:`ConformanceBase` (``kit/base.py``): the fixtures and helpers.
    ``make_executor`` (must be overridden: ``(**options) -> executor``, a new executor
    built with those options), ``driver_env`` (the environment a second driver process
    needs to reach your compute, for :class:`ResumeTests`; default ``{}``), the size
    knobs ``n`` (60), ``large_n`` (10,000), ``resume_seconds`` and ``resume_kill_window``,
    and ``run_and_compare``: it runs a pipeline on your executor and on the in-process
    reference (:func:`reference_run`) and asserts the same outputs (:func:`canonical`),
    the same failed task ids and, per stage, the same ``tasks_in``/``tasks_out``/
    ``tasks_failed`` in ``result.metrics["stages"]`` (:func:`assert_same_stage_counts`:
    the counts a worker's copy of a stage makes must be sent back to the driver, to
    ``Run.of(stages).report``). Only fresh runs are compared that way; a resumed run counts only
    the work it did itself.

:class:`OutputTests` (``kit/outputs.py``)
    the reference outputs for identity, new tasks (parent ids kept), fan-out, filter,
    ``batch_size`` above one, many stages, empty input, everything filtered, an
    ``EmptyTask`` seed and ``large_n`` tasks; deterministic ids.
:class:`LifecycleTests` (``kit/lifecycle.py``)
    one ``setup``/``teardown`` per worker and one ``setup_on_node`` per node, also after
    a failure (counted in files: workers must share this machine's filesystem).
:class:`FailureTests` (``kit/failures.py``)
    a failure aborts naming the stage and task; ``ignore_failures=True`` reports every
    failed task; ``max_retries``; exhausted retries; the failure budget (``max_failed_tasks``)
    aborts naming the first errors; ``task_timeout`` stops a call that runs too long.
:class:`ShuffleTests` (``kit/shuffle.py``)
    shuffle stages: grouping in task id order, several keys or none, shuffles anywhere
    and twice, ids independent of the partition count, edge cases, lifecycle, failures.
:class:`GangTests` (``kit/gang.py``)
    gang stages: ranks start together, talk and share the input; a rank failure; a gang
    that cannot fit fails at plan time.
:class:`ResumeTests` (``kit/resume.py``)
    resumable runs: a finished run resumed without work, a killed driver (seeded random
    points) and a killed worker resumed to the reference answer, a resume after a finished
    shuffle, a torn journal, checkpoint errors. Uses ``driver_env``.
:class:`StatsTests` (``kit/stats.py``)
    statistics: counters recorded with ``self.record`` in ``process``, ``keys`` and ``reduce``, and
    every call's figures (tasks, wall and CPU seconds, per worker) reach ``result.metrics["stats"]``
    merged exactly; the ``"stats"`` event; ``stats.json`` with a checkpoint, merged on resume.
:class:`DataPlaneTests` (``kit/dataplane.py``)
    the data plane: a generator source gives the reference answer and is read no further ahead
    than a bounded window (``source_window`` for an executor that takes lists); ``return_outputs=False``
    never ships the last stage's outputs to the driver; ``Pipeline.stream`` yields the reference outputs
    with the result after them, and closing it early tears the run down; with a checkpoint, a
    generator source is still read lazily, checked as it is read (a changed, longer or shorter one
    refused, naming the change) and resumed.
:class:`ConfigTests` (``kit/config.py``)
    option typos are ``ConfigError``; an infeasible GPU request is a ``PlanError`` before
    any setup; the shape of ``capacity()``.
"""

from curator_exec_core.testing.kit.base import (
    COUNT_KEYS,
    ConformanceBase,
    MakeExecutor,
    assert_same_stage_counts,
    canonical,
    reference_run,
)
from curator_exec_core.testing.kit.config import ConfigTests
from curator_exec_core.testing.kit.dataplane import DataPlaneTests
from curator_exec_core.testing.kit.failures import FailureTests
from curator_exec_core.testing.kit.gang import GangTests
from curator_exec_core.testing.kit.lifecycle import LifecycleTests
from curator_exec_core.testing.kit.outputs import OutputTests
from curator_exec_core.testing.kit.resume import ResumeTests
from curator_exec_core.testing.kit.shuffle import ShuffleTests
from curator_exec_core.testing.kit.stats import StatsTests

#: every mixin, in the order the full kit runs them
MIXINS = (OutputTests, LifecycleTests, FailureTests, ShuffleTests, GangTests, ResumeTests, ConfigTests, StatsTests,
          DataPlaneTests)

__all__ = [
    "COUNT_KEYS",
    "MIXINS",
    "ConfigTests",
    "ConformanceBase",
    "DataPlaneTests",
    "FailureTests",
    "GangTests",
    "LifecycleTests",
    "MakeExecutor",
    "OutputTests",
    "ResumeTests",
    "ShuffleTests",
    "StatsTests",
    "assert_same_stage_counts",
    "canonical",
    "reference_run",
]

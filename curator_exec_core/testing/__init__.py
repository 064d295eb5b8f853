"""Testing support for executor plugins: the conformance suite and helpers.

Subclass :class:`ExecutorConformance` in your plugin's tests and provide a
``make_executor`` fixture returning ``(**options) -> BaseExecutor``::

    from curator_exec_core.testing import ExecutorConformance

    class TestMyExecutor(ExecutorConformance):
        @pytest.fixture
        def make_executor(self):
            return lambda **options: MyExecutor(config=options)

:class:`ExecutorConformance` is the union of one mixin class per capability (outputs,
lifecycle, failures, shuffle, gang, resume, config); to run only some of them, compose
the mixins of :mod:`curator_exec_core.testing.kit` instead (its docstring lists them).

Requires pytest. The suite assumes all workers share this machine's filesystem
(a local engine, or a ``ray.cluster_utils.Cluster`` of raylets on one host):
lifecycle calls are counted in files.
"""

from curator_exec_core.testing.conformance import ExecutorConformance, canonical, reference_run
from curator_exec_core.testing.stages import LifecycleLog

__all__ = ["ExecutorConformance", "LifecycleLog", "canonical", "reference_run"]

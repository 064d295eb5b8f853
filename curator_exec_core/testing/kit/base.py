"""The fixtures base of the conformance kit and the helpers its mixins share.

See :mod:`curator_exec_core.testing.kit`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pytest

from curator_exec_core.executor import BaseExecutor
from curator_exec_core.shuffle import task_order
from curator_exec_core.stages import ProcessingStage
from curator_exec_core.tasks import PipelineResult, Task

MakeExecutor = Callable[..., BaseExecutor]

#: the per-stage counts of ``result.metrics["stages"]`` that every executor must report
COUNT_KEYS = ("tasks_in", "tasks_out", "tasks_failed")


class _Reference(BaseExecutor):
    """The reference semantics: one worker per stage, in process, stage after stage."""

    name = "reference"
    concurrent_stages = False

    def execute(self, stages: Sequence[ProcessingStage[Any, Any]], initial_tasks: list[Task] | None = None,
                ) -> list[Task]:
        tasks = list(initial_tasks or [])
        for stage in stages:
            stage.setup(None)
            tasks = stage.process_batch(tasks)
            stage.teardown()
        return tasks


def reference_run(stages: Sequence[ProcessingStage[Any, Any]], tasks: Sequence[Task] | None,
                  **options: Any) -> PipelineResult:
    """What every executor must produce for ``stages`` on ``tasks`` (computed in process)."""
    return _Reference(show_progress=False, **options).run(list(stages), _fresh(tasks))


def _fresh(tasks: Sequence[Task] | None) -> list[Task] | None:
    return None if tasks is None else [Task(data=t.data, task_id=t.task_id) for t in tasks]


def canonical(tasks: Sequence[Task]) -> list[tuple[str, str]]:
    """Outputs as a sorted multiset of ``(task_id, repr(data))``."""
    return sorted((t.task_id, repr(t.data)) for t in tasks)


def _ints(n: int) -> list[Task]:
    return [Task(data=i) for i in range(n)]


def _groups(values: dict[str, int], key: Callable[[int], Any]) -> dict[Any, list[str]]:
    """Plain-Python grouping: key -> the task ids with that key, in task_id order."""
    out: dict[Any, list[str]] = {}
    for task_id in sorted(values, key=task_order):
        out.setdefault(key(values[task_id]), []).append(task_id)
    return out


def _counts(result: PipelineResult) -> dict[str, tuple[Any, ...]]:
    stages = result.metrics.get("stages")
    if not isinstance(stages, Mapping):
        return {}
    return {key: tuple(m.get(k) if isinstance(m, Mapping) else None for k in COUNT_KEYS) for key, m in stages.items()}


def _count_advice(executor: BaseExecutor | None) -> str:
    """How counts reach the driver."""
    call = "A worker's `stage.process_counted(tasks)` returns the outputs and that call's counts"
    add = "Run.of(stages).report(stage.index, counts)"
    return (
        "The counts must travel back from the workers to the driver: run() builds metrics['stages'] on the "
        "driver, and a copy of a stage in a worker (a thread's copy, a pickled copy in another process) "
        f"cannot add to them. {call} (tasks in, outputs, new failure records): send them back with the "
        f"results and call {add} on the driver, exactly once per call (a managed stage that runs in the "
        "driver process counts itself: do not add its counts again). Shuffle and gang stages that your "
        "engine runs (native_stage_kinds, run_barrier) report theirs the same way. "
        "See docs/writing-an-executor-plugin.md, 'Counts and progress'."
    )


def assert_same_stage_counts(got: PipelineResult, expected: PipelineResult,
                             executor: BaseExecutor | None = None) -> None:
    """``got.metrics["stages"]`` reports, for every stage, the ``tasks_in``, ``tasks_out`` and
    ``tasks_failed`` of ``expected`` (the reference run of the same pipeline on the same tasks).

    Only for a fresh, uninterrupted run: a resumed run counts just the work it did itself.
    """
    want, have = _counts(expected), _counts(got)
    keys = list(want)  # the core's stage_metrics_keys of the pipeline, in stage order
    index = {key: m.get("index", i) for i, (key, m) in enumerate(expected.metrics.get("stages", {}).items())}
    who = f"executor {executor.executor_name!r}" if executor is not None else "the executor"
    header = ", ".join(COUNT_KEYS)
    if sorted(have) != sorted(keys):
        raise AssertionError(
            f"{who}: result.metrics['stages'] has the stages {sorted(have)}, expected one entry per stage, "
            f"{keys} (curator_exec_core's stage_metrics_keys), each with {header}. BaseExecutor.run() builds "
            "it: do not override run() or replace result.metrics.")
    wrong = [key for key in keys if have[key] != want[key]]
    if not wrong:
        return
    lines = [f"  stage {key!r} (index {index[key]}): got ({', '.join(map(str, have[key]))}), "
             f"expected ({', '.join(map(str, want[key]))})" for key in wrong]
    if all(have[key] == (0, 0, 0) for key in wrong):
        why = "These stages reported nothing at all: their counts never reached the driver."
    elif all(have[key] == tuple(2 * v for v in want[key]) for key in wrong):
        why = ("These stages were counted twice: the same calls reached the driver's counts twice (for one, a "
               "managed stage that runs in the driver process counts itself, and the executor added it again).")
    else:
        why = "Some calls were not counted, or were counted more than once."
    raise AssertionError(
        f"{who}: per-stage task counts in result.metrics['stages'] ({header}) differ from the reference "
        "run's, although the outputs match:\n" + "\n".join(lines) + f"\n{why}\n" + _count_advice(executor))


class ConformanceBase:
    """The fixtures and helpers every mixin of the kit uses. Override ``make_executor``.

    ``make_executor(**options)`` must return a new executor built with those
    options (``ignore_failures``, ``max_retries``, ``show_progress``, ...).
    Class attributes tune sizes for slow engines.
    """

    #: tasks in the large-input test
    large_n: int = 10_000
    #: tasks in the ordinary tests
    n: int = 60
    #: seconds per task of the paced stage in the resume tests, and how long after the first journal
    #: record the driver is killed at most (seeded random)
    resume_seconds: float = 0.03
    resume_kill_window: float = 1.0

    @pytest.fixture
    def driver_env(self) -> dict[str, str]:
        """Environment a second driver process needs to reach this executor's compute (the Ray
        plugins give ``RAY_ADDRESS`` of the test session's cluster). Default: none."""
        return {}

    @pytest.fixture
    def make_executor(self) -> MakeExecutor:
        raise NotImplementedError(
            f"{type(self).__name__}: subclass ExecutorConformance (or some of the mixins of "
            "curator_exec_core.testing.kit) and define a `make_executor` fixture returning (**options) -> executor"
        )

    # -- helpers -------------------------------------------------------------
    def run_and_compare(self, make_executor: MakeExecutor, stages: list[ProcessingStage[Any, Any]],
                        tasks: list[Task] | None, **options: Any) -> PipelineResult:
        """Run ``stages`` on ``tasks`` with a new executor and check it against :func:`reference_run`:
        the same outputs (by :func:`canonical`), the same failed task ids and, per stage, the same
        ``tasks_in``/``tasks_out``/``tasks_failed`` in ``result.metrics["stages"]``."""
        expected = reference_run(stages, tasks, **options)
        executor = make_executor(show_progress=False, **options)
        got = executor.run(stages, _fresh(tasks))
        assert isinstance(got, list) and isinstance(got, PipelineResult)
        assert canonical(got) == canonical(expected)
        assert sorted(f.task_id for f in got.failed_tasks) == sorted(f.task_id for f in expected.failed_tasks)
        assert_same_stage_counts(got, expected, executor)
        return got

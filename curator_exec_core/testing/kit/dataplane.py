"""The data plane: a lazy source read no further ahead than a bounded window, outputs dropped where
they are made (``return_outputs=False``), and ``Pipeline.stream`` (outputs as they finish; closing it
early tears the run down).

See :mod:`curator_exec_core.testing.kit`.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path

from curator_exec_core.pipeline import Pipeline
from curator_exec_core.tasks import Task
from curator_exec_core.testing.kit.base import ConformanceBase, MakeExecutor, _ints, canonical, reference_run
from curator_exec_core.testing.stages import AddOne, FailOn, FanOut, LifecycleLog, Recorded, WrapForDriver


class _Counted:
    """A generator source that counts how many tasks were pulled from it."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.pulled = 0

    def __iter__(self) -> Iterator[Task]:
        for i in range(self.n):
            self.pulled += 1
            yield Task(data=i)


class DataPlaneTests(ConformanceBase):
    """``initial_tasks`` may be a generator, read lazily (bounded); ``return_outputs=False`` returns
    metrics and failure records and never ships the last stage's outputs to the driver;
    ``Pipeline.stream`` yields the reference outputs, holds the run back when not read, and tears the
    run down when closed early."""

    #: source tasks of the laziness test, and the window an executor that takes lists gets
    lazy_n: int = 2_000
    lazy_window: int = 50

    def test_a_generator_source_gives_the_reference_answer(self, make_executor: MakeExecutor) -> None:
        stages = [AddOne(), FanOut(2)]
        expected = reference_run(stages, _ints(self.n))
        got = make_executor(show_progress=False, source_window=7).run(stages, (Task(data=i) for i in range(self.n)))
        assert canonical(got) == canonical(expected)
        assert got.metrics["stages"] == expected.metrics["stages"]

    def test_return_outputs_false_keeps_outputs_off_the_driver(self, make_executor: MakeExecutor) -> None:
        stages = [FailOn((3, 8), "picky"), AddOne(), WrapForDriver(os.getpid())]
        got = make_executor(show_progress=False, ignore_failures=True).run(stages, _ints(self.n),
                                                                            return_outputs=False)
        assert list(got) == [], "return_outputs=False returns no output tasks"
        assert sorted(f.task_id for f in got.failed_tasks) == ["3", "8"]
        counts = got.metrics["stages"]["wrap_for_driver"]
        assert (counts["tasks_in"], counts["tasks_out"]) == (self.n - 2, self.n - 2)

    def test_stream_yields_the_reference_outputs_and_the_result(self, make_executor: MakeExecutor) -> None:
        stages = [FailOn((5,), "picky"), AddOne(), FanOut(2)]
        expected = reference_run(stages, _ints(self.n), ignore_failures=True)
        stream = Pipeline("streamed", stages).stream(make_executor(show_progress=False, ignore_failures=True),
                                                     (Task(data=i) for i in range(self.n)), buffer=16)
        got = list(stream)
        assert canonical(got) == canonical(expected)
        assert stream.result is not None and list(stream.result) == []
        assert [f.task_id for f in stream.result.failed_tasks] == ["5"]
        assert stream.result.metrics["stages"] == expected.metrics["stages"]

    def test_stream_reads_the_source_lazily_and_closing_it_tears_down(self, make_executor: MakeExecutor,
                                                                     tmp_path: Path) -> None:
        log = LifecycleLog(tmp_path)
        source = _Counted(self.lazy_n)
        executor = make_executor(show_progress=False, source_window=self.lazy_window)
        stream = Pipeline("lazy", [Recorded(str(tmp_path), "held"), AddOne()]).stream(executor, source, buffer=64)
        first = list(itertools.islice(stream, 5))
        assert len(first) == 5
        bound = 64 * 4 + 4 * self.lazy_window
        assert source.pulled <= bound, (
            f"{source.pulled} of {self.lazy_n} source tasks were read while the consumer held 5 outputs: a "
            f"generator source must be read as the run needs it (at most ~{bound} here), not materialised")
        stream.close()
        assert source.pulled < self.lazy_n, "closing the stream stopped the run"
        setups, teardowns = log.per_who("setup", "held"), log.per_who("teardown", "held")
        assert setups and setups == teardowns, f"every worker that ran setup was torn down: {setups} vs {teardowns}"
        # the executor runs the next pipeline as usual
        assert sorted(t.data for t in executor.run([AddOne()], _ints(3))) == [1, 2, 3]

"""The data plane: a lazy source read no further ahead than a bounded window, outputs dropped where
they are made (``return_outputs=False``), and ``Pipeline.stream`` (outputs as they finish; closing it
early tears the run down).

See :mod:`curator_exec_core.testing.kit`.
"""

from __future__ import annotations

import itertools
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from curator_exec_core.errors import CheckpointError
from curator_exec_core.pipeline import Pipeline
from curator_exec_core.tasks import Task
from curator_exec_core.testing.kit.base import ConformanceBase, MakeExecutor, _ints, canonical, reference_run
from curator_exec_core.testing.stages import (
    AddOne,
    FailOn,
    FanOut,
    HeldGroups,
    LifecycleLog,
    Opened,
    Recorded,
    WrapForDriver,
)


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

    def test_a_checkpointed_generator_source_is_read_lazily_checked_as_read_and_resumed(
            self, make_executor: MakeExecutor, tmp_path: Path) -> None:
        """With a checkpoint too, a generator source is read as the run needs it (its identity is
        checked task by task as it is read, not by reading it whole first); a rerun on the same
        generator resumes; a changed, longer or shorter generator is refused, naming the change."""
        stages = [AddOne(), FanOut(2)]
        ck = tmp_path / "ck"
        source = _Counted(self.lazy_n)
        executor = make_executor(show_progress=False, source_window=self.lazy_window)
        stream = Pipeline("lazy", stages).stream(executor, source, buffer=64, checkpoint_path=ck)
        assert len(list(itertools.islice(stream, 5))) == 5
        bound = 64 * 4 + 4 * self.lazy_window
        assert source.pulled <= bound, (
            f"{source.pulled} of {self.lazy_n} source tasks were read while the consumer held 5 outputs of a "
            f"checkpointed run: the source must be read as the run needs it (at most ~{bound} here)")
        stream.close()
        pulled = source.pulled
        window = max(self.lazy_window, self.lazy_n // 4)
        executor = make_executor(show_progress=False, source_window=window)

        def ints(n: int, changed: int | None = None) -> Iterator[Task]:
            return (Task(data=-1 if i == changed else i) for i in range(n))

        done = executor.run(stages, ints(self.lazy_n), checkpoint_path=ck)
        assert canonical(done) == canonical(reference_run(stages, _ints(self.lazy_n)))
        assert done.metrics["checkpoint"]["source_tasks"] == self.lazy_n
        assert done.metrics["checkpoint"]["resumed_tasks"] <= pulled
        again = executor.run(stages, ints(self.lazy_n), checkpoint_path=ck)
        assert again.metrics["checkpoint"]["resumed_tasks"] == self.lazy_n
        assert canonical(again) == canonical(done)
        changed = self.lazy_n - 3
        with pytest.raises(CheckpointError, match=rf"content of initial task '{changed}' \(position {changed}\) "
                                                  r"changed.*overwrite=True"):
            executor.run(stages, ints(self.lazy_n, changed), checkpoint_path=ck)
        with pytest.raises(CheckpointError, match=rf"more initial tasks than the {self.lazy_n} it recorded"):
            executor.run(stages, ints(self.lazy_n + 1), checkpoint_path=ck)
        with pytest.raises(CheckpointError, match=rf"end after {self.lazy_n - 1}, but it recorded {self.lazy_n}"):
            executor.run(stages, ints(self.lazy_n - 1), checkpoint_path=ck)
        last = executor.run(stages, ints(self.lazy_n), checkpoint_path=ck)  # the refusals changed nothing
        assert last.metrics["checkpoint"]["resumed_tasks"] == self.lazy_n and canonical(last) == canonical(done)

    def test_a_checkpointed_barriers_outputs_are_saved_and_read_back_by_the_workers(
            self, make_executor: MakeExecutor, tmp_path: Path) -> None:
        """An executor that declares ``loads_stored_blocks`` keeps a barrier's outputs off the driver in
        a checkpointed run: its workers write them into the checkpoint (``Run.barrier_store``) and load
        them for the part after the barrier (``StoredBlock.load``), in the run and in a resume after the
        barrier. The shuffles' outputs here cannot be loaded by the driver process; the second takes the
        first's outputs as they were saved."""
        executor = make_executor(show_progress=False)
        if not executor.loads_stored_blocks:
            pytest.skip(f"executor {executor.executor_name!r} does not declare loads_stored_blocks: its driver "
                        "saves and reads back a checkpointed barrier's outputs")
        stages = [AddOne(), HeldGroups(os.getpid()), HeldGroups(os.getpid(), 2, "regrouped"), Opened()]
        expected = reference_run(stages, _ints(self.n))
        ck = tmp_path / "ck"
        got = executor.run(stages, _ints(self.n), checkpoint_path=ck)
        assert canonical(got) == canonical(expected)
        assert got.metrics["stages"] == expected.metrics["stages"]
        for part in (1, 2):
            files = os.listdir(ck / f"part-{part}.blocks")
            assert files and all(name.endswith(".blocks") for name in files), files  # whole files, no temporary
        for path in ("part-2.outputs", "part-2.blocks", "part-3"):  # resume after the first shuffle
            shutil.rmtree(ck / path) if (ck / path).is_dir() else (ck / path).unlink()
        again = make_executor(show_progress=False).run(stages, _ints(self.n), checkpoint_path=ck)
        assert again.metrics["checkpoint"]["resumed_tasks"] == self.n
        assert canonical(again) == canonical(expected)

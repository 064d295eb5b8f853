"""Statistics (Summary, the perf envelope, stats.json, --stats-log), the failure budget and
``task_timeout`` in the core, with the embedded backend. (Every backend runs the kit's
``StatsTests`` and ``FailureTests`` for the same contracts.)"""

from __future__ import annotations

import json
import logging
import pickle
import random
import statistics
import textwrap
import time

import pytest

from curator_exec_core import Pipeline, ProcessingStage, Task, get_executor
from curator_exec_core.cli import main
from curator_exec_core.errors import ConfigError, FailureBudgetExceeded, StageFailedError
from curator_exec_core.runner import ManagedStage
from curator_exec_core.shuffle import ShuffleStage
from curator_exec_core.stats import CallPerf, Counts, RunStats, StageStats, Summary, add_counts
from curator_exec_core.testing.stages import AddOne, FailOn, Measured


def ints(n: int) -> list[Task]:
    return [Task(data=i) for i in range(n)]


# -- Summary and the envelope ------------------------------------------------------------------------
def test_summaries_merge_exactly_into_the_summary_of_all_values():
    rng = random.Random(7)
    values = [rng.uniform(-5, 50) for _ in range(1000)]
    parts = [values[:1], values[1:400], values[400:401], values[401:]]
    merged = Summary()
    for part in parts:
        s = Summary()
        for v in part:
            s.add(v)
        merged.merge(s)
    assert merged.n == 1000 and merged.total == pytest.approx(sum(values))
    assert (merged.lo, merged.hi) == (min(values), max(values))
    assert merged.mean == pytest.approx(statistics.fmean(values))
    assert merged.std == pytest.approx(statistics.pstdev(values))
    back = Summary.from_dict(merged.as_dict())
    assert back == merged and pickle.loads(pickle.dumps(merged)) == merged
    assert Summary().as_dict() == {"count": 0, "sum": 0.0, "mean": 0.0, "min": 0.0, "max": 0.0, "std": 0.0}


def test_counts_carry_figures_and_merging_them_changes_neither_side():
    a = Counts(2, 2, 0, CallPerf("w1", 2, 2, 0, 0.5, 0.25, {"tokens": Summary.of(3.0)}))
    b = Counts(1, 0, 1, CallPerf("w2", 1, 0, 1, 1.5, 1.0, None, ("7: ValueError('x')",)))
    chunk: dict[int, Counts] = {}
    add_counts(chunk, 0, a)
    add_counts(chunk, 0, b)
    total = chunk[0]
    assert total[:3] == (3, 2, 1) and isinstance(total.perf, StageStats)
    assert sorted(total.perf.workers) == ["w1", "w2"] and total.perf.errors == ["7: ValueError('x')"]
    assert isinstance(a.perf, CallPerf) and a.perf.counters["tokens"].n == 1  # untouched
    stats = RunStats(["s"])
    stats.add(0, total)
    stats.add(0, (1, 1, 0))  # a plain triple (a third party's engine) is still counted
    figures = stats.perf_metrics()["s"]
    assert stats.stage(0)[:3] == (4, 3, 1)
    assert figures["workers"] == 2 and figures["tasks_in"] == 3 and figures["process_s"]["sum"] == 2.0
    assert figures["counters"]["tokens"]["sum"] == 3.0 and stats.first_errors() == ["s: 7: ValueError('x')"]
    restored = StageStats.from_dict(figures)
    assert restored.merged().as_dict() == StageStats().fold(total.perf).merged().as_dict()


def test_a_worker_copy_sends_its_figures_with_its_counts():
    stage = ManagedStage(Measured(), index=0)
    worker = pickle.loads(pickle.dumps(stage))  # what a worker process gets
    out, counts = worker.process_counted(ints(4))
    assert len(out) == 4 and counts[:3] == (4, 4, 0)
    perf = counts.perf
    assert isinstance(perf, CallPerf) and perf.wall >= 0 and perf.cpu >= 0
    assert perf.counters["value"].total == 6 and perf.counters["seen"].n == 4
    _, again = worker.process_counted(ints(1))
    assert again.perf.counters["seen"].n == 1, "recorded values are sent once, with the call that recorded them"


# -- where the figures go ------------------------------------------------------------------------------
def test_stats_json_and_the_stats_log_of_the_command(tmp_path, monkeypatch, capsys):
    (tmp_path / "stats_pipe.py").write_text(textwrap.dedent("""
        import time
        from curator_exec_core import Pipeline, Task
        from curator_exec_core import ProcessingStage
        from curator_exec_core.testing.stages import Measured

        class Slow(ProcessingStage):
            name = "slow"
            def process(self, task):
                time.sleep(0.01)
                return task

        def build():
            return Pipeline("measured", [Measured(), Slow()]), [Task(data=i) for i in range(40)]
    """))
    monkeypatch.chdir(tmp_path)
    log = tmp_path / "stats.jsonl"
    code = main(["run", "--pipeline", "stats_pipe:build", "--checkpoint", str(tmp_path / "ck"), "--stats-log",
                 str(log), "--set", "progress_interval=0.1", "--set", "show_progress=false", "--json"])
    assert code == 0
    capsys.readouterr()
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(lines) >= 2, "a line every progress_interval while the run lasts (0.4 s here), and one at the end"
    assert all(line["event"] == "stats" and line["executor"] == "local" for line in lines)
    assert not lines[0]["finished"] and lines[-1]["finished"] and lines[-1]["error"] is None
    assert [line["stages"]["slow"]["tasks_in"] for line in lines] == sorted(line["stages"]["slow"]["tasks_in"]
                                                                          for line in lines)
    assert lines[-1]["stats"]["measured"]["counters"]["value"]["sum"] == sum(range(40))
    on_disk = json.loads((tmp_path / "ck" / "stats.json").read_text())
    assert on_disk["stats"] == lines[-1]["stats"] and on_disk["finished"]


def test_a_failed_run_leaves_its_figures_in_stats_json(tmp_path):
    with pytest.raises(StageFailedError):
        get_executor("local", show_progress=False).run([Measured(), FailOn((30,), "picky")], ints(40),
                                                       checkpoint_path=tmp_path / "ck")
    on_disk = json.loads((tmp_path / "ck" / "stats.json").read_text())
    assert on_disk["finished"] and "StageFailedError" in on_disk["error"]
    assert on_disk["stats"]["measured"]["counters"]["seen"]["sum"] >= 1


# -- the failure budget --------------------------------------------------------------------------------
class Counting(ProcessingStage):
    """Fails on every task; counts its calls in a class attribute (one process)."""

    name = "always_fails"
    calls = 0

    def process(self, task: Task) -> Task:
        type(self).calls += 1
        raise ValueError(f"nope {task.task_id}")


def test_the_budget_stops_the_run_early():
    Counting.calls = 0
    with pytest.raises(FailureBudgetExceeded) as info:
        get_executor("local", show_progress=False, ignore_failures=True, max_failed_tasks=0.01).run(
            [Counting()], ints(2000))
    err = info.value
    assert "max_failed_tasks=0.01 (20 of 2000 source tasks)" in str(err) and err.failed == 21
    assert Counting.calls < 2000, "the run stopped once the budget was spent, not at the end"
    assert err.first_errors[0] == "always_fails: 0: ValueError('nope 0')" and len(err.first_errors) == 5


def test_the_budget_needs_ignore_failures_and_a_sane_value():
    with pytest.raises(ConfigError, match="only applies with ignore_failures=True"):
        get_executor("local", max_failed_tasks=3)
    with pytest.raises(ConfigError, match="fraction .* below 1"):
        get_executor("local", ignore_failures=True, max_failed_tasks=1.5)
    with pytest.raises(ConfigError, match="max_failed_tasks"):
        get_executor("local", ignore_failures=True, max_failed_tasks=-1)


# -- task_timeout ----------------------------------------------------------------------------------
class SlowGroups(ShuffleStage):
    name = "slow_groups"

    def keys(self, task: Task) -> list[int]:
        if task.data == 2:
            while True:
                time.sleep(0.02)
        return [task.data % 3]

    def reduce(self, key, tasks):
        if key == 1:
            while True:
                time.sleep(0.02)
        return Task(data=len(tasks))


def test_task_timeout_covers_keys_and_reduce():
    got = get_executor("local", show_progress=False, ignore_failures=True, task_timeout=0.3).run(
        [SlowGroups()], ints(9))
    errors = sorted(f.error for f in got.failed_tasks)
    assert len(errors) == 2
    assert "keys(): TaskTimeoutError" in errors[0] and "task_timeout=0.3s" in errors[0]
    assert "reduce(key=1)" in errors[1] and "TaskTimeoutError" in errors[1]


class SleepsInC(ProcessingStage):
    """A call stuck outside Python (time.sleep in one piece cannot receive the raise)."""

    name = "sleeps_in_c"

    def process(self, task: Task) -> Task:
        if task.data == 1:
            time.sleep(1.2)
        return task


def test_local_counts_a_call_that_returns_late_as_timed_out(caplog, monkeypatch):
    import curator_exec_core.runner.timeout as timeout

    monkeypatch.setattr(timeout, "KILL_GRACE", 0.3)
    with caplog.at_level(logging.WARNING, logger="curator_exec"):
        got = get_executor("local", show_progress=False, ignore_failures=True, task_timeout=0.2).run(
            [SleepsInC()], ints(3))
    [failed] = got.failed_tasks
    assert failed.task_id == "1" and "TaskTimeoutError" in failed.error and "task_timeout=0.2s" in failed.error
    assert sorted(t.data for t in got) == [0, 2]
    assert any("cannot be killed in the driver process" in r.getMessage() for r in caplog.records)


def test_a_retry_after_a_timeout_succeeds(tmp_path):
    class OnceSlow(ProcessingStage):
        name = "once_slow"

        def process(self, task: Task) -> Task:
            marker = tmp_path / f"seen-{task.task_id}"
            if task.data == 4 and not marker.exists():
                marker.write_text("x")
                while True:
                    time.sleep(0.02)
            return task

    got = Pipeline("p", [OnceSlow(), AddOne()]).run(
        get_executor("local", show_progress=False, task_timeout=0.3, max_retries=1), ints(6))
    assert sorted(t.data for t in got) == [1, 2, 3, 4, 5, 6] and not got.failed_tasks

"""The built-in tqdm observer draws one bar per stage from progress events, for any backend."""

from __future__ import annotations

import io

import pytest
import tqdm.auto

from curator_exec_core import Pipeline, Task, get_executor
from curator_exec_core.testing.stages import AddOne, FanOut

made: list = []


class RecordingBar(tqdm.auto.tqdm):
    """A real tqdm bar forced on (tests have no terminal) writing to a buffer."""

    def __init__(self, *args, **kwargs):
        kwargs.update(disable=False, file=io.StringIO())
        super().__init__(*args, **kwargs)
        self.kwargs = kwargs
        made.append(self)


@pytest.fixture
def bars(monkeypatch):
    made.clear()
    monkeypatch.setattr(tqdm.auto, "tqdm", RecordingBar)
    return made


def test_one_bar_per_stage_with_final_counts(bars):
    ex = get_executor("local", show_progress=True, progress_interval=0.5)
    Pipeline("p", [AddOne(), FanOut(2)]).run(ex, [Task(data=i) for i in range(40)])
    assert [b.desc for b in bars] == ["0:add_one", "1:fan_out"]
    assert [b.n for b in bars] == [40, 40]
    assert bars[0].total == 40 and bars[1].total is None
    assert "out=80" in bars[1].kwargs["file"].getvalue()
    assert all(b.kwargs["mininterval"] == 0.5 for b in bars)
    assert all(b.disable for b in bars)  # closed at run end


def test_show_progress_false_draws_nothing(bars):
    Pipeline("p", [AddOne()]).run(get_executor("local", show_progress=False), [Task(data=1)])
    assert bars == []

"""Stages used by this plugin's tests. Pickled *by value* to the workers (see conftest), since
the workers cannot import the tests folder."""

from __future__ import annotations

import os
import time
from typing import Any

from curator_exec_core import ProcessingStage, Resources, Task
from curator_exec_core.testing.stages import Recorded, append_line


class Stamp(ProcessingStage):
    """Records when it processed each task (wall clock, in a file), sleeping a little per task."""

    resources = Resources(cpus=0.5)

    def __init__(self, folder: str, name: str, sleep: float = 0.0) -> None:
        self.folder = folder
        self.name = name
        self.sleep = sleep

    def process(self, task: Task) -> Task:
        if self.sleep:
            time.sleep(self.sleep)
        append_line(os.path.join(self.folder, f"{self.name}.times"), repr(time.time()))
        return task


def stamps(folder: Any, name: str) -> list[float]:
    with open(os.path.join(str(folder), f"{name}.times")) as f:
        return [float(line) for line in f if line.strip()]


class Sized(Recorded):
    def __init__(self, folder: str, name: str, cpus: float, xenna: dict | None = None,
                 workers: int | None = None) -> None:
        super().__init__(folder, name, resources=Resources(cpus=cpus))
        self.backend_options = {"xenna": xenna} if xenna else {}
        self._workers = workers

    def num_workers(self) -> int | None:
        return self._workers




class Placed(Recorded):
    """Records the node of every worker's setup (``setup_node`` entries) besides the usual lifecycle."""

    def setup(self, worker_metadata: Any = None) -> None:
        super().setup(worker_metadata)
        node = getattr(worker_metadata, "node_id", "") or "?"
        self._log().record("setup_node", self.name, node)

    def num_workers(self) -> int | None:
        return getattr(self, "workers", None)

    def process(self, task: Task) -> Task:
        time.sleep(getattr(self, "sleep", 0.0))
        return super().process(task)


class SleepsInC(ProcessingStage):
    """On ``value``: one long ``time.sleep`` (C code: the watchdog's raise cannot reach it)."""

    name = "sleeps_in_c"

    def __init__(self, value: int = 3) -> None:
        self.value = value

    def process(self, task: Task) -> Task:
        if task.data == self.value:
            time.sleep(3600)
        return task

"""Stages for the ray_data tests (a module of their own, so Ray workers import them by name)."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

from curator_exec_core import ProcessingStage, Resources, Task
from curator_exec_core.testing.stages import append_line


class WhoAmI(ProcessingStage):
    """1:1; records which process (and Ray node and GPU ids) handled each task."""

    resources = Resources(cpus=0.5)

    def __init__(self, folder: str, name: str = "who", workers: int | None = None, sleep: float = 0.0,
                 resources: Resources | None = None) -> None:
        self.folder = folder
        self.name = name
        self.workers = workers
        self.sleep = sleep
        if resources is not None:
            self.resources = resources

    def num_workers(self) -> int | None:
        return self.workers

    def setup(self, worker_metadata: Any = None) -> None:
        import ray

        ctx = ray.get_runtime_context()
        self._me = f"{os.getpid()}\t{ctx.get_node_id()}\t{os.environ.get('CUDA_VISIBLE_DEVICES', '')}"
        append_line(os.path.join(self.folder, f"{self.name}.setup"), f"{self._me}\t{worker_metadata.node_id}")

    def process(self, task: Task) -> Task:
        if self.sleep:
            time.sleep(self.sleep)
        append_line(os.path.join(self.folder, f"{self.name}.tasks"), f"{task.task_id}\t{self._me}")
        return Task(data=task.data)


def read_rows(folder: str, name: str, kind: str) -> list[list[str]]:
    path = os.path.join(folder, f"{name}.{kind}")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [line.rstrip("\n").split("\t") for line in f if line.strip()]


class FanOutOne(ProcessingStage):
    """One task in, ``k`` tasks out."""

    resources = Resources(cpus=0.5)

    def __init__(self, k: int) -> None:
        self.k = k
        self.name = "fan_out_one"

    def num_workers(self) -> int | None:
        return 1

    def process(self, task: Task) -> list[Task]:
        return [Task(data=i) for i in range(self.k)]


class DieOnce(ProcessingStage):
    """Kills its own worker process (SIGKILL) the first time it sees ``value`` (marker file)."""

    name = "die_once"
    resources = Resources(cpus=0.5)

    def __init__(self, folder: str, value: int) -> None:
        self.folder = folder
        self.value = value

    def process(self, task: Task) -> Task:
        if task.data == self.value:
            marker = os.path.join(self.folder, "died")
            if not os.path.exists(marker):
                append_line(marker, str(os.getpid()))
                os.kill(os.getpid(), signal.SIGKILL)
        return Task(data=task.data * 2)


class SlowUneven(ProcessingStage):
    """1:1, sleeps longer on small data (so unordered execution would reorder outputs)."""

    resources = Resources(cpus=0.5)

    def __init__(self, workers: int = 2) -> None:
        self.name = "slow_uneven"
        self.workers = workers

    def num_workers(self) -> int | None:
        return self.workers

    def process(self, task: Task) -> Task:
        time.sleep(0.02 if task.data % 10 == 0 else 0.0)
        return Task(data=task.data)


class BadSetup(ProcessingStage):
    name = "bad_setup"
    resources = Resources(cpus=0.5)

    def setup(self, worker_metadata: Any = None) -> None:
        raise RuntimeError("model weights not found")

    def process(self, task: Task) -> Task:
        return task


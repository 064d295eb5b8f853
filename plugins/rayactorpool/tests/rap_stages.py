"""Stages for the ray_actor_pool tests. Events are appended to files, so they can be read across processes."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from curator_exec_core import ProcessingStage, Resources, ShuffleStage, Task


def append(path: str | Path, record: dict[str, Any]) -> None:
    fd = os.open(str(path), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(record) + "\n").encode())
    finally:
        os.close(fd)


def read(path: str | Path) -> list[dict[str, Any]]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


class Logged(ProcessingStage):
    """Passes tasks on (data + 1), sleeping ``seconds`` per task; logs setup and every task to ``folder``."""

    def __init__(self, folder: str, name: str, seconds: float = 0.0, cpus: float = 0.5, gpus: float = 0.0,
                 gpu_memory_gb: float = 0.0, batch_size: int = 1) -> None:
        self.folder = str(folder)
        self.name = name
        self.seconds = seconds
        self.batch_size = batch_size
        if gpu_memory_gb:
            self.resources = Resources(cpus=cpus, gpu_memory_gb=gpu_memory_gb)
        else:
            self.resources = Resources(cpus=cpus, gpus=gpus)

    @property
    def log(self) -> str:
        return os.path.join(self.folder, f"{self.name}.jsonl")

    def setup(self, worker_metadata: Any = None) -> None:
        append(self.log, {"event": "setup", "pid": os.getpid(), "node": getattr(worker_metadata, "node_id", ""),
                          "worker": getattr(worker_metadata, "worker_id", ""),
                          "cuda": os.environ.get("CUDA_VISIBLE_DEVICES")})

    def process(self, task: Task) -> Task:
        if self.seconds:
            time.sleep(self.seconds)
        append(self.log, {"event": "task", "pid": os.getpid(), "data": task.data, "t": time.time()})
        return Task(data=task.data + 1)

    def teardown(self) -> None:
        append(self.log, {"event": "teardown", "pid": os.getpid()})


class EnvReader(ProcessingStage):
    """Replaces the data with the value of an environment variable in the worker."""

    name = "env_reader"
    resources = Resources(cpus=0.5)

    def __init__(self, var: str) -> None:
        self.var = var

    def process(self, task: Task) -> Task:
        return Task(data=os.environ.get(self.var))


class Big(ProcessingStage):
    """Attaches ``nbytes`` to each task (to check the driver never holds intermediates)."""

    name = "big"
    resources = Resources(cpus=0.5)

    def __init__(self, nbytes: int) -> None:
        self.nbytes = nbytes

    def process(self, task: Task) -> Task:
        return Task(data={"i": task.data, "blob": bytes([task.data % 251 + 1]) * self.nbytes})


class Small(ProcessingStage):
    name = "small"
    resources = Resources(cpus=0.5)

    def process(self, task: Task) -> Task:
        return Task(data=task.data["i"], metadata={"bytes": len(task.data["blob"])})


class SetupFails(ProcessingStage):
    name = "setup_fails"
    resources = Resources(cpus=0.5)

    def setup(self, worker_metadata: Any = None) -> None:
        raise RuntimeError("no model here")

    def process(self, task: Task) -> Task:
        return task



class DieOnceInReduce(ShuffleStage):
    """Groups by ``data % 4``; the first reduce of key 2 kills its own worker process (SIGKILL)."""

    resources = Resources(cpus=0.5)

    def __init__(self, folder: str, name: str = "die_once") -> None:
        self.folder = str(folder)
        self.name = name
        self.num_partitions = 4

    def setup(self, worker_metadata: Any = None) -> None:
        append(Path(self.folder) / f"{self.name}.jsonl", {"event": "setup", "pid": os.getpid()})

    def keys(self, task: Task) -> list[int]:
        return [task.data % 4]

    def reduce(self, key: Any, tasks: list[Task]) -> Task:
        marker = Path(self.folder) / f"{self.name}.died"
        if key == 2 and not marker.exists():
            marker.write_text(str(os.getpid()))
            import signal

            os.kill(os.getpid(), signal.SIGKILL)
        return Task(data={"key": key, "ids": [t.task_id for t in tasks]})


class SleepsInC(ProcessingStage):
    """On ``value``: one long ``time.sleep`` (C code: a raise from the watchdog cannot reach it).
    With ``setup`` (an actor, not a pooled task); records the pid of each call in ``folder``."""

    name = "sleeps_in_c"

    def __init__(self, folder: str, value: int = 3) -> None:
        self.folder = folder
        self.value = value

    def setup(self, worker_metadata: Any = None) -> None:
        pass

    def process(self, task: Task) -> Task:
        import time

        append(Path(self.folder) / "calls.jsonl", {"task": task.task_id, "pid": os.getpid()})
        if task.data == self.value:
            time.sleep(3600)
        return task

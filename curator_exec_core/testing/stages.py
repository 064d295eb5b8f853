"""Stages used by the conformance suite. Module-level classes, so engines can pickle them."""

from __future__ import annotations

import contextlib
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

from curator_exec_core.gang import GangStage
from curator_exec_core.shuffle import ShuffleStage
from curator_exec_core.stages import NodeInfo, ProcessingStage, Resources, WorkerMetadata
from curator_exec_core.tasks import Task


def append_line(path: str, line: str) -> None:
    """Append one line atomically (O_APPEND), so workers in several processes can share a file."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


class LifecycleLog:
    """Lifecycle calls recorded in one file, across processes on this machine."""

    def __init__(self, folder: str | Path) -> None:
        self.path = str(Path(folder) / "lifecycle.log")

    def record(self, event: str, stage: str, who: str) -> None:
        append_line(self.path, f"{event}\t{stage}\t{who}")

    def entries(self) -> list[tuple[str, str, str]]:
        if not os.path.exists(self.path):
            return []
        with open(self.path) as f:
            return [tuple(line.rstrip("\n").split("\t")) for line in f if line.strip()]  # type: ignore[misc]

    def count(self, event: str, stage: str) -> int:
        return sum(1 for e, s, _ in self.entries() if e == event and s == stage)

    def per_who(self, event: str, stage: str) -> Counter:
        return Counter(w for e, s, w in self.entries() if e == event and s == stage)


class AddOne(ProcessingStage):
    """A new task with ``data + 1``."""

    def __init__(self, name: str = "add_one", batch_size: int = 1, cpus: float = 0.5) -> None:
        self.name = name
        self.batch_size = batch_size
        self.resources = Resources(cpus=cpus)

    def process(self, task: Task) -> Task:
        return Task(data=task.data + 1)


class Identity(ProcessingStage):
    name = "identity"
    resources = Resources(cpus=0.5)

    def process(self, task: Task) -> Task:
        return task


class FanOut(ProcessingStage):
    """``k`` children per task: data * 10 + i."""

    resources = Resources(cpus=0.5)

    def __init__(self, k: int = 3, name: str = "fan_out") -> None:
        self.k = k
        self.name = name

    def process(self, task: Task) -> list[Task]:
        return [Task(data=task.data * 10 + i) for i in range(self.k)]


class KeepEven(ProcessingStage):
    """Filter: drops odd data."""

    name = "keep_even"
    resources = Resources(cpus=0.5)

    def process(self, task: Task) -> Task | None:
        return task if task.data % 2 == 0 else None


class DropAll(ProcessingStage):
    name = "drop_all"
    resources = Resources(cpus=0.5)

    def process(self, task: Task) -> None:
        return None


class Generate(ProcessingStage):
    """From an EmptyTask, generate ``n`` tasks 0..n-1."""

    name = "generate"
    resources = Resources(cpus=0.5)

    def __init__(self, n: int) -> None:
        self.n = n

    def process(self, task: Task) -> list[Task]:
        return [Task(data=i) for i in range(self.n)]


class SquareBatch(ProcessingStage):
    """A ``process_batch`` stage (1:1) that checks it never sees more than ``batch_size`` tasks."""

    resources = Resources(cpus=0.5)

    def __init__(self, batch_size: int = 7, name: str = "square_batch") -> None:
        self.batch_size = batch_size
        self.name = name

    def process_batch(self, tasks: list[Task]) -> list[Task]:
        if not 1 <= len(tasks) <= self.batch_size:
            raise AssertionError(f"got a batch of {len(tasks)} with batch_size={self.batch_size}")
        return [Task(data=t.data * t.data, metadata={"batch": len(tasks)}) for t in tasks]


class FailOn(ProcessingStage):
    """Raises ``ValueError`` on the given data values."""

    resources = Resources(cpus=0.5)

    def __init__(self, values: tuple[int, ...], name: str = "fail_on") -> None:
        self.values = set(values)
        self.name = name

    def process(self, task: Task) -> Task:
        if task.data in self.values:
            raise ValueError(f"cannot take {task.data}")
        return task


def _refuse_in(pid: int, value: Any) -> Any:
    if os.getpid() == pid:
        raise RuntimeError("this data was shipped to the driver process, which must never hold it")
    return value


class DriverRefuses:
    """Data that cannot be unpickled in the process that made it (the driver): proves it never comes back."""

    def __init__(self, value: Any, driver_pid: int) -> None:
        self.value = value
        self.driver_pid = driver_pid

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_refusing, (self.driver_pid, self.value))


def _rebuild_refusing(pid: int, value: Any) -> DriverRefuses:
    return DriverRefuses(_refuse_in(pid, value), pid)


class WrapForDriver(ProcessingStage):
    """Wraps each task's data in :class:`DriverRefuses` (data the driver ``driver_pid`` cannot load)."""

    name = "wrap_for_driver"
    resources = Resources(cpus=0.5)

    def __init__(self, driver_pid: int) -> None:
        self.driver_pid = driver_pid

    def process(self, task: Task) -> Task:
        return Task(data=DriverRefuses(task.data, self.driver_pid))


class Measured(ProcessingStage):
    """Records the counters ``value`` (the task's data) and ``seen`` (1) for every task; passes it on."""

    name = "measured"
    resources = Resources(cpus=0.5)

    def process(self, task: Task) -> Task:
        self.record("value", task.data)
        self.record("seen")
        return task


class MeasuredGroups(ShuffleStage):
    """Groups by ``data % modulo``; records ``keyed`` in ``keys`` and ``group_size`` in ``reduce``."""

    name = "measured_groups"
    resources = Resources(cpus=0.5)

    def __init__(self, modulo: int = 5) -> None:
        self.modulo = modulo

    def keys(self, task: Task) -> list[int]:
        self.record("keyed")
        return [task.data % self.modulo]

    def reduce(self, key: Any, tasks: list[Task]) -> Task:
        self.record("group_size", len(tasks))
        return Task(data=len(tasks))


class Stuck(ProcessingStage):
    """Never returns on the given data values (a Python loop of short sleeps, so that a time limit can
    stop it); passes other tasks on."""

    name = "stuck"
    resources = Resources(cpus=0.5)

    def __init__(self, values: tuple[int, ...], task_timeout: float | None = None) -> None:
        self.values = set(values)
        self.task_timeout = task_timeout

    def process(self, task: Task) -> Task:
        if task.data in self.values:
            while True:
                time.sleep(0.02)
        return task


class Flaky(ProcessingStage):
    """Fails the first ``failures`` attempts on every task (attempts counted in files)."""

    name = "flaky"
    resources = Resources(cpus=0.5)

    def __init__(self, folder: str, failures: int = 1) -> None:
        self.folder = folder
        self.failures = failures

    def process(self, task: Task) -> Task:
        marker = os.path.join(self.folder, f"flaky-{task.task_id}")
        append_line(marker, "x")
        with open(marker) as f:
            attempts = sum(1 for _ in f)
        if attempts <= self.failures:
            raise RuntimeError(f"flaky failure {attempts} on {task.task_id}")
        return Task(data=task.data)


class Recorded(ProcessingStage):
    """Records every lifecycle call in a :class:`LifecycleLog`; optionally fails on values."""

    resources = Resources(cpus=0.5)

    def __init__(self, folder: str, name: str = "recorded", fail_on: tuple[int, ...] = (),
                 resources: Resources | None = None) -> None:
        self.folder = str(folder)
        self.name = name
        self.fail_on = set(fail_on)
        if resources is not None:
            self.resources = resources
        self._who = ""

    def _log(self) -> LifecycleLog:
        return LifecycleLog(self.folder)

    def setup_on_node(self, node_info: NodeInfo | None = None, worker_metadata: WorkerMetadata | None = None) -> None:
        node = node_info.node_id if node_info is not None else "?"
        self._log().record("setup_on_node", self.name, node)

    def setup(self, worker_metadata: Any = None) -> None:
        self._who = f"{os.getpid()}:{id(self):x}"
        self._log().record("setup", self.name, self._who)

    def process(self, task: Task) -> Task:
        if task.data in self.fail_on:
            raise ValueError(f"recorded stage refuses {task.data}")
        return task

    def teardown(self) -> None:
        self._log().record("teardown", self.name, self._who)


class Traced(ProcessingStage):
    """Passes each task on (``data + 1``) and records where and when it ran; no lifecycle methods.

    A stage without ``setup``/``setup_on_node``/``teardown`` is one an engine may run on
    any pooled worker (the Ray plugins run it as Ray tasks), so tests use it to see which
    processes and nodes did the work. One JSON line per task in ``<folder>/<name>.jsonl``
    (:func:`read_trace`): task id, data, pid, node (the Ray node id inside a Ray worker,
    else the hostname), start and end wall-clock times.
    """

    def __init__(self, folder: str, name: str = "traced", seconds: float = 0.0, cpus: float = 0.5) -> None:
        self.folder = str(folder)
        self.name = name
        self.seconds = seconds
        self.resources = Resources(cpus=cpus)

    def process(self, task: Task) -> Task:
        import json
        import socket
        import sys
        import time

        t0 = time.time()
        if self.seconds:
            time.sleep(self.seconds)
        ray = sys.modules.get("ray")
        node = ray.get_runtime_context().get_node_id() if ray is not None and ray.is_initialized() else None
        record = {"task": task.task_id, "data": task.data, "pid": os.getpid(), "node": node or socket.gethostname(),
                  "t0": t0, "t": time.time()}
        append_line(os.path.join(self.folder, f"{self.name}.jsonl"), json.dumps(record))
        return Task(data=task.data + 1)


def read_trace(folder: str | Path, name: str) -> list[dict[str, Any]]:
    """The records a :class:`Traced` stage wrote (empty if it ran no task)."""
    import json

    path = os.path.join(str(folder), f"{name}.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


# -- shuffle stages ---------------------------------------------------------------------------


class KeepFirst(ShuffleStage):
    """Groups tasks by ``data % modulo`` (an int key); one output per group that records the
    group's task ids in the order ``reduce`` got them and the first task's data."""

    resources = Resources(cpus=0.5)

    def __init__(self, modulo: int = 7, name: str = "keep_first", num_partitions: int | None = None) -> None:
        self.modulo = modulo
        self.name = name
        self.num_partitions = num_partitions

    def keys(self, task: Task) -> list[int]:
        return [task.data % self.modulo]

    def reduce(self, key: Any, tasks: list[Task]) -> Task:
        return Task(data={"key": key, "ids": [t.task_id for t in tasks], "first": tasks[0].data})


class Bands(ShuffleStage):
    """Several keys per task, LSH style: ``("a", data % 3)`` and ``("b", data % 4)``; a task whose
    data is a multiple of 5 emits none (it is dropped). One output per band bucket: the sorted data."""

    resources = Resources(cpus=0.5)
    name = "bands"

    def keys(self, task: Task) -> list[tuple[str, int]]:
        if task.data % 5 == 0:
            return []
        return [("a", task.data % 3), ("b", task.data % 4)]

    def reduce(self, key: Any, tasks: list[Task]) -> Task:
        return Task(data={"key": list(key), "members": sorted(t.data for t in tasks)})


class WrongReduce(ShuffleStage):
    """Groups by ``data % 3``; ``reduce`` of key 1 returns a dict instead of a task (a broken
    contract: a stage failure, never retried)."""

    resources = Resources(cpus=0.5)
    name = "wrong_reduce"

    def keys(self, task: Task) -> list[int]:
        return [task.data % 3]

    def reduce(self, key: Any, tasks: list[Task]) -> Any:
        if key == 1:
            return {"key": key, "n": len(tasks)}
        return Task(data={"key": key, "n": len(tasks)})


class HashDedup(ShuffleStage):
    """Exact dedup keyed by Python's ``hash()`` of the text (salted per process for ``str``): right
    only if every worker that keys a task hashes alike."""

    resources = Resources(cpus=0.5)
    name = "hash_dedup"
    num_partitions = 4

    def keys(self, task: Task) -> list[int]:
        return [hash(f"text-{task.data % 25}")]

    def reduce(self, key: Any, tasks: list[Task]) -> Task:
        return Task(data=min(t.data for t in tasks))


def _held_key(data: Any) -> Any:
    return data.value["key"] if isinstance(data, DriverRefuses) else data


class HeldGroups(ShuffleStage):
    """Groups tasks by ``data % modulo`` (a :class:`HeldGroups` output by its key); each output's data
    (the key and the group's sorted members) is a :class:`DriverRefuses`: the driver ``driver_pid``
    cannot load the shuffle's outputs."""

    resources = Resources(cpus=0.5)

    def __init__(self, driver_pid: int, modulo: int = 5, name: str = "held_groups") -> None:
        self.driver_pid = driver_pid
        self.modulo = modulo
        self.name = name

    def keys(self, task: Task) -> list[int]:
        return [_held_key(task.data) % self.modulo]

    def reduce(self, key: Any, tasks: list[Task]) -> Task:
        members = sorted(_held_key(t.data) for t in tasks)
        return Task(data=DriverRefuses({"key": key, "members": members}, self.driver_pid))


class Opened(ProcessingStage):
    """A map stage after :class:`HeldGroups`: the data inside, which the driver may load."""

    name = "opened"
    resources = Resources(cpus=0.5)

    def process(self, task: Task) -> Task:
        return Task(data=task.data.value)


class Unwrap(ProcessingStage):
    """A map stage after a shuffle: the first data of a :class:`KeepFirst` output."""

    name = "unwrap"
    resources = Resources(cpus=0.5)

    def process(self, task: Task) -> Task:
        return Task(data=task.data["first"])


class RecordedShuffle(ShuffleStage):
    """:class:`KeepFirst` that records its lifecycle in a :class:`LifecycleLog` and can fail:
    ``keys()`` on data in ``fail_keys_on``, ``reduce()`` on keys in ``fail_reduce_on``, and it
    returns an unsupported key (a list) for data in ``bad_key_on``."""

    resources = Resources(cpus=0.5)

    def __init__(self, folder: str, name: str = "recorded_shuffle", modulo: int = 5,
                 fail_keys_on: tuple[int, ...] = (), fail_reduce_on: tuple[int, ...] = (),
                 bad_key_on: tuple[int, ...] = ()) -> None:
        self.folder = str(folder)
        self.name = name
        self.modulo = modulo
        self.fail_keys_on = set(fail_keys_on)
        self.fail_reduce_on = set(fail_reduce_on)
        self.bad_key_on = set(bad_key_on)
        self._who = ""

    def setup_on_node(self, node_info: NodeInfo | None = None, worker_metadata: WorkerMetadata | None = None) -> None:
        LifecycleLog(self.folder).record("setup_on_node", self.name, node_info.node_id if node_info else "?")

    def setup(self, worker_metadata: Any = None) -> None:
        self._who = f"{os.getpid()}:{id(self):x}"
        LifecycleLog(self.folder).record("setup", self.name, self._who)

    def keys(self, task: Task) -> list[Any]:
        if task.data in self.fail_keys_on:
            raise ValueError(f"keys() refuses {task.data}")
        if task.data in self.bad_key_on:
            return [[task.data]]
        return [task.data % self.modulo]

    def reduce(self, key: Any, tasks: list[Task]) -> Task:
        if not self._who:
            raise RuntimeError("reduce() before setup()")
        if key in self.fail_reduce_on:
            raise ValueError(f"reduce() refuses key {key}")
        return Task(data={"key": key, "ids": [t.task_id for t in tasks]})

    def teardown(self) -> None:
        LifecycleLog(self.folder).record("teardown", self.name, self._who)


# -- gang stages ------------------------------------------------------------------------------


class AllReduceSum(GangStage):
    """A gang whose ranks rendezvous over TCP on 127.0.0.1 at rank 0's ``gang_root()`` address and
    all-reduce the sum of their shares' data: every output carries the global sum, which only
    ranks that ran at the same time and talked can know. Logs its lifecycle in ``folder``;
    ``fail_rank`` raises in that rank's ``process_batch``; with ``die_once``, rank 1 kills its own
    process the first time (a marker file in ``folder``)."""

    resources = Resources(cpus=0.5)

    def __init__(self, folder: str, name: str = "all_reduce", gang_size: int = 2, fail_rank: int | None = None,
                 die_once: bool = False, placement_strategy: str = "PACK") -> None:
        self.folder = str(folder)
        self.name = name
        self.gang_size = gang_size
        self.fail_rank = fail_rank
        self.die_once = die_once
        self.placement_strategy = placement_strategy
        self.rank = -1
        self.conns: list[Any] = []

    def gang_root(self) -> tuple[str, int]:
        import socket

        with socket.socket() as s:  # a free port on this host, for rank 0 to listen on
            s.bind(("127.0.0.1", 0))
            return "127.0.0.1", s.getsockname()[1]

    def setup(self, worker_metadata: Any = None) -> None:
        import time
        from multiprocessing.connection import Client, Listener

        gang = worker_metadata.gang
        self.rank, self.size, self.node = gang.rank, gang.size, worker_metadata.node_id
        LifecycleLog(self.folder).record("setup", self.name, f"rank{self.rank}:{os.getpid()}")
        address = tuple(gang.root)
        if self.rank == 0:
            with Listener(address, authkey=b"gang") as listener:
                self.conns = [listener.accept() for _ in range(self.size - 1)]
            return
        deadline = time.monotonic() + 60
        while True:
            try:
                self.conns = [Client(address, authkey=b"gang")]
                return
            except OSError:  # rank 0 is not listening yet
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def process_batch(self, tasks: list[Task]) -> list[Task]:
        if self.rank == self.fail_rank:
            raise ValueError(f"rank {self.rank} refuses its share")
        if self.die_once and self.rank == 1:
            marker = Path(self.folder) / f"{self.name}.died"
            if not marker.exists():
                marker.write_text(str(os.getpid()))
                import signal

                os.kill(os.getpid(), signal.SIGKILL)
        local = sum(t.data for t in tasks)
        if self.rank == 0:
            total = local + sum(c.recv() for c in self.conns)
            for c in self.conns:
                c.send(total)
        else:
            self.conns[0].send(local)
            total = self.conns[0].recv()
        return [Task(data={"value": t.data, "sum": total, "rank": self.rank, "size": self.size, "node": self.node,
                           "ids": [x.task_id for x in tasks]}) for t in tasks]

    def teardown(self) -> None:
        for c in self.conns:
            c.close()
        LifecycleLog(self.folder).record("teardown", self.name, f"rank{self.rank}:{os.getpid()}")


class RootHeldGang(GangStage):
    """A gang whose root keeps what it made: ``gang_root()`` opens a listening socket on rank 0's
    instance and keeps it; rank 0's ``setup`` accepts every other rank on it (no race: the socket
    listens before any rank starts). Works only if ``gang_root`` runs on the very instance that then
    runs rank 0's ``setup``. Rank 0's outputs carry the ranks that reached it (``peers``)."""

    resources = Resources(cpus=0.5)

    def __init__(self, name: str = "root_held", gang_size: int = 2) -> None:
        self.name = name
        self.gang_size = gang_size
        self.rank = -1
        self.peers: list[int] = []

    def gang_root(self) -> tuple[str, int]:
        import socket

        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(self.gang_size)
        return self._listener.getsockname()

    def setup(self, worker_metadata: Any = None) -> None:
        import socket

        gang = worker_metadata.gang
        self.rank = gang.rank
        if self.rank == 0:
            self._listener.settimeout(60)
            for _ in range(gang.size - 1):
                conn, _ = self._listener.accept()
                with conn:
                    self.peers.append(int(conn.recv(16).decode()))
            self._listener.close()
            return
        with socket.create_connection(tuple(gang.root), timeout=60) as conn:
            conn.sendall(str(self.rank).encode())

    def process_batch(self, tasks: list[Task]) -> list[Task]:
        return [Task(data={"value": t.data, "rank": self.rank, "peers": sorted(self.peers)}) for t in tasks]


# -- resumable runs ---------------------------------------------------------------------------


class Branchy(ProcessingStage):
    """``data % 3`` children per task (none: dropped; two: each half of the parent's share), so a
    checkpoint sees filters and uneven fan-out: data * 10 + i."""

    name = "branchy"
    resources = Resources(cpus=0.5)

    def process(self, task: Task) -> list[Task]:
        return [Task(data=task.data * 10 + i) for i in range(task.data % 3)]


class Paced(ProcessingStage):
    """Passes each task on (``data + 1``) after ``seconds``: makes a run long enough to be killed."""

    resources = Resources(cpus=0.5)

    def __init__(self, seconds: float = 0.02, name: str = "paced") -> None:
        self.seconds = seconds
        self.name = name

    def process(self, task: Task) -> Task:
        import time

        time.sleep(self.seconds)
        return Task(data=task.data + 1)


class KillOnce(ProcessingStage):
    """SIGKILLs the process it runs in, the first time it sees data ``on`` (a marker file in
    ``folder`` says it did); otherwise passes tasks on unchanged."""

    name = "kill_once"
    resources = Resources(cpus=0.5)

    def __init__(self, folder: str, on: int) -> None:
        self.folder = str(folder)
        self.on = on

    def process(self, task: Task) -> Task:
        if task.data == self.on:
            marker = os.path.join(self.folder, "killed")
            try:
                fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                return task
            os.write(fd, str(os.getpid()).encode())
            os.close(fd)
            import signal

            os.kill(os.getpid(), signal.SIGKILL)
        return task


class FileWriter(ProcessingStage):
    """Writes each task's ``repr(data)`` to ``<folder>/<task id>.txt`` the way a writer stage must: to a
    temporary file (removing leftovers of its own name a killed attempt left), then renamed into place;
    returns ``(file name, content)`` with the task's id. Used to check exactly-once files under kills."""

    name = "file_writer"
    resources = Resources(cpus=0.5)

    def __init__(self, folder: str) -> None:
        self.folder = str(folder)

    def process(self, task: Task) -> Task:
        import glob
        import uuid

        name = f"{task.task_id}.txt"
        temporary = os.path.join(self.folder, "_tmp")
        os.makedirs(temporary, exist_ok=True)
        for stale in glob.glob(os.path.join(glob.escape(temporary), glob.escape(name) + ".*")):
            with contextlib.suppress(FileNotFoundError):
                os.remove(stale)
        content = repr(task.data)
        tmp = os.path.join(temporary, f"{name}.{uuid.uuid4().hex}")
        with open(tmp, "w") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, os.path.join(self.folder, name))
        return Task(data=(name, content))


def written_files(folder: str | Path) -> dict[str, str]:
    """What a :class:`FileWriter` left in ``folder``: file name -> content (temporary files excluded)."""
    out: dict[str, str] = {}
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            with open(path) as f:
                out[name] = f.read()
    return out


def leftover_temporaries(folder: str | Path) -> list[str]:
    temporary = os.path.join(folder, "_tmp")
    return sorted(os.listdir(temporary)) if os.path.isdir(temporary) else []


RESUME_ENV = "CURATOR_EXEC_KIT_RESUME"


def resume_stages(n: int = 60, seconds: float = 0.02, shuffle: bool = False, kill_dir: str = "",
                  kill_on: int = -1, write_dir: str = "") -> tuple[list[ProcessingStage], list[Task]]:
    """The pipeline of the kit's resume tests and its initial tasks: filter and uneven fan-out,
    a paced stage, optionally a worker that kills itself, a shuffle, and more paced work after it;
    with ``write_dir``, a :class:`FileWriter` last."""
    stages: list[ProcessingStage] = [Branchy(), Paced(seconds, "paced_1")]
    if kill_dir:
        stages.append(KillOnce(kill_dir, kill_on))
    if shuffle:
        stages += [KeepFirst(modulo=11), Unwrap(), Paced(seconds * 3, "paced_2")]
    stages.append(AddOne())
    if write_dir:
        stages.append(FileWriter(write_dir))
    return stages, [Task(data=i) for i in range(n)]


def resume_pipeline() -> Any:
    """``curator-exec run --pipeline curator_exec_core.testing.stages:resume_pipeline``: the
    :func:`resume_stages` pipeline, its parameters as JSON in ``$CURATOR_EXEC_KIT_RESUME``."""
    import json

    from curator_exec_core.pipeline import Pipeline

    stages, tasks = resume_stages(**json.loads(os.environ.get(RESUME_ENV, "{}")))
    return Pipeline("kit-resume", stages), tasks

"""Shuffle stages: group every task of the run by key, then reduce each group.

A :class:`ShuffleStage` is a barrier for itself, not for the stages before it: they stream as
usual, and ``reduce(key, tasks)`` runs once every task of the run that emitted ``key`` is in.
:class:`ManagedShuffle` is the shuffle's side of the core's runner (keys with retries and
failure records, reduce with deterministic ids); every backend's workers call it, so the
semantics are the same everywhere. Backends only move the keyed tasks between workers.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Any, ClassVar

from curator_exec_core.errors import StageContractError
from curator_exec_core.runner import ManagedStage, retry, task_order
from curator_exec_core.stages import ProcessingStage
from curator_exec_core.tasks import FailedTask, Task

__all__ = ["ShuffleStage", "ManagedShuffle", "GroupBy", "Repartition", "key_digest", "task_order",
           "group_in_process", "partitioned", "KeyedTask"]

#: (key digest, key, task): one task as one key sends it to the shuffle
KeyedTask = tuple[str, Hashable, Task]


class ShuffleStage(ProcessingStage):
    """Groups the tasks of a whole run by key (deduplication, grouping, repartitioning).

    * ``keys(task)``: the shuffle keys of one task: none (the task is dropped), one, or several
      (LSH bands: the task joins several groups). A key is a ``str``, ``bytes``, ``int``,
      ``float``, ``bool``, ``None`` or a tuple of those. ``keys`` must depend only on the task and
      on what the stage's ``__init__`` set: it may run wherever the engine has the task, before
      any ``setup``.
    * ``reduce(key, tasks)``: every task of the run that emitted ``key``, in ``task_id`` order;
      returns a task, a list of tasks or ``None``. It runs on set-up workers (``setup`` and
      ``teardown`` as for any stage; ``resources`` size those workers).
    * ``num_partitions``: how many groups of keys the engine reduces apart (``None``: the
      executor picks from its workers). It never changes the answer, only the parallelism.

    Output ids derive from the key (``"<stage name>#<16 hex digits>"``, ``".<i>"`` appended for
    the outputs of a list), so they are the same on every backend and for any partition count.
    """

    num_partitions: int | None = None

    def keys(self, task: Task) -> Iterable[Hashable]:
        raise NotImplementedError(f"{type(self).__name__} must implement keys(task)")

    def reduce(self, key: Hashable, tasks: list[Task]) -> Task | list[Task] | None:
        raise NotImplementedError(f"{type(self).__name__} must implement reduce(key, tasks)")

    def process(self, task: Task) -> Task | list[Task] | None:
        raise TypeError(f"shuffle stage {self.name!r} has no process(): it groups a whole run with keys() and "
                        "reduce(); run it through an executor")


class GroupBy(ShuffleStage):
    """Groups tasks by ``key`` (a ``metadata`` name, or a function of the task) into one task per
    group: ``data`` is the list of the group's payloads in ``task_id`` order, and
    ``metadata["group"]`` the key. ``GroupBy("language")`` groups by ``task.metadata["language"]``."""

    def __init__(self, key: str | Callable[[Task], Hashable], name: str = "group_by",
                 num_partitions: int | None = None) -> None:
        self.key = key
        self.name = name
        self.num_partitions = num_partitions

    def keys(self, task: Task) -> list[Hashable]:
        return [task.metadata[self.key] if isinstance(self.key, str) else self.key(task)]

    def reduce(self, key: Hashable, tasks: list[Task]) -> Task:
        return Task(data=[t.data for t in tasks], metadata={"group": key})


class Repartition(ShuffleStage):
    """Regroups the run's tasks into ``partitions`` batches by a stable hash of their ids: one task
    per batch, whose ``data`` is the list of the payloads (in ``task_id`` order)."""

    def __init__(self, partitions: int, name: str = "repartition") -> None:
        if partitions < 1:
            raise ValueError(f"Repartition needs partitions >= 1, got {partitions}")
        self.partitions = partitions
        self.name = name

    def keys(self, task: Task) -> list[int]:
        return [int(key_digest(task.task_id)[:8], 16) % self.partitions]

    def reduce(self, key: Hashable, tasks: list[Task]) -> Task:
        return Task(data=[t.data for t in tasks], metadata={"partition": key})


def _canonical(key: Any) -> bytes:
    if isinstance(key, bool) or key is None:
        return b"n" if key is None else (b"?1" if key else b"?0")
    if isinstance(key, str):
        return b"s" + key.encode("utf-8", "surrogatepass")
    if isinstance(key, bytes):
        return b"b" + key
    if isinstance(key, int):
        return b"i" + str(key).encode()
    if isinstance(key, float):
        return b"f" + repr(key).encode()
    if isinstance(key, tuple):
        parts = [_canonical(k) for k in key]
        return b"t" + b"".join(len(p).to_bytes(4, "big") + p for p in parts)
    raise StageContractError(f"unsupported shuffle key {key!r} of type {type(key).__name__}: keys() must return "
                             "a list of keys, each a str, bytes, int, float, bool, None or a tuple of them")


def key_digest(key: Any) -> str:
    """A stable hex digest of ``key``: the same in every process, on every machine and Python run."""
    return hashlib.sha1(_canonical(key)).hexdigest()


class ManagedShuffle(ManagedStage):
    """A :class:`ShuffleStage` as the core runs it: ``key_tasks`` on the insert side, ``reduce_groups``
    on set-up workers, with the core's retries and failure records on both. Each call's counts:
    ``key_tasks`` (tasks keyed, 0, failed), ``reduce_groups`` (0, outputs, failed groups)."""

    stage: ShuffleStage
    kind: ClassVar[str] = "shuffle"

    def __init__(self, stage: ProcessingStage, **kwargs: Any) -> None:
        if not isinstance(stage, ShuffleStage):
            raise TypeError(f"stage {stage.name!r} is not a ShuffleStage")
        super().__init__(stage, **kwargs)

    def process_batch(self, tasks: list[Task]) -> list[Task]:
        raise TypeError(f"shuffle stage {self.name!r} runs as key_tasks() then reduce_groups(), not process_batch()")

    def _attempt(self, task: Task, what: str, fn: Callable[[], Any], error: Exception) -> tuple[Any, FailedTask | None]:
        """``fn()`` again after its first attempt raised ``error``, with the stage's retries; then
        abort with ``StageFailedError`` or return a failure record (``ignore_failures``)."""
        attempt = retry(fn, self.policy.max_retries, error)
        if attempt.error is None:
            return attempt.value, None
        return None, self._fail(task, attempt.error, attempt.attempts, what)

    def key_tasks(self, tasks: Iterable[Task]) -> tuple[list[KeyedTask], list[Task]]:
        """The (digest, key, task) of every key of every task (a key a task emits twice counts once),
        and the failure records (those that came in, and tasks whose ``keys()`` failed)."""
        self._begin()
        keyed: list[KeyedTask] = []
        records: list[Task] = []
        n_in = failed = 0
        keys = self.stage.keys

        def keyed_of(task: Task) -> list[KeyedTask]:
            got = self.limited(keys, "keys()", [task], may_end_worker=False)(task) if self.task_timeout else keys(task)
            if isinstance(got, (str, bytes)):  # a key, not a list of keys: it would split into characters
                raise StageContractError(
                    f"shuffle stage {self.name!r}: keys() returned a {type(got).__name__} ({got[:40]!r}), not a list "
                    f"of keys; return [key] (a str or bytes is one key, not a list of them)")
            return [(key_digest(k), k, task) for k in got]

        for task in tasks:
            if isinstance(task, FailedTask):
                records.append(task)
                continue
            n_in += 1
            try:  # the fast path; a failure is tried again (max_retries) and recorded below
                got = keyed_of(task)
            except Exception as exc:
                got, record = self._attempt(task, "keys()", functools.partial(keyed_of, task), exc)
                if record is not None:
                    records.append(record)
                    failed += 1
                    continue
            if len(got) > 1 and len({d for d, _, _ in got}) < len(got):
                got = list({d: (d, k, t) for d, k, t in got}.values())
            keyed += got
        self._counted((n_in, 0, failed), records)
        return keyed, records

    def partition(self, digest: str, partitions: int) -> int:
        return int(digest[:15], 16) % max(1, partitions)

    def reduce_groups(self, keyed: Iterable[KeyedTask]) -> list[Task]:
        """Group ``keyed`` by key and reduce every group (tasks in ``task_id`` order)."""
        self._begin()
        groups: dict[str, list[Any]] = {}
        for digest, key, task in keyed:
            group = groups.get(digest)
            if group is None:
                groups[digest] = [key, task]
            else:
                group.append(task)
        out: list[Task] = []
        failed = 0
        for digest in sorted(groups):
            key, *tasks = groups[digest]
            if len(tasks) > 1:
                tasks.sort(key=lambda t: task_order(t.task_id))
            failed += self._reduce_group(f"{self.name}#{digest[:16]}", key, tasks, out)
        self._counted((0, len(out) - failed, failed), out)
        return out

    def _reduce_group(self, out_id: str, key: Hashable, tasks: list[Task], out: list[Task]) -> int:
        """``reduce(key, tasks)`` into ``out`` with ids from the key; 1 if it made a failure record."""
        reduce = self.limited(self.stage.reduce, f"reduce(key={key!r})", tasks, may_end_worker=False)

        def call() -> Any:  # a result of the wrong type fails the call like an exception
            return self._validated(reduce(key, tasks), "reduce()")

        try:
            result = call()
        except Exception as exc:
            holder = Task(data=tasks, task_id=out_id, metadata={"shuffle_key": key})
            result, record = self._attempt(holder, f"reduce(key={key!r})", call, exc)
            if record is not None:
                out.append(record)
                return 1
        if result is None:
            return 0
        if isinstance(result, list):
            for i, child in enumerate(result):
                child.task_id = f"{out_id}.{i}"
            out += result
        else:
            result.task_id = out_id
            out.append(result)
        return 0


def partitioned(shuffle: ManagedShuffle, keyed: Sequence[KeyedTask], partitions: int) -> list[list[KeyedTask]]:
    """``keyed`` split by partition (the engine moves each part to the worker that reduces it)."""
    parts: list[list[KeyedTask]] = [[] for _ in range(max(1, partitions))]
    for item in keyed:
        parts[shuffle.partition(item[0], partitions)].append(item)
    return parts


def group_in_process(shuffle: ManagedShuffle, tasks: Iterable[Task]) -> list[Task]:
    """The whole shuffle in this process, on a set-up ``shuffle``: key every task, reduce every
    group. Failure records (those that came in, then those it made) come first."""
    keyed, records = shuffle.key_tasks(tasks)
    return records + shuffle.reduce_groups(keyed)

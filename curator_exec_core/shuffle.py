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
import itertools
import logging
import os
import pickle
import shutil
import tempfile
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from typing import Any, ClassVar

from curator_exec_core.errors import StageContractError
from curator_exec_core.runner import ManagedStage, retry, task_order
from curator_exec_core.stages import ProcessingStage
from curator_exec_core.tasks import FailedTask, Task

__all__ = ["ShuffleStage", "ManagedShuffle", "GroupBy", "Repartition", "key_digest", "task_order",
           "group_in_process", "SpillingGrouper", "partitioned", "KeyedTask"]

logger = logging.getLogger(__name__)

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
        return out if self.keep_outputs else self.failures_only(out)

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


def group_in_process(shuffle: ManagedShuffle, tasks: Iterable[Task], *, memory_budget: int | None = None,
                     spill_dir: str | None = None) -> Iterator[Task]:
    """The whole shuffle in this process, on a set-up ``shuffle``: key every task, reduce every
    group. An iterator (lazy: nothing runs before the first ``next()``): the failure records (those
    that came in, then those ``keys()`` made) first, then the outputs, partition after partition,
    each group's outputs in the order of the key digests (the same order with and without spilling).

    ``tasks`` is read once, so it may be a generator. ``memory_budget`` (bytes): past it the keyed
    pieces go to spill files in a private directory under ``spill_dir`` (default: the system's
    temporary directory) and are reduced partition by partition (:class:`SpillingGrouper`); ``None``:
    everything is held in memory. The spill directory is removed when the iterator ends, raises or
    is closed."""
    if memory_budget is None:
        keyed, records = shuffle.key_tasks(tasks)
        yield from records
        del records
        yield from shuffle.reduce_groups(keyed)
        return
    yield from SpillingGrouper(shuffle, memory_budget, spill_dir).run(tasks)


#: spill partitions per level: the top 6 bits of the key digest at level 0, the next 6 below
#: (range partitions, so partition order is digest order)
SPILL_FANOUT_BITS = 6
SPILL_FANOUT = 1 << SPILL_FANOUT_BITS
_DIGEST_BITS = 160
_MAX_LEVEL = _DIGEST_BITS // SPILL_FANOUT_BITS - 1
#: estimated bytes a held piece costs beyond its pickled task (the tuple, the Task object, its dicts)
PIECE_OVERHEAD = 200
#: tasks of one ``keys()`` call at most; fewer for large tasks (the budget's share)
_MAX_CHUNK = 1024
#: every task's size is measured (pickled) for the first tasks, then one task in this many
_SAMPLE_ALL, _SAMPLE_EVERY = 256, 16


def _bucket(digest: str, level: int) -> int:
    return (int(digest, 16) >> (_DIGEST_BITS - SPILL_FANOUT_BITS * (level + 1))) & (SPILL_FANOUT - 1)


def _frames(path: str) -> Iterator[list[Any]]:
    with open(path, "rb") as f:
        while True:
            try:
                yield pickle.load(f)
            except EOFError:
                return


class SpillingGrouper:
    """The in-process shuffle under a memory budget (one run: :meth:`run`).

    * **Estimate**: a keyed piece costs its task's pickled size plus :data:`PIECE_OVERHEAD`. Tasks are
      pickled to measure them: all of the first 256, then one in 16 (the others count the running
      mean), so the estimate costs well under a microsecond per task. A task with several keys counts
      once per key (it is written once per key).
    * **Holding**: pieces are held per partition (:data:`SPILL_FANOUT` range partitions of the key
      digest) with the failure records. Once the estimate passes the budget, everything held is
      appended to the partition's spill file (one pickle frame, a list of pieces, per flush) in a
      private directory (``mkdtemp``: mode 0700) and memory is cleared. ``keys()`` runs on chunks of
      the input sized to a small share of the budget, so the overshoot is one chunk.
    * **Reducing**: a run that never passed the budget reduces in memory as without one. Otherwise
      the rest is flushed too, the records are yielded, then each partition is loaded alone and
      reduced (``reduce_groups``). A partition file above half the budget (objects take about 1-2
      times their pickled size) is split again by the next 6 bits of the digest, one frame at a
      time, before it is loaded; a file that holds a single key (one group larger than the budget)
      cannot be split: it is loaded anyway, over the budget, with a warning (``reduce()`` needs the
      group as one list).
    * **Cleanup**: the directory goes when the run ends, raises, or its iterator is closed.
    """

    def __init__(self, shuffle: ManagedShuffle, memory_budget: int, spill_dir: str | None = None) -> None:
        if memory_budget < 0:
            raise ValueError(f"memory_budget must be >= 0 bytes, got {memory_budget}")
        self.shuffle = shuffle
        self.budget = memory_budget
        self.spill_dir = spill_dir
        self.dir: str | None = None  # the private directory, once something spilled
        self.parts: list[list[KeyedTask]] = [[] for _ in range(SPILL_FANOUT)]
        self.records: list[Task] = []
        self.held = 0  # estimated bytes held now
        self.spilled_bytes = 0  # bytes written to spill files (splits included)
        self.flushes = 0
        self._files: dict[int, Any] = {}
        self._seen = 0
        self._measured = 0
        self._measured_bytes = 0

    # -- sizes --------------------------------------------------------------------------------
    def _size(self, task: Task) -> int:
        """The estimated pickled size of ``task`` (measured, or the running mean)."""
        self._seen += 1
        if self._seen <= _SAMPLE_ALL or self._seen % _SAMPLE_EVERY == 0 or not self._measured:
            try:
                size = len(pickle.dumps(task, pickle.HIGHEST_PROTOCOL))
            except Exception:  # it will fail where it is written, with the real error; count it as average
                size = self._mean()
            self._measured += 1
            self._measured_bytes += size
            return size
        return self._mean()

    def _mean(self) -> int:
        return self._measured_bytes // self._measured if self._measured else 0

    def _chunk_len(self) -> int:
        if not self._measured:  # nothing known yet: a few tasks first
            return 16
        per_task = self._mean() + PIECE_OVERHEAD
        return max(1, min(_MAX_CHUNK, self.budget // (8 * per_task)))

    # -- spilling -----------------------------------------------------------------------------
    def _path(self, name: str) -> str:
        assert self.dir is not None
        return os.path.join(self.dir, name)

    def _flush(self) -> None:
        """Append everything held to the spill files and forget it."""
        if self.dir is None:
            if self.spill_dir is not None:
                os.makedirs(self.spill_dir, exist_ok=True)
            self.dir = tempfile.mkdtemp(prefix="curator-exec-shuffle-", dir=self.spill_dir)
            logger.info("shuffle stage %r: keyed pieces passed the memory budget (%d bytes); spilling to %s",
                        self.shuffle.name, self.budget, self.dir)
        self.flushes += 1
        if self.records:
            self._append("records", self.records)
            self.records = []
        for b, part in enumerate(self.parts):
            if part:
                self._append(f"p{b:02x}", part, keep_open=b)
                self.parts[b] = []
        self.held = 0

    def _append(self, name: str, items: list[Any], keep_open: int | None = None) -> None:
        f = self._files.get(keep_open) if keep_open is not None else None
        if f is None:
            f = open(self._path(name), "ab")
            if keep_open is not None:
                self._files[keep_open] = f
        try:
            start = f.tell()
            try:
                pickle.dump(items, f, pickle.HIGHEST_PROTOCOL)
            except (pickle.PicklingError, TypeError, AttributeError) as exc:
                raise StageContractError(
                    f"shuffle stage {self.shuffle.name!r}: its tasks passed the memory budget ({self.budget} bytes) "
                    f"and must be pickled to spill to disk, but one does not pickle ({type(exc).__name__}: {exc}). "
                    "Keep tasks picklable, or give no budget (local: shuffle_memory_budget=None)") from exc
            self.spilled_bytes += f.tell() - start
        finally:
            if keep_open is None:
                f.close()

    def _close(self) -> None:
        files, self._files = self._files, {}
        for f in files.values():
            f.close()

    # -- the run ------------------------------------------------------------------------------
    def run(self, tasks: Iterable[Task]) -> Iterator[Task]:
        """Key ``tasks`` (read once), then yield the records and the outputs (see the class)."""
        shuffle = self.shuffle
        try:
            source = iter(tasks)
            while True:
                chunk = list(itertools.islice(source, self._chunk_len()))
                if not chunk:
                    break
                keyed, records = shuffle.key_tasks(chunk)
                del chunk
                for record in records:
                    self.records.append(record)
                    self.held += self._size(record) + PIECE_OVERHEAD
                sizes: dict[int, int] = {}
                for piece in keyed:
                    task = piece[2]
                    size = sizes.get(id(task))
                    if size is None:
                        size = sizes[id(task)] = self._size(task) + PIECE_OVERHEAD
                    self.parts[_bucket(piece[0], 0)].append(piece)
                    self.held += size
                del keyed, records, sizes
                if self.held > self.budget:
                    self._flush()
            if self.dir is None:  # it all fitted: as without a budget
                records, self.records = self.records, []
                yield from records
                del records
                held = [piece for part in self.parts for piece in part]
                self.parts = []
                yield from shuffle.reduce_groups(held)
                return
            self._flush()
            self._close()
            records_path = self._path("records")
            if os.path.exists(records_path):
                for frame in _frames(records_path):
                    yield from frame
                os.remove(records_path)
            for b in range(SPILL_FANOUT):
                yield from self._reduce_file(self._path(f"p{b:02x}"), 1)
        finally:
            self._close()
            if self.dir is not None:
                shutil.rmtree(self.dir, ignore_errors=True)
                logger.debug("shuffle stage %r: %d flushes, %d bytes spilled; removed %s",
                             shuffle.name, self.flushes, self.spilled_bytes, self.dir)

    def _reduce_file(self, path: str, level: int) -> Iterator[Task]:
        """Reduce the pieces of one partition file (split first if it is too large to load)."""
        if not os.path.exists(path):
            return
        if os.path.getsize(path) > self.budget // 2 and level <= _MAX_LEVEL:
            subpaths = self._split(path, level)
            if subpaths is not None:
                for sub in subpaths:
                    yield from self._reduce_file(sub, level + 1)
                return
            path = f"{path}.single"
            logger.warning("shuffle stage %r: one group (one key) takes %d bytes pickled, more than half the "
                           "memory budget (%d bytes); it is reduced in memory anyway (reduce() gets the group "
                           "as one list)", self.shuffle.name, os.path.getsize(path), self.budget)
        pieces = [piece for frame in _frames(path) for piece in frame]
        os.remove(path)
        yield from self.shuffle.reduce_groups(pieces)

    def _split(self, path: str, level: int) -> list[str] | None:
        """Rewrite ``path`` into sub-partitions by the digest's bits at ``level`` (one frame held at a
        time) and return their paths in digest order; None if the file holds one key only (then it
        was renamed to ``path + ".single"``)."""
        first: str | None = None
        several = False
        for frame in _frames(path):
            for digest, _, _ in frame:
                if first is None:
                    first = digest
                elif digest != first:
                    several = True
                    break
            if several:
                break
        if not several:
            os.replace(path, f"{path}.single")
            return None
        names = [f"{os.path.basename(path)}.{b:02x}" for b in range(SPILL_FANOUT)]
        try:
            for frame in _frames(path):
                subparts: list[list[KeyedTask]] = [[] for _ in range(SPILL_FANOUT)]
                for piece in frame:
                    subparts[_bucket(piece[0], level)].append(piece)
                del frame
                for b, sub in enumerate(subparts):
                    if sub:
                        self._append(names[b], sub)
        finally:
            self._close()
        os.remove(path)
        return [p for p in (self._path(n) for n in names) if os.path.exists(p)]

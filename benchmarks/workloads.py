"""Benchmark workloads: their records, stages, inputs and the non-framework baselines.

The stages live in this importable module (not in ``run.py``'s ``__main__``) so that
they pickle by reference for process-based engines (Ray, multiprocessing).
:data:`WORKLOADS` holds one :class:`Workload` record per workload (title, what the table
shows, the baselines measured beside it); the harness reads them.

Workloads (full size; ``--quick`` divides the task counts by 10):

* **W1 overhead**: ``W1_TASKS`` tasks through two :class:`AddOne` stages
  (``batch_size`` 1, each returns a *new* ``Task`` with ``data + 1``).
* **W2 cpu**: ``W2_TASKS`` tasks through two :class:`BurnCpu` stages that each spend
  ``W2_CPU_SECONDS`` of *thread* CPU time (busy loop on ``time.thread_time()``).
* **W3 streaming memory**: ``W3_TASKS`` tasks; :class:`AttachBytes` attaches
  ``W3_BLOB_BYTES`` bytes to each task, :class:`DropBytes` drops them again and
  records how many bytes it dropped.
* **W4 import**: a fresh interpreter doing ``import curator_exec_core; list_executors()``
  (measured in ``child.py``; nothing to define here).
* **W5 exact dedup**: ``W5_TASKS`` documents through :class:`Normalize` and :class:`KeepFirst`
  (a shuffle keyed by the normalised text's hash).
* **W6 shuffle 2 GB**: ``W6_TASKS`` tasks of ``W3_BLOB_BYTES`` (:class:`AttachBytes`) shuffled
  into ``W6_KEYS`` keys (:class:`Bucket`).
* **W6C shuffle 2 GB, checkpoint**: W6 (its stages, data and output check: ``Workload.same_as``) with
  ``checkpoint_path`` set to a new empty directory each run (``Workload.checkpoint``; made and removed
  in ``child.py``).
* **W6R repartition 2 GB, checkpoint**: W6's tasks repartitioned into ``W6R_PARTS`` tasks of about
  10 MB each (:class:`Repartition`: a barrier whose outputs are as large as its input), then a map
  that weighs them (:class:`Weigh`), with a checkpoint: the barrier's outputs are saved and read back
  for the map part after it (by the workers on the Ray backends, by the driver on ``local``).
* **W7 checkpoint overhead**: W1's stages, warm runs without and with a checkpoint
  (measured in ``child.py``).
* **W8 scale**: ``W8_TASKS`` generated source tasks (:func:`w8_source`, a generator) through two
  cheap map stages into a JSON Lines writer that writes one file per batch of ``W8_WRITE_BATCH``
  tasks, ``return_outputs=False`` (stages in :mod:`benchmarks.w8_scale`, imported only for W8 since
  it imports pyarrow); a run at a tenth of the size first (cold, then warm), then the full size: the
  driver's RSS above its RSS before each run, and µs per task-stage beside W1 in the same process.
* **W9 shuffle 4 GB, budget**: W6's stages at ``W9_TASKS`` tasks (4 GB; the environment variable
  ``BENCH_W9_TASKS`` overrides it), the whole pipeline through ``Pipeline.run`` with a generator
  source (:func:`generate_tasks`; ``local`` streams the map segment into its shuffle), on ``local``
  with ``shuffle_memory_budget=W9_BUDGET`` unless ``--set local.shuffle_memory_budget=...``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from curator_exec_core import ProcessingStage, Resources, ShuffleStage, Task

W1_TASKS = 2_000
W2_TASKS = 400
W2_CPU_SECONDS = 0.025
W3_TASKS = 20_000
W3_BLOB_BYTES = 100_000  # 100 KB; 20,000 tasks x 100 KB = 2.0 GB of intermediates
W5_TASKS = 200_000
W5_DUPLICATE_SHARE = 0.3  # of the documents, duplicates of another one after normalisation
W6_TASKS = 20_000
W6_KEYS = 100
W6R_PARTS = 200
W8_TASKS = 1_000_000  # W8 scale: source tasks of the full-size run (BENCH_W8_TASKS overrides)
W8_TASKS_BY_EXECUTOR = {"xenna": 100_000}  # its per-task cost is higher
W8_SMALL_DIVISOR = 10  # W8's cold and warm runs are at a tenth of the full size (100,000)
W8_QUICK_DIVISOR = 100  # --quick: W8 at 10,000 (full) and 1,000 (small)
W8_WRITE_BATCH = 10_000  # W8's writer: one file per batch of this many tasks (--quick: 1,000)
W8_STAGES = 3  # two maps and the writer: W8's task-stages are tasks x 3
W9_TASKS = 40_000  # 40,000 x 100 KB = 4.0 GB through the shuffle
W9_BUDGET = "512MiB"  # local's shuffle_memory_budget in W9
STAGES_PER_WORKLOAD = 2
QUICK_DIVISOR = 10

# -- workload records -----------------------------------------------------------------------

PLAIN = "plain_loop"  # baseline: a Python loop calling each stage's process() (W1, W2, W3)
POOL = "mp_pool2"  # baseline: multiprocessing.Pool(2) (W2)
STARTUP = "python_startup"  # baseline: `python -c pass` (W4)
DICT = "dict_group"  # baseline: a plain Python dict grouping in one process (W5, W6)
RAYDATA_GROUPBY = "raydata_groupby"  # baseline: a hand-written Ray Data groupby().map_groups() (W5)
BASELINES = (PLAIN, POOL, STARTUP, DICT, RAYDATA_GROUPBY)


@dataclass(frozen=True)
class Workload:
    """One workload as the harness sees it."""

    id: str
    title: str
    metric: str  # what the table's cold/warm metric columns show
    baselines: tuple[str, ...]  # measured next to the executors, in this order
    default: bool = False  # in the default ``--workloads``
    sample_rss: bool = False  # the driver's RSS is sampled during each run
    same_as: str | None = None  # runs that workload's stages and data, checked alike (W6C: W6's)
    checkpoint: bool = False  # each run gets checkpoint_path=<a new empty directory> (child.checkpoint_dir)

    @property
    def data(self) -> str:
        """The workload id whose stages, tasks, output check and table figures this one uses."""
        return self.same_as or self.id


WORKLOADS: dict[str, Workload] = {w.id: w for w in (
    Workload("W1", "overhead", "µs/task-stage", (PLAIN,), default=True),
    Workload("W2", "cpu", "efficiency", (PLAIN, POOL), default=True),
    Workload("W3", "streaming memory", "peak RSS MB", (PLAIN,), default=True, sample_rss=True),
    Workload("W4", "import", "ray imported?", (STARTUP,), default=True),
    Workload("W5", "exact dedup", "docs/s", (DICT, RAYDATA_GROUPBY)),
    Workload("W6", "shuffle 2 GB", "peak RSS MB", (DICT,), sample_rss=True),
    Workload("W6C", "shuffle 2 GB, checkpoint", "peak RSS MB", (), sample_rss=True, same_as="W6", checkpoint=True),
    Workload("W6R", "repartition 2 GB, checkpoint", "peak RSS MB", (), sample_rss=True, checkpoint=True),
    Workload("W7", "checkpoint overhead", "checkpoint overhead", ()),
    Workload("W8", "scale", "RSS growth MB", (), sample_rss=True),
    Workload("W9", "shuffle 4 GB, budget", "peak RSS MB", (), sample_rss=True),
)}


# -- W1: per-task framework overhead ------------------------------------------------------


class AddOne(ProcessingStage):
    """Returns a new Task whose ``data`` is the input's plus one."""

    name = "add_one"
    resources = Resources(cpus=1.0)
    batch_size = 1

    def __init__(self, name: str = "add_one") -> None:
        self.name = name

    def process(self, task: Task) -> Task:
        return Task(data=task.data + 1)


# -- W2: CPU-bound stages -------------------------------------------------------------------


def burn_thread_cpu(seconds: float) -> None:
    """Busy-loop until this thread has used ``seconds`` of CPU time (not wall time)."""
    start = time.thread_time()
    while time.thread_time() - start < seconds:
        pass


class BurnCpu(ProcessingStage):
    """Spends ``seconds`` of thread CPU time per task, then passes the task on."""

    name = "burn_cpu"
    resources = Resources(cpus=1.0)
    batch_size = 1

    def __init__(self, name: str = "burn_cpu", seconds: float = W2_CPU_SECONDS) -> None:
        self.name = name
        self.seconds = seconds

    def process(self, task: Task) -> Task:
        burn_thread_cpu(self.seconds)
        return Task(data=task.data + 1)


# -- W3: streaming memory -------------------------------------------------------------------


class AttachBytes(ProcessingStage):
    """Attaches ``nbytes`` of (touched, non-zero-page) bytes to the task."""

    name = "attach_bytes"
    resources = Resources(cpus=1.0)
    batch_size = 1

    def __init__(self, name: str = "attach_bytes", nbytes: int = W3_BLOB_BYTES) -> None:
        self.name = name
        self.nbytes = nbytes

    def process(self, task: Task) -> Task:
        # bytes([x]) * n writes every page (bytes(n) could be lazily zero-mapped and not show in RSS)
        blob = bytes([task.data % 251 + 1]) * self.nbytes
        return Task(data={"i": task.data, "blob": blob})


class DropBytes(ProcessingStage):
    """Drops the blob again; ``metadata["dropped_bytes"]`` records how many bytes flowed."""

    name = "drop_bytes"
    resources = Resources(cpus=1.0)
    batch_size = 1

    def process(self, task: Task) -> Task:
        blob = task.data["blob"]
        return Task(data=task.data["i"], metadata={"dropped_bytes": len(blob)})


# -- W5: exact deduplication (shuffle) -------------------------------------------------------


def w5_document(i: int, n: int) -> str:
    """Document ``i`` of ``n``: 70% distinct texts; the other 30% repeat one of them, with other
    case and spacing (duplicates after normalisation)."""
    distinct = max(1, round(n * (1 - W5_DUPLICATE_SHARE)))
    j = i if i < distinct else (i * 7919) % distinct
    text = f"Document {j}: the quick brown fox number {j * 31 % 997} jumps over the lazy dog"
    return text.upper() if i >= distinct and i % 2 else ("  " + text.replace(" ", "   ") if i >= distinct else text)


def normalize(text: str) -> str:
    return " ".join(text.lower().split())


class Normalize(ProcessingStage):
    name = "normalize"
    resources = Resources(cpus=1.0)

    def process(self, task: Task) -> Task:
        return Task(data=normalize(task.data))


class KeepFirst(ShuffleStage):
    """Exact dedup: one key per document (its normalised text's hash); keep the first."""

    name = "keep_first"
    resources = Resources(cpus=1.0)

    def keys(self, task: Task) -> list[str]:
        import hashlib

        return [hashlib.sha1(task.data.encode()).hexdigest()]

    def reduce(self, key: str, tasks: list[Task]) -> Task:
        return tasks[0]


# -- W6: a shuffle of 2 GB ----------------------------------------------------------------------


class Bucket(ShuffleStage):
    """Shuffles every 100 KB task into one of ``W6_KEYS`` keys; a group's output is its size."""

    name = "bucket"
    resources = Resources(cpus=1.0)

    def keys(self, task: Task) -> list[int]:
        return [task.data["i"] % W6_KEYS]

    def reduce(self, key: int, tasks: list[Task]) -> Task:
        return Task(data={"key": key, "tasks": len(tasks), "bytes": sum(len(t.data["blob"]) for t in tasks)})


class Repartition(ShuffleStage):
    """Repartitions the 100 KB tasks into ``W6R_PARTS`` tasks holding their blobs (about 10 MB each)."""

    name = "repartition"
    resources = Resources(cpus=1.0)

    def keys(self, task: Task) -> list[int]:
        return [task.data["i"] % W6R_PARTS]

    def reduce(self, key: int, tasks: list[Task]) -> Task:
        return Task(data={"key": key, "tasks": len(tasks), "blob": b"".join(t.data["blob"] for t in tasks)})


class Weigh(ProcessingStage):
    """The size of a :class:`Repartition` output (its blob dropped)."""

    name = "weigh"
    resources = Resources(cpus=1.0)
    batch_size = 1

    def process(self, task: Task) -> Task:
        return Task(data={"key": task.data["key"], "tasks": task.data["tasks"], "bytes": len(task.data["blob"])})


# -- workload table -------------------------------------------------------------------------


def task_count(workload: str, quick: bool = False, executor: str = "") -> int:
    """Source tasks of ``workload`` (W8: of its full-size run, which depends on the executor)."""
    if workload == "W8":
        n = int(os.environ.get("BENCH_W8_TASKS", W8_TASKS_BY_EXECUTOR.get(executor, W8_TASKS)))
        return max(1, n // W8_QUICK_DIVISOR) if quick else n
    n = {"W1": W1_TASKS, "W2": W2_TASKS, "W3": W3_TASKS, "W5": W5_TASKS, "W6": W6_TASKS, "W6R": W6_TASKS,
         "W7": W1_TASKS,
         "W9": int(os.environ.get("BENCH_W9_TASKS", W9_TASKS))}[workload]
    return max(1, n // QUICK_DIVISOR) if quick else n


def make_stages(workload: str) -> list[ProcessingStage]:
    if workload in ("W1", "W7"):  # W7: W1 with and without a checkpoint
        return [AddOne("add_one_1"), AddOne("add_one_2")]
    if workload == "W2":
        return [BurnCpu("burn_cpu_1"), BurnCpu("burn_cpu_2")]
    if workload == "W3":
        return [AttachBytes("attach_bytes"), DropBytes()]
    if workload == "W5":
        return [Normalize(), KeepFirst()]
    if workload in ("W6", "W9"):
        return [AttachBytes("attach_bytes"), Bucket()]
    if workload == "W6R":
        return [AttachBytes("attach_bytes"), Repartition(), Weigh()]
    if workload == "W8":  # a new output directory each time (each run writes its own files)
        from benchmarks import w8_scale

        return w8_scale.make_stages()
    raise ValueError(f"no stages for workload {workload!r}")


def make_tasks(n: int, workload: str = "") -> list[Task]:
    """The initial tasks: ``Task(data=i)`` for i in range(n) (ids are set by the framework); W5: documents."""
    if workload == "W5":
        return [Task(data=w5_document(i, n)) for i in range(n)]
    return [Task(data=i) for i in range(n)]


def generate_tasks(n: int) -> Iterator[Task]:
    """:func:`make_tasks`'s tasks made one at a time, as the run reads them (a generator source)."""
    for i in range(n):
        yield Task(data=i)


#: W6 subjects that get a generator source: ``local`` streams it through the map into the shuffle, and
#: ``dict_group`` (its baseline) reads the same generator, so neither holds the 20,000 source tasks
GENERATOR_SOURCE_W6 = ("local", DICT)


def make_source(workload: str, n: int, subject: str) -> Iterable[Task]:
    """What ``subject`` gets as its initial tasks: a generator for W8, W9 and W6 on
    :data:`GENERATOR_SOURCE_W6`, else the list of :func:`make_tasks`."""
    if workload == "W8":
        from benchmarks import w8_scale

        return w8_scale.w8_source(n)
    if workload == "W9" or (workload == "W6" and subject in GENERATOR_SOURCE_W6):
        return generate_tasks(n)
    return make_tasks(n, workload)


def check_outputs(workload: str, n: int, outputs: Sequence[Task],
                  stages: Sequence[ProcessingStage] = ()) -> dict[str, Any]:
    """Verify the outputs (so a broken backend cannot look fast) and return facts about them (W8: what
    its writer, the last of ``stages``, wrote; the run returned no outputs)."""
    facts: dict[str, Any] = {"tasks_out": len(outputs)}
    problems: list[str] = []
    if workload == "W5":
        unique = {normalize(w5_document(i, n)) for i in range(n)}
        if sorted(t.data for t in outputs) != sorted(unique):
            problems.append(f"expected the {len(unique)} distinct normalised documents, got {len(outputs)} outputs")
        facts["unique_documents"] = len(unique)
    elif workload == "W8":
        from benchmarks import w8_scale

        if len(outputs) != 0:
            problems.append(f"return_outputs=False, yet {len(outputs)} outputs came back")
        problems.extend(w8_scale.check_written(stages[-1], n, facts))
    elif workload in ("W6", "W9", "W6R"):
        keys = min(n, W6R_PARTS if workload == "W6R" else W6_KEYS)
        total = sum(t.data["bytes"] for t in outputs)
        facts["shuffled_bytes"] = total
        if len(outputs) != keys or total != n * W3_BLOB_BYTES or sum(t.data["tasks"] for t in outputs) != n:
            problems.append(f"expected {keys} groups holding {n} tasks and {n * W3_BLOB_BYTES} bytes")
    elif len(outputs) != n:
        problems.append(f"expected {n} output tasks, got {len(outputs)}")
    if workload in ("W1", "W2", "W7"):
        values = sorted(t.data for t in outputs)
        if values != list(range(2, n + 2)):
            problems.append("output data is not {i + 2}")
    elif workload == "W3":
        values = sorted(t.data for t in outputs)
        if values != list(range(n)):
            problems.append("output data is not {i}")
        flowed = sum(int(t.metadata.get("dropped_bytes", 0)) for t in outputs)
        facts["intermediate_bytes"] = flowed
        if flowed != n * W3_BLOB_BYTES:
            problems.append(f"expected {n * W3_BLOB_BYTES} intermediate bytes, saw {flowed}")
    facts["correct"] = not problems
    if problems:
        facts["problems"] = problems
    return facts


# -- baselines ------------------------------------------------------------------------------


def dict_group(stages: Sequence[ProcessingStage], tasks: Iterable[Task]) -> list[Task]:
    """W5/W6 with no framework: the map stage's ``process`` in a loop, a plain dict grouping by key,
    then ``reduce`` per group (the limit of what a shuffle can cost in one process). ``tasks`` is read
    once (W6 hands it a generator, as ``local`` gets)."""
    first, shuffle = stages
    groups: dict[Any, list[Task]] = {}
    for task in tasks:
        task = first.process(task)
        for key in shuffle.keys(task):  # type: ignore[attr-defined]
            groups.setdefault(key, []).append(task)
    return [shuffle.reduce(k, g) for k, g in groups.items()]  # type: ignore[attr-defined]


def raydata_groupby(stages: Sequence[ProcessingStage], tasks: Sequence[Task]) -> list[Task]:
    """W5/W6 as a Ray user would write it by hand: Ray Data, ``map`` then ``groupby().map_groups()``."""
    import pickle

    import ray
    import ray.data

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False)
    first, shuffle = stages
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False

    def key_rows(row: dict[str, Any]) -> list[dict[str, Any]]:
        task = first.process(pickle.loads(row["task"]))
        blob = pickle.dumps(task)
        return [{"key": str(k), "task": blob} for k in shuffle.keys(task)]  # type: ignore[attr-defined]

    def reduce_group(group: dict[str, Any]) -> dict[str, Any]:
        members = [pickle.loads(b) for b in group["task"]]
        out = shuffle.reduce(group["key"][0], members)  # type: ignore[attr-defined]
        return {"out": [pickle.dumps(out)]}

    ds = ray.data.from_items([{"task": pickle.dumps(t)} for t in tasks], override_num_blocks=16)
    ds = ds.flat_map(key_rows).groupby("key").map_groups(reduce_group, batch_format="numpy")
    return [pickle.loads(row["out"]) for row in ds.iter_rows()]


def plain_loop(stages: Sequence[ProcessingStage], tasks: Sequence[Task]) -> list[Task]:
    """The same work with no framework: call each stage's ``process`` in a Python loop."""
    out: list[Task] = []
    append = out.append
    procs: list[Callable[[Task], Task]] = [s.process for s in stages]
    for task in tasks:
        for proc in procs:
            task = proc(task)
        append(task)
    return out


class _Chain:
    """Picklable callable that runs one task through every stage (a multiprocessing.Pool job)."""

    def __init__(self, stages: Sequence[ProcessingStage]) -> None:
        self.stages = list(stages)

    def __call__(self, task: Task) -> Task:
        for stage in self.stages:
            task = stage.process(task)
        return task


def pool_map(pool: Any, stages: Sequence[ProcessingStage], tasks: Sequence[Task]) -> list[Task]:
    """The same work on a ``multiprocessing.Pool``: each task runs both stages on one worker."""
    return pool.map(_Chain(stages), tasks, chunksize=1)

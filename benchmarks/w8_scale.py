"""W8 scale: many small tasks from a generator through two map stages into a JSON Lines writer.

The issue's workload: 1,000,000 generated source tasks (100,000 on ``xenna``), two cheap map stages,
then a ``curator_exec_io.JsonlWriter``, run with ``return_outputs=False``; what it measures is the
driver: its RSS must not grow with the number of tasks (the outputs are dropped where they are made,
the source is read lazily), and its cost per task-stage must stay that of W1.

The writer: ``JsonlWriter`` writes one file per task (named from the task id, through a temporary file,
fsynced), which at 1,000,000 tasks would be 1,000,000 files and as many fsyncs, measuring the
filesystem rather than the framework. :class:`BatchJsonlWriter` is that same writer (its naming,
temporary file and rename, JSON encoding) with ``batch_size`` :data:`~benchmarks.workloads.W8_WRITE_BATCH`
and a merging ``process_batch``: every source task still reaches it as its own task, and each batch
of 10,000 tasks becomes one file named from the batch's first task id (100 files at 1,000,000 tasks).

This module imports ``pyarrow`` (through ``curator_exec_io``), so :mod:`benchmarks.workloads` imports it
only for W8; its stages are module-level classes so that they pickle by reference.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

from benchmarks.workloads import W8_WRITE_BATCH
from curator_exec_core import ProcessingStage, Resources, Task
from curator_exec_io import JsonlWriter
from curator_exec_io.writers import as_table

#: attempts of one batch's file (see :meth:`BatchJsonlWriter.process_batch`)
WRITE_ATTEMPTS = 3

__all__ = ["w8_source", "CountChars", "AsRow", "BatchJsonlWriter", "make_stages", "check_written"]


def text_of(i: int) -> str:
    return f"document {i}: the quick brown fox jumps over the lazy dog"


def w8_source(n: int) -> Iterator[Task]:
    """The source: ``Task(data={"i": i, "text": ...})`` made one at a time as the run reads it."""
    for i in range(n):
        yield Task(data={"i": i, "text": text_of(i)})


class CountChars(ProcessingStage):
    """Map 1: a new task with the text's length added."""

    name = "count_chars"
    resources = Resources(cpus=1.0)
    batch_size = 1

    def process(self, task: Task) -> Task:
        data = task.data
        return Task(data={"i": data["i"], "text": data["text"], "chars": len(data["text"])})


class AsRow(ProcessingStage):
    """Map 2: a new task whose data is a one-row table (a list of one row dict, what a writer takes)."""

    name = "as_row"
    resources = Resources(cpus=1.0)
    batch_size = 1

    def process(self, task: Task) -> Task:
        data = task.data
        return Task(data=[{**data, "words": data["text"].count(" ") + 1}])


class BatchJsonlWriter(JsonlWriter):
    """``JsonlWriter`` with one file per batch of ``batch_size`` tasks (the rows of all the batch's tasks,
    in order), named from the batch's first task id; one :class:`~curator_exec_io.WrittenFile` task per
    batch."""

    name = "jsonl_writer"
    resources = Resources(cpus=1.0)
    batch_size = W8_WRITE_BATCH

    def process_batch(self, tasks: list[Task]) -> list[Task]:
        table = as_table([row for task in tasks for row in task.data])
        for attempt in range(WRITE_ATTEMPTS):
            try:
                return [Task(data=self.write(tasks[0].task_id, table))]
            except FileExistsError:
                # curator_exec_io's writer races with itself when two workers share a directory: one
                # removes the empty ``_temporary`` (``_drop_temporary_dir``) between the other's
                # ``os.makedirs(exist_ok=True)`` failing with EEXIST and its ``isdir`` check, so makedirs
                # raises FileExistsError (its retry loop only catches FileNotFoundError from ``open``).
                # Seen once in 100 files on ray_actor_pool; counted as ``write_retries``.
                if attempt == WRITE_ATTEMPTS - 1:
                    raise
                self.record("write_retries")
        raise AssertionError("unreachable")


def make_stages(write_batch: int = W8_WRITE_BATCH) -> list[ProcessingStage]:
    """W8's stages, writing to a new temporary directory (removed by :func:`check_written`), one file per
    ``write_batch`` tasks."""
    out_dir = tempfile.mkdtemp(prefix="curator-exec-bench-w8-")
    writer = BatchJsonlWriter(out_dir)
    writer.batch_size = write_batch
    return [CountChars(), AsRow(), writer]


def check_written(writer: Any, n: int, facts: dict[str, Any]) -> list[str]:
    """Read back what ``writer`` wrote: every ``i`` of ``range(n)`` exactly once with its ``chars`` and
    ``words``; adds ``files_written``, ``rows_written``, ``bytes_written`` to ``facts``, removes the
    directory and returns the problems found."""
    problems: list[str] = []
    seen = bytearray(n)
    rows = files = size = dupes = bad = 0
    try:
        names = sorted(f for f in os.listdir(writer.path) if f.endswith(".jsonl"))
        for name in names:
            path = os.path.join(writer.path, name)
            files += 1
            size += os.path.getsize(path)
            with open(path, encoding="utf-8") as f:
                for line in f:
                    row = json.loads(line)
                    i = row["i"]
                    rows += 1
                    if not 0 <= i < n or seen[i]:
                        dupes += 1
                        continue
                    seen[i] = 1
                    text = text_of(i)
                    if row["text"] != text or row["chars"] != len(text) or row["words"] != len(text.split()):
                        bad += 1
        leftovers = [f for f in os.listdir(writer.path) if not f.endswith(".jsonl")]
    finally:
        shutil.rmtree(writer.path, ignore_errors=True)
    facts.update(files_written=files, rows_written=rows, bytes_written=size)
    if rows != n or dupes or seen.count(0):
        problems.append(f"expected the rows 0..{n - 1} once each, read {rows} rows ({dupes} duplicate or out of "
                        f"range, {seen.count(0)} missing)")
    if bad:
        problems.append(f"{bad} rows with wrong fields")
    if leftovers:
        problems.append(f"left in the output directory: {leftovers[:5]}")
    expected_files = -(-n // writer.batch_size)
    facts["files_expected_at_least"] = expected_files
    if files < expected_files:
        problems.append(f"expected at least {expected_files} files, found {files}")
    return problems

"""The ``local`` executor: one worker per stage, in this process, tasks streamed depth-first.

Stages are chained as generators, so a task goes through every stage before the
next one is pulled in: memory holds one batch per stage plus the final outputs,
not every intermediate. Everything else (ids, failures, retries, setup on node,
counts) comes from the core's managed stages. A shuffle stage is grouped in this
process, spilling its keyed pieces to disk past ``shuffle_memory_budget``.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Iterable, Iterator
from typing import Any

import attrs

from curator_exec_core import BaseExecutor, Capacity, ExecutorOptions, Task, WorkerMetadata
from curator_exec_core.capacity import local_capacity
from curator_exec_core.config import option
from curator_exec_core.errors import ConfigError
from curator_exec_core.runner import ManagedStage
from curator_exec_core.runner.chain import stream_stages
from curator_exec_core.shuffle import ManagedShuffle, group_in_process

#: ``shuffle_memory_budget="auto"``: this share of the machine's memory (cgroup limit respected)
AUTO_BUDGET_SHARE = 0.25
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*|%)\s*$", re.IGNORECASE)


def parse_memory_budget(value: int | str | None, memory: int | None = None) -> int | None:
    """Bytes from a ``shuffle_memory_budget`` value: ``None`` (never spill), an int of bytes, or a string:
    ``"auto"`` (a quarter of ``memory``), a size (``"512MiB"``, ``"2GB"``, ``"1.5g"``: KB/MB/GB/TB are
    powers of 1000, KiB/MiB/GiB/TiB and K/M/G/T powers of 1024) or a share of ``memory`` (``"25%"``).
    ``memory`` defaults to this machine's (:func:`local_capacity`). Raises ``ValueError``."""
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        if value is not None and value < 0:
            raise ValueError(f"a memory budget must be >= 0 bytes, got {value}")
        return value
    if not isinstance(value, str):
        raise ValueError(f"a memory budget is an int of bytes, a string such as '1GiB', '25%' or 'auto', or None; "
                         f"got {value!r}")
    text = value.strip().lower()
    if text == "auto":
        text = f"{AUTO_BUDGET_SHARE * 100:g}%"
    match = _SIZE.match(text)
    if match is None or match.group(2) not in (*_UNITS, "%"):
        raise ValueError(f"cannot read {value!r} as a memory budget: give bytes (an int), a size such as '512MiB' "
                         "or '2GB', a share of the machine's memory such as '25%', or 'auto'")
    number, unit = float(match.group(1)), match.group(2)
    if unit == "%":
        if memory is None:
            memory = local_capacity().nodes[0].memory
        return int(memory * number / 100)
    return int(number * _UNITS[unit])


@attrs.define(kw_only=True)
class LocalOptions(ExecutorOptions):
    """Options of ``local``: the common ones, and the in-process shuffle's memory budget and spill directory."""

    shuffle_memory_budget: int | str | None = option(
        "auto", (int, str),
        "Memory a shuffle stage may hold for its keyed tasks before it spills them to disk and reduces them "
        "partition by partition: bytes (an int), a size ('512MiB', '2GB'), a share of this machine's memory "
        "('25%'), 'auto' (25% of the machine's memory, cgroup limit respected), or None (never spill).",
        allow_none=True)
    shuffle_spill_dir: str | None = option(
        None, str, "Directory under which a shuffle makes its private spill directory (mode 0700, removed after "
        "the stage). None: the system's temporary directory (TMPDIR).", allow_none=True)

    @shuffle_memory_budget.validator
    def _check_budget(self, attribute: attrs.Attribute[Any], value: Any) -> None:
        if isinstance(value, str) or (isinstance(value, int) and value < 0):
            try:
                parse_memory_budget(value, memory=1 << 30)
            except ValueError as exc:
                raise ConfigError(f"option {attribute.name!r}: {exc}") from None


class LocalExecutor(BaseExecutor):
    """Runs a pipeline sequentially in the calling process.

    Options: those of every executor (``ignore_failures``, ``max_retries``,
    ``show_progress``, ``progress_interval``, ``ignore_head_node``, ...), plus
    ``shuffle_memory_budget`` and ``shuffle_spill_dir`` for shuffle stages. The
    capacity is this machine; the plan has one worker per stage.
    """

    name = "local"
    Options = LocalOptions
    options: LocalOptions
    concurrent_stages = False
    streams_input = True  # tasks are pulled through the stages (and shuffles) as they are needed

    def capacity(self) -> Capacity:
        cap = local_capacity()
        return cap.without_head() if self.ignore_head_node else cap

    def plan_options(self) -> dict:
        return {"max_workers_per_stage": 1}

    def execute(self, stages: list[ManagedStage], initial_tasks: Iterable[Task]) -> Iterable[Task]:
        """The outputs as a generator (a run reads it as it goes; ``streams_input``): a task is pulled
        from ``initial_tasks`` only when the stages ahead of it have room."""
        if not self.is_prepared(stages):  # called directly with plain stages: the whole lifecycle
            return self.execute_unprepared(stages, initial_tasks)
        return stream_stages(stages, initial_tasks)

    def shuffle_memory_budget(self) -> int | None:
        """The ``shuffle_memory_budget`` option in bytes (None: never spill)."""
        return parse_memory_budget(self.options.shuffle_memory_budget)

    def run_barrier(self, stage: ManagedStage, tasks: list[Task]) -> list[Task]:
        """A shuffle stage grouped in this process under ``shuffle_memory_budget`` (see
        :meth:`iter_shuffle`); any other barrier as the core runs it. ``tasks`` may be any iterable
        (read once)."""
        if isinstance(stage, ManagedShuffle):
            return list(self.iter_shuffle(stage, tasks))
        return super().run_barrier(stage, tasks)

    def stream_barrier(self, stage: ManagedStage, tasks: Iterable[Task]) -> Iterable[Task]:
        """A shuffle as an iterator (:meth:`iter_shuffle`): the tasks before it stream in, its outputs
        stream out, and what it holds is bounded by ``shuffle_memory_budget``."""
        if isinstance(stage, ManagedShuffle):
            return self.iter_shuffle(stage, tasks)
        return super().stream_barrier(stage, tasks)

    def iter_shuffle(self, stage: ManagedShuffle, tasks: Iterable[Task]) -> Iterator[Task]:
        """One shuffle worker as an iterator: setup, key ``tasks`` (read once), then the failure
        records and the outputs partition by partition, teardown when it ends, raises or is closed."""
        budget = self.shuffle_memory_budget()
        stage.setup(WorkerMetadata(worker_id=f"{self.executor_name}:{os.getpid()}:{stage.index}",
                                   node_id=socket.gethostname()))
        try:
            yield from group_in_process(stage, tasks, memory_budget=budget, spill_dir=self.options.shuffle_spill_dir)
        finally:
            stage.teardown()


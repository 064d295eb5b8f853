"""A run's initial tasks as the run reads them: any iterable (a list, a generator), read lazily.

:class:`Source` gives every task without an id its position (as a list's index would), checks
that every item is a :class:`~curator_exec_core.tasks.Task`, counts what it has read, and hands the
tasks out one by one (to an executor that streams, :attr:`BaseExecutor.streams_input`) or in
windows of ``window`` tasks (to one that takes a list: its ``execute`` is called once per window).
Nothing reads a generator further than its consumer asks, so the driver holds at most a window of
source tasks (plus what the engine has in flight), never the whole source.

A checkpointed run sets :attr:`Source.checker`: every window (or, for a consumer that reads task by
task, every :data:`CHECK_CHUNK` tasks) is handed to its ``check`` before any of it is handed out,
and its ``end`` is called once the iterable is exhausted, before the last tasks are handed out (the
checkpoint records the tasks, or refuses them, before their work starts).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Sized

from curator_exec_core.tasks import EmptyTask, Task

__all__ = ["Source", "DEFAULT_WINDOW"]

#: source tasks per ``execute`` call for an executor that takes lists
DEFAULT_WINDOW = 10_000

#: tasks read (and checked) at a time for a consumer that reads task by task, in a checkpointed run
CHECK_CHUNK = 1024


class Source:
    """``initial_tasks`` (``None``: one :class:`EmptyTask`), read once, lazily."""

    def __init__(self, initial_tasks: Iterable[Task] | None) -> None:
        items: Iterable[Task] = [EmptyTask()] if initial_tasks is None else initial_tasks
        if isinstance(items, (str, bytes)) or not isinstance(items, Iterable):
            raise TypeError(f"initial_tasks must be an iterable of Tasks (a list, a generator), got "
                            f"{type(items).__name__}")
        #: how many tasks the source holds, when it knows (a list); None for a generator
        self.total: int | None = len(items) if isinstance(items, Sized) else None
        self._items = iter(items)
        self._peeked: list[Task] = []
        self._all: list[Task] | None = None
        self.read = 0  # tasks read from the iterable so far
        #: ``(check, end)``: ``check(tasks)`` for every batch read before it is handed out; ``end()``
        #: once the iterable is exhausted (a checkpointed run: see the module docstring)
        self.checker: tuple[Callable[[list[Task]], None], Callable[[], None]] | None = None

    @property
    def lazy(self) -> bool:
        """Whether the size is unknown (a generator or another iterator)."""
        return self.total is None

    def _prepared(self, task: object) -> Task:
        if not isinstance(task, Task):
            raise TypeError(f"initial_tasks[{self.read}] is {type(task).__name__}, not a Task")
        if not task.task_id:
            task.task_id = str(self.read)
        self.read += 1
        return task

    def empty(self) -> bool:
        """Whether the source holds no task (reads at most one)."""
        if self._all is not None:
            return not self._all
        if self._peeked:
            return False
        for task in self._items:
            self._peeked.append(self._prepared(task))
            return False
        return True

    def _raw(self) -> Iterator[Task]:
        while self._peeked:
            yield self._peeked.pop(0)
        for task in self._items:
            yield self._prepared(task)

    def _batches(self, size: int) -> Iterator[list[Task]]:
        """Lists of at most ``size`` tasks as they are read, each checked before it is handed out."""
        if self._all is not None:
            for start in range(0, len(self._all), max(1, size)):
                yield self._all[start:start + max(1, size)]
            return
        it = self._raw()
        while True:
            batch = list(itertools.islice(it, max(1, size)))
            if self.checker is not None:
                if batch:
                    self.checker[0](batch)
                if len(batch) < size:
                    self._end()
            if not batch:
                return
            yield batch

    def _end(self) -> None:
        if self.checker is not None:
            end, self.checker = self.checker[1], None
            end()

    def __iter__(self) -> Iterator[Task]:
        if self._all is not None:
            yield from self._all
        elif self.checker is None:
            yield from self._raw()
        else:
            for batch in self._batches(CHECK_CHUNK):
                yield from batch

    def whole(self) -> Iterable[Task]:
        """The source for a consumer that reads as it goes: a list stays a list, a generator is an iterator."""
        return iter(self) if self.lazy else self.all()

    def windows(self, size: int = DEFAULT_WINDOW) -> Iterator[list[Task]]:
        """The tasks as lists of at most ``size``, read as they are asked for."""
        return self._batches(size)

    def all(self) -> list[Task]:
        """Every task at once (what a run that needs the whole source, a checkpoint's identity, reads);
        the same list on every call, and iterating the source afterwards gives it again."""
        if self._all is None:
            self._all = list(self)
            self.total = len(self._all)
        return self._all

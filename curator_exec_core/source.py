"""A run's initial tasks as the run reads them: any iterable (a list, a generator), read lazily.

:class:`Source` gives every task without an id its position (as a list's index would), checks
that every item is a :class:`~curator_exec_core.tasks.Task`, counts what it has read, and hands the
tasks out one by one (to an executor that streams, :attr:`BaseExecutor.streams_input`) or in
windows of ``window`` tasks (to one that takes a list: its ``execute`` is called once per window).
Nothing reads a generator further than its consumer asks, so the driver holds at most a window of
source tasks (plus what the engine has in flight), never the whole source.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sized

from curator_exec_core.tasks import EmptyTask, Task

__all__ = ["Source", "DEFAULT_WINDOW"]

#: source tasks per ``execute`` call for an executor that takes lists
DEFAULT_WINDOW = 10_000


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
        if self._peeked:
            return False
        for task in self._items:
            self._peeked.append(self._prepared(task))
            return False
        return True

    def __iter__(self) -> Iterator[Task]:
        if self._all is not None:
            yield from self._all
            return
        while self._peeked:
            yield self._peeked.pop(0)
        for task in self._items:
            yield self._prepared(task)

    def whole(self) -> Iterable[Task]:
        """The source for a consumer that reads as it goes: a list stays a list, a generator is an iterator."""
        return iter(self) if self.lazy else self.all()

    def windows(self, size: int = DEFAULT_WINDOW) -> Iterator[list[Task]]:
        """The tasks as lists of at most ``size``, read as they are asked for."""
        it = iter(self)
        while True:
            window = list(itertools.islice(it, max(1, size)))
            if not window:
                return
            yield window

    def all(self) -> list[Task]:
        """Every task at once (what a run that needs the whole source, a checkpoint's identity, reads);
        the same list on every call, and iterating the source afterwards gives it again."""
        if self._all is None:
            self._all = list(self)
            self.total = len(self._all)
        return self._all

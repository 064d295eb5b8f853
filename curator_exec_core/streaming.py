"""``Pipeline.stream``: a run's outputs as an iterator, from a bounded buffer.

The run goes on in a background thread; its outputs reach the consumer through a queue of at most
``buffer`` tasks. A consumer that stops reading holds the run back (the run waits to hand over
its next outputs, and an executor that streams its input stops reading the source), instead of
letting outputs pile up. When the iterator is exhausted, :attr:`RunStream.result` holds the
run's :class:`~curator_exec_core.tasks.PipelineResult` (metrics, failure records; no outputs: they
went to the consumer). Closing it early (``close()``, leaving a ``with`` block, dropping it) stops
the run: its workers are torn down as after any error, and ``close()`` returns when they are.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from curator_exec_core.errors import CuratorExecError
from curator_exec_core.tasks import PipelineResult, Task

if TYPE_CHECKING:  # pragma: no cover
    from curator_exec_core.executor import BaseExecutor
    from curator_exec_core.stages import ProcessingStage

__all__ = ["RunStream", "StreamClosed"]

_DONE = object()


class StreamClosed(CuratorExecError):
    """The consumer closed the stream: the run stops (raised inside the run's thread)."""


class RunStream(Iterator[Task]):
    """The outputs of one run, as they finish. Iterate it; ``result`` once exhausted; ``close()``."""

    def __init__(self, executor: BaseExecutor, stages: Sequence[ProcessingStage[Any, Any]],
                 initial_tasks: Iterable[Task] | None, *, buffer: int = 1024,
                 checkpoint_path: str | os.PathLike[str] | None = None, overwrite: bool = False) -> None:
        from curator_exec_core.run import SINK_BATCH

        self.result: PipelineResult | None = None
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max(1, buffer // SINK_BATCH))
        self._closed = threading.Event()
        self._error: BaseException | None = None
        self._pending: list[Task] = []
        self._finished = False
        self._args = (executor, list(stages), initial_tasks, checkpoint_path, overwrite)
        self._thread = threading.Thread(target=self._main, name="curator-exec-stream", daemon=True)
        self._thread.start()

    # -- the run's side --------------------------------------------------------------
    def _main(self) -> None:
        from curator_exec_core.run import Run

        executor, stages, initial_tasks, checkpoint_path, overwrite = self._args
        self._args = None  # type: ignore[assignment]  # the source is the run's now
        try:
            with executor._run_lock:
                self.result = Run(executor, stages, initial_tasks, checkpoint_path=checkpoint_path,
                                  overwrite=overwrite, sink=self._put).drive()
        except BaseException as exc:  # the consumer gets it (a StreamClosed it asked for is dropped)
            self._error = exc
        finally:
            self._hand(_DONE)

    def _hand(self, item: Any) -> None:
        """Put ``item`` in the queue, waiting while it is full, unless the consumer has closed."""
        while not self._closed.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue
        if item is not _DONE:
            raise StreamClosed("the consumer closed the stream")

    def _put(self, tasks: list[Task]) -> None:
        self._hand(list(tasks))

    # -- the consumer's side -----------------------------------------------------------
    def __iter__(self) -> RunStream:
        return self

    def __next__(self) -> Task:
        while not self._pending:
            if self._finished:
                raise StopIteration
            item = self._queue.get()
            if item is _DONE:
                self._finished = True
                self._thread.join()
                if self._error is not None and not isinstance(self._error, StreamClosed):
                    error, self._error = self._error, None
                    raise error
                raise StopIteration
            self._pending = item[::-1]
        return self._pending.pop()

    def close(self) -> None:
        """Stop the run (if it is still going) and wait until it has torn down."""
        if self._finished:
            return
        self._closed.set()
        while self._thread.is_alive():
            try:
                self._queue.get(timeout=0.1)  # unblock a waiting put
            except queue.Empty:
                pass
            self._thread.join(timeout=0.1)
        self._finished = True
        self._pending = []

    def __enter__(self) -> RunStream:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        if not getattr(self, "_finished", True):
            self._closed.set()

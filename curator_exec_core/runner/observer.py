"""What the runner tells an observer of the tasks it makes and drops (a checkpoint's journal).

The runner knows nothing of checkpoints: a stage may carry an ``observer``, and the runner
calls it at three points. With none (every run without a checkpoint) the runner does nothing
more than one ``is None`` test per call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # pragma: no cover
    from curator_exec_core.runner.stage import ManagedStage
    from curator_exec_core.tasks import Task

__all__ = ["RunnerObserver"]


class RunnerObserver(Protocol):
    """Observes one stage's work (it must pickle: a worker gets it with its stage)."""

    def derived(self, stage: ManagedStage, inputs: list[Task], outputs: list[Task]) -> None:
        """``outputs`` were made from ``inputs`` together: one from one (a map keeping the id),
        several from one (fan-out), any from a whole batch (a merging ``process_batch``); no
        outputs: the inputs were dropped (a filter, an empty fan-out)."""

    def call_done(self, stage: ManagedStage, outputs: list[Task]) -> None:
        """A call of ``stage.process_batch`` returned ``outputs`` (failure records included)."""

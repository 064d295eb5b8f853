"""The stage kinds, as one table.

A kind says, in one place, how the core manages a stage of it (the managed class), whether it is a
barrier (it needs its whole input before it can start), how the core runs it in process when the
executor does not run it itself, and what the plan must check for it. ``native_stage_kinds`` of an
executor names kinds of this table. Adding a kind is one :func:`register_stage_kind` call.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs

from curator_exec_core.gang import GangStage, ManagedGang, run_gang_in_threads
from curator_exec_core.planning import check_gang
from curator_exec_core.runner.stage import ManagedStage
from curator_exec_core.shuffle import ManagedShuffle, ShuffleStage, group_in_process
from curator_exec_core.stages import ProcessingStage, WorkerMetadata
from curator_exec_core.tasks import Task

if TYPE_CHECKING:  # pragma: no cover
    from curator_exec_core.capacity import Capacity
    from curator_exec_core.planning import StagePlan

__all__ = ["StageKind", "register_stage_kind", "stage_kinds", "kind_of", "kind_named", "manage"]

#: how the core runs a barrier stage in this process: (set-up-able stage, its whole input, worker id
#: prefix) -> failure records that came in or were made, then the outputs
InProcessRunner = Callable[[Any, list[Task], str], list[Task]]
#: a plan-time check: (user stage, its stage plan, capacity, executor name); raises PlanError
PlanCheck = Callable[[Any, "StagePlan", "Capacity", str], None]


@attrs.frozen
class StageKind:
    """One kind of stage."""

    name: str
    stage_type: type[ProcessingStage[Any, Any]]
    managed_type: type[ManagedStage]
    #: the stage needs all of its input before it starts (the pipeline splits before it)
    barrier: bool = False
    run_in_process: InProcessRunner | None = None
    check_plan: PlanCheck | None = None


def _shuffle_in_process(stage: ManagedShuffle, tasks: list[Task], worker_prefix: str) -> list[Task]:
    """One worker in this process: setup, key every task, reduce every group, teardown."""
    stage.setup(WorkerMetadata(worker_id=f"{worker_prefix}:{os.getpid()}:{stage.index}",
                               node_id=socket.gethostname()))
    try:
        return list(group_in_process(stage, tasks))
    finally:
        stage.teardown()


def _check_gang(user: GangStage, stage_plan: StagePlan, capacity: Capacity, executor: str) -> None:
    """All ranks at once or not at all: ranks as requested (never scaled to fit), GPUs as planned."""
    per_rank = attrs.evolve(stage_plan.resources, cpus=user.resources.cpus)
    check_gang(user.name, int(user.gang_size), user.placement_strategy, per_rank, capacity, executor)


_KINDS: list[StageKind] = [
    StageKind("shuffle", ShuffleStage, ManagedShuffle, barrier=True, run_in_process=_shuffle_in_process),
    StageKind("gang", GangStage, ManagedGang, barrier=True, run_in_process=run_gang_in_threads,
              check_plan=_check_gang),
]
_MAP = StageKind("map", ProcessingStage, ManagedStage)


def register_stage_kind(kind: StageKind) -> None:
    """Add a kind (matched before the ones registered earlier; ``map`` is always the fallback)."""
    if any(k.name == kind.name for k in (*_KINDS, _MAP)):
        raise ValueError(f"a stage kind named {kind.name!r} exists already")
    if kind.barrier and kind.run_in_process is None:
        raise ValueError(f"barrier kind {kind.name!r} needs run_in_process (how the core runs it by default)")
    _KINDS.insert(0, kind)


def stage_kinds() -> tuple[StageKind, ...]:
    return (*_KINDS, _MAP)


def kind_of(stage: ProcessingStage[Any, Any]) -> StageKind:
    """The kind of a user stage or of a managed one."""
    if isinstance(stage, ManagedStage):
        return kind_named(stage.kind)
    return next((k for k in _KINDS if isinstance(stage, k.stage_type)), _MAP)


def kind_named(name: str) -> StageKind:
    found = next((k for k in stage_kinds() if k.name == name), None)
    if found is None:
        raise KeyError(f"unknown stage kind {name!r} (known: {', '.join(k.name for k in stage_kinds())})")
    return found


def manage(stage: ProcessingStage[Any, Any], **kwargs: Any) -> ManagedStage:
    """``stage`` wrapped in its kind's managed class (``index``, ``plan``, ``policy``, ``run_id``)."""
    return kind_of(stage).managed_type(stage, **kwargs)

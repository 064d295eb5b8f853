"""A pipeline as typed segments, and the one loop over them.

Barrier stages (a kind whose ``barrier`` is set: shuffle, gang) need their whole input, so a
pipeline is split once into :class:`MapSegment` runs of map stages (they stream) and one
:class:`BarrierSegment` per barrier stage. :func:`run_segments` is the only loop over segments: the
core uses it with the data as task lists in the driver, the Ray layer with the data as chunks in
the object store; only what runs a segment differs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import attrs

from curator_exec_core.runner.kinds import kind_named
from curator_exec_core.runner.stage import ManagedStage

__all__ = ["MapSegment", "BarrierSegment", "Segment", "split_segments", "needs_split", "run_segments"]

D = TypeVar("D")


@attrs.frozen
class MapSegment:
    """Consecutive map stages (``position``: the segment's place in the split)."""

    position: int
    stages: tuple[ManagedStage, ...]

    @property
    def first(self) -> ManagedStage:
        return self.stages[0]

    @property
    def name(self) -> str:
        return "+".join(s.name for s in self.stages)


@attrs.frozen
class BarrierSegment:
    """One barrier stage."""

    position: int
    stage: ManagedStage

    @property
    def first(self) -> ManagedStage:
        return self.stage

    @property
    def stages(self) -> tuple[ManagedStage, ...]:
        return (self.stage,)

    @property
    def kind(self) -> str:
        return self.stage.kind

    @property
    def name(self) -> str:
        return self.stage.name


Segment = MapSegment | BarrierSegment


def split_segments(stages: Sequence[ManagedStage]) -> list[Segment]:
    """``stages`` as segments: runs of map stages, and each barrier stage on its own."""
    out: list[Segment] = []
    run: list[ManagedStage] = []
    for stage in stages:
        if kind_named(stage.kind).barrier:
            if run:
                out.append(MapSegment(len(out), tuple(run)))
                run = []
            out.append(BarrierSegment(len(out), stage))
        else:
            run.append(stage)
    if run:
        out.append(MapSegment(len(out), tuple(run)))
    return out


def needs_split(stages: Sequence[ManagedStage], native: frozenset[str]) -> bool:
    """Whether ``stages`` hold a barrier stage of a kind not in ``native`` (the executor's
    ``native_stage_kinds``): then the core splits the pipeline and runs that barrier itself."""
    return any(kind_named(s.kind).barrier and s.kind not in native for s in stages)


def run_segments(segments: Sequence[Segment], data: D, *,
                 run_map: Callable[[MapSegment, D, bool], D], run_barrier: Callable[[BarrierSegment, D, bool], D],
                 empty: Callable[[D], bool] = lambda d: not d,
                 after: Callable[[Segment, D], None] | None = None) -> D:
    """Run ``segments`` in order, each on what the one before made (``data``); stop early when
    nothing flows on. ``run_*(segment, data, last)``; ``after(segment, outputs)`` follows each."""
    for i, segment in enumerate(segments):
        if empty(data):
            break
        last = i == len(segments) - 1
        if isinstance(segment, MapSegment):
            data = run_map(segment, data, last)
        else:
            data = run_barrier(segment, data, last)
        if after is not None:
            after(segment, data)
    return data

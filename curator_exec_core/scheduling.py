"""The schedule phase: where the plan's workers go.

``plan`` says how many workers of what each stage gets; ``schedule`` says where: for every planned
worker of every stage, the node it must run on, or ``None`` to let the engine place it. The core's
default leaves every worker to the engine (``Schedule.unpinned``); the Ray executors pin workers off
the head node when ``ignore_head_node`` is set. A plugin that wraps ``curator_exec_schedule`` can pin a
stage to some nodes (:meth:`Schedule.pin`), and every executor that places workers obeys it (or
refuses, with :class:`~curator_exec_core.errors.PlanError`, a schedule it cannot follow).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import attrs

from curator_exec_core.planning import ExecutionPlan

__all__ = ["StagePlacement", "Schedule"]


def _node_tuple(nodes: Iterable[str | None]) -> tuple[str | None, ...]:
    return tuple(nodes)


@attrs.frozen
class StagePlacement:
    """Where the workers of one stage go: ``nodes[k]`` for worker ``k`` (``None``: the engine decides)."""

    index: int
    name: str
    nodes: tuple[str | None, ...] = attrs.field(converter=_node_tuple)

    @property
    def pinned(self) -> bool:
        """Whether any worker of the stage must run on a given node."""
        return any(n is not None for n in self.nodes)

    @property
    def node_set(self) -> frozenset[str]:
        """The nodes this stage's pinned workers may run on."""
        return frozenset(n for n in self.nodes if n is not None)


def _placement_tuple(stages: Iterable[StagePlacement]) -> tuple[StagePlacement, ...]:
    return tuple(stages)


def _node_set(nodes: Iterable[str]) -> frozenset[str]:
    return frozenset(nodes)


@attrs.frozen
class Schedule:
    """Per stage (by index) where its planned workers run; ``excluded``: nodes no worker may use
    (the head node with ``ignore_head_node``), for engines that place workers themselves."""

    stages: tuple[StagePlacement, ...] = attrs.field(converter=_placement_tuple)
    excluded: frozenset[str] = attrs.field(default=frozenset(), converter=_node_set)

    @classmethod
    def unpinned(cls, plan: ExecutionPlan, excluded: Sequence[str] = ()) -> Schedule:
        """Every worker placed by the engine (never on ``excluded`` nodes)."""
        return cls((StagePlacement(sp.index, sp.name, (None,) * sp.workers) for sp in plan.stages), excluded)

    @classmethod
    def from_nodes(cls, plan: ExecutionPlan, nodes: Sequence[Sequence[str | None]],
                   excluded: Sequence[str] = ()) -> Schedule:
        """``nodes[i][k]``: the node of worker ``k`` of stage ``i``."""
        return cls((StagePlacement(sp.index, sp.name, tuple(n)) for sp, n in zip(plan.stages, nodes, strict=True)),
                   excluded)

    def stage(self, index: int) -> StagePlacement:
        for sp in self.stages:
            if sp.index == index:
                return sp
        raise KeyError(index)

    def nodes(self, index: int) -> list[str | None] | None:
        """The node of each worker of stage ``index``, or None if the engine places them all."""
        placement = self.stage(index)
        return list(placement.nodes) if placement.pinned else None

    @property
    def pinned(self) -> bool:
        return any(sp.pinned for sp in self.stages)

    def pin(self, index: int, nodes: Sequence[str]) -> Schedule:
        """A copy with every worker of stage ``index`` on ``nodes`` (round robin)."""
        if not nodes:
            raise ValueError("pin() needs at least one node")
        placed = [attrs.evolve(sp, nodes=tuple(nodes[k % len(nodes)] for k in range(max(1, len(sp.nodes)))))
                  if sp.index == index else sp for sp in self.stages]
        return attrs.evolve(self, stages=tuple(placed))

    def describe(self) -> str:
        lines = ["Schedule:" + (f" (never on {', '.join(sorted(n[:12] for n in self.excluded))})"
                                if self.excluded else "")]
        for sp in self.stages:
            where = ", ".join(n[:12] if n else "any" for n in sp.nodes) if sp.pinned else "placed by the engine"
            lines.append(f"  {sp.index:>2}  {sp.name[:28]:<28} {where}")
        return "\n".join(lines)

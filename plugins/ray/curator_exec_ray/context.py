"""The Ray layer's view of one run: :class:`RayRun`, built by :class:`RayExecutorBase` for each run.

Everything the layer's shuffle, gang, coordinator and the plugins need from a run and from the
executor's Ray options, typed, in one object; the layer never reaches into an executor.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs

from curator_exec_core.errors import CuratorExecError
from curator_exec_core.run import Run
from curator_exec_core.runner import ManagedStage

if TYPE_CHECKING:  # pragma: no cover
    from curator_exec_ray.session import RaySession

__all__ = ["RayRun"]


@attrs.frozen
class RayRun:
    """One run, as the Ray layer sees it."""

    #: the core's run: id, plan, schedule, stats
    run: Run
    #: the executor's ``runtime_env`` for the workers it creates (None: none)
    runtime_env: Mapping[str, Any] | None
    #: seconds a stage's workers may take to start (the ``actor_start_timeout`` option)
    start_timeout: float
    #: seconds the workers' teardown may take at the end (the ``teardown_timeout`` option)
    teardown_timeout: float
    show_progress: bool
    progress_interval: float
    #: attach to Ray (start a local one if none runs); returns the session
    ensure_ray: Callable[[], RaySession]
    #: seconds workers may wait to be placed before a warning, then between warnings (the
    #: ``placement_warning_s`` option; None or 0: no warning)
    placement_warning_s: float | None = 30.0

    @property
    def id(self) -> str:
        return self.run.id

    def report(self, index: int, counts: Sequence[Any]) -> None:
        """Stage ``index`` did ``counts`` (tasks in, outputs, new failure records) on a worker."""
        self.run.report(index, counts)

    def report_all(self, counts: Mapping[int, Sequence[Any]] | None) -> None:
        """Counts of several stages (what a chunk carries back)."""
        if counts:
            self.run.stats.add_all(counts)

    def nodes(self, stage: ManagedStage) -> list[str | None] | None:
        """The schedule's node for each worker of ``stage``, or None if Ray places them."""
        schedule = self.run.schedule
        return None if schedule is None else schedule.nodes(stage.index)

    def worker_nodes(self, stage: ManagedStage) -> list[str | None]:
        """Nodes to spread work of ``stage`` over that the layer places itself (a shuffle's insert and
        reduce): the schedule's pins; else the alive nodes it does not exclude; else ``[None]`` (anywhere)."""
        pinned = [n for n in (self.nodes(stage) or []) if n]
        if pinned:
            return list(pinned)
        excluded = self.run.schedule.excluded if self.run.schedule is not None else frozenset()
        if excluded:
            from curator_exec_ray.cluster import alive_nodes

            allowed = sorted(n["NodeID"] for n in alive_nodes() if n["NodeID"] not in excluded)
            if allowed:
                return list(allowed)
        return [None]

    def placement(self, stages: Sequence[ManagedStage]) -> list[list[str | None]] | None:
        """The nodes of every worker of every stage, or None if Ray places them all."""
        nodes = [self.nodes(s) for s in stages]
        if all(n is None for n in nodes):
            return None
        return [n if n is not None else [None] * (s.num_workers() or 1) for s, n in zip(stages, nodes, strict=True)]

    def allowed_nodes(self, stage: ManagedStage) -> tuple[frozenset[str], frozenset[str]]:
        """For an engine that places workers itself: (the nodes ``stage`` must run on, empty for any;
        the nodes it must not run on)."""
        schedule = self.run.schedule
        if schedule is None:
            return frozenset(), frozenset()
        return schedule.stage(stage.index).node_set, schedule.excluded

    def remote_env(self) -> dict[str, Any]:
        """``runtime_env=`` for a worker this run creates ({} if none)."""
        return {"runtime_env": dict(self.runtime_env)} if self.runtime_env else {}

    def start_timeout_error(self, stage: ManagedStage, cls: type[Exception] | None = None, *,
                            placed: int = 0, wanted: int | None = None, request: str | None = None,
                            unit: str = "workers") -> Exception:
        """The error for a stage whose workers Ray could not start within ``start_timeout``:
        ``placed`` of ``wanted`` started, each asking Ray for ``request`` (default: the stage's
        resources), and what every node has free."""
        from curator_exec_ray.waiting import cluster_free, worker_request

        wanted = wanted if wanted is not None else (stage.num_workers() or 1)
        request = request or worker_request(stage.resources.cpus, stage.resources.gpus)
        return (cls or CuratorExecError)(
            f"stage {stage.name!r}: no worker started within actor_start_timeout={self.start_timeout:g}s "
            f"({placed} of {wanted} {unit} placed; each asks Ray for {request}; free (free/total): "
            f"{cluster_free()}). Is the cluster busy, or a node gone? Raise the executor's actor_start_timeout "
            "option to wait longer.")

"""Gang stages: a fixed group of workers that start together, know their rank and talk to each other.

A :class:`GangStage` runs ``gang_size`` ranks at once: rank 0's ``gang_root()`` (on rank 0's
instance, before any setup) returns a picklable value every rank gets in
``worker_metadata.gang.root`` (an address to rendezvous at, an NCCL unique id); every rank's
``setup`` runs at the same time (communicator init is collective), then every rank's
``process_batch`` is called once, at the same time, with its share of all the stage's input.
:class:`ManagedGang` is the rank's side of the core's runner; backends only start the ranks.
"""

from __future__ import annotations

import copy
import os
import socket
import threading
import time
from collections.abc import Sequence
from typing import Any, ClassVar

from curator_exec_core.errors import StageFailedError
from curator_exec_core.runner import ManagedStage, task_order
from curator_exec_core.stages import GangInfo, ProcessingStage, WorkerMetadata
from curator_exec_core.tasks import FailedTask, Task

__all__ = ["GangStage", "ManagedGang", "PLACEMENT_STRATEGIES", "run_gang_in_threads"]

#: seconds the other ranks get to finish once one has failed (they may wait on it in a collective)
FAILURE_GRACE = 30.0
#: how a gang's ranks are spread over the nodes (Ray placement group strategies)
PLACEMENT_STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")


class GangStage(ProcessingStage):
    """``gang_size`` ranks that start together and may run collectives (RAFT/NCCL, torch.distributed).

    * ``gang_size``: fixed (never autoscaled); the planner checks that the ranks fit.
    * ``resources``: per rank. ``placement_strategy``: ``"PACK"`` (default), ``"SPREAD"``,
      ``"STRICT_PACK"`` or ``"STRICT_SPREAD"`` (one rank per node).
    * ``gang_root()``: on rank 0's own instance (the one that then runs rank 0's ``setup`` and
      ``process_batch``, so it may keep what it made: a listening socket, an NCCL unique id),
      before any rank's ``setup``; its (picklable) return value reaches every rank as
      ``worker_metadata.gang.root``.
    * ``setup(worker_metadata)``: all ranks at once; ``worker_metadata.gang`` has ``rank``,
      ``size`` and ``root``.
    * ``process_batch(tasks)``: every rank once, all at the same time, with its share of all the
      stage's input: the tasks in ``task_id`` order, cut into ``gang_size`` near-equal runs; rank
      ``r`` gets run ``r``. Outputs get ids as from any ``process_batch``.
    * A rank that raises fails the stage (``max_retries`` does not apply: a rank cannot run a
      collective alone); ``teardown`` runs on every rank, also after a failure.
    """

    gang_size: int = 1
    placement_strategy: str = "PACK"

    def gang_root(self) -> Any:
        """Rank 0, before any setup: what every rank gets as ``worker_metadata.gang.root``."""
        return None

    def num_workers(self) -> int | None:
        return int(self.gang_size)


class ManagedGang(ManagedStage):
    """A :class:`GangStage` as the core runs it: the shares, rank 0's root, a rank's setup and run."""

    stage: GangStage
    kind: ClassVar[str] = "gang"

    def __init__(self, stage: ProcessingStage, **kwargs: Any) -> None:
        if not isinstance(stage, GangStage):
            raise TypeError(f"stage {stage.name!r} is not a GangStage")
        if stage.placement_strategy not in PLACEMENT_STRATEGIES:
            raise ValueError(f"gang stage {stage.name!r}: placement_strategy must be one of "
                             f"{', '.join(PLACEMENT_STRATEGIES)}, got {stage.placement_strategy!r}")
        super().__init__(stage, **kwargs)

    @property
    def size(self) -> int:
        return max(1, int(self.stage.gang_size))

    def shares(self, tasks: Sequence[Task]) -> list[list[Task]]:
        """Every input task on exactly one rank, evenly, in ``task_id`` order (failure records aside)."""
        picks = self.share_positions([None if isinstance(t, FailedTask) else t.task_id for t in tasks])
        return [[tasks[i] for i in pick] for pick in picks]

    def share_positions(self, ids: Sequence[str | None]) -> list[list[int]]:
        """:meth:`shares` from the inputs' task ids alone (``None``: a failure record, on no rank):
        for each rank, the positions in ``ids`` of its share, in the order the share holds them
        (``task_id`` order; equal ids keep their input order). A driver that holds only ids and
        references (the Ray layer) cuts the shares with it."""
        work = sorted((i for i, tid in enumerate(ids) if tid is not None), key=lambda i: task_order(ids[i] or ""))
        n, k = len(work), self.size
        bounds = [n * r // k for r in range(k + 1)]
        return [work[bounds[r]:bounds[r + 1]] for r in range(k)]

    def root(self) -> Any:
        """``gang_root()`` on this instance: call it on rank 0's, which then runs rank 0's setup."""
        return self.stage.gang_root()

    def setup_rank(self, rank: int, root: Any, worker_id: str, node_id: str = "", allocation: Any = None) -> None:
        self.setup(WorkerMetadata(worker_id=worker_id, node_id=node_id or socket.gethostname(),
                                  allocation=allocation, gang=GangInfo(rank=rank, size=self.size, root=root)))

    def process_batch(self, tasks: list[Task]) -> list[Task]:
        raise TypeError(f"gang stage {self.name!r} runs its ranks' shares with run_share(), not process_batch()")

    def run_share(self, share: list[Task]) -> list[Task]:
        """This rank's one ``process_batch`` call on its share (no retries: the ranks run together)."""
        return self.run_once(share)


def run_gang_in_threads(stage: ManagedGang, tasks: list[Task], worker_prefix: str) -> list[Task]:
    """The gang in this process: one thread per rank, each on its own copy of the stage (so a
    localhost rendezvous works, and a pipeline developed locally runs unchanged on a cluster).
    Rank 0's ``gang_root()`` runs on rank 0's copy. The ranks' counts go to ``stage.stats``."""
    shares = stage.shares(tasks)
    records = [t for t in tasks if isinstance(t, FailedTask)]
    ranks = [copy.deepcopy(stage) for _ in range(stage.size)]
    for rank in ranks:
        rank.stats = stage.stats
    root = ranks[0].root()
    outputs: list[list[Task]] = [[] for _ in ranks]
    errors: list[BaseException | None] = [None] * len(ranks)

    def rank_main(r: int) -> None:
        rank = ranks[r]
        try:
            rank.setup_rank(r, root, f"{worker_prefix}:{os.getpid()}:{stage.index}:rank{r}")
            outputs[r] = rank.run_share(shares[r])
        except BaseException as exc:  # reported below; the other ranks may hang on a collective
            errors[r] = exc
        finally:
            try:
                rank.teardown()
            except Exception as exc:
                errors[r] = errors[r] or exc

    threads = [threading.Thread(target=rank_main, args=(r,), name=f"{stage.name}-rank{r}", daemon=True)
               for r in range(len(ranks))]
    for t in threads:
        t.start()
    _join_ranks(threads, errors)
    failed = [e for e in errors if e is not None]
    if failed:
        raise next((e for e in failed if isinstance(e, StageFailedError)), failed[0])
    return records + [t for out in outputs for t in out]


def _join_ranks(threads: list[threading.Thread], errors: list[BaseException | None]) -> None:
    """Wait for the rank threads; once one failed, the others get ``FAILURE_GRACE`` seconds (they
    may be blocked on the failed rank in a collective)."""
    failed_at: float | None = None
    while any(t.is_alive() for t in threads):
        for t in threads:
            t.join(timeout=0.1)
        if any(e is not None for e in errors):
            failed_at = failed_at or time.monotonic()
            if time.monotonic() - failed_at > FAILURE_GRACE:
                break

"""Where a stage runs on Ray: :class:`StageActor` (an actor that hosts one managed stage), a
stateless stage fetched once per pooled worker process (:func:`stage_in_process`), ``ray.remote``
made once per process (:func:`remote`), and warming a new cluster's workers (:func:`warm_up`)."""

from __future__ import annotations

import functools
import logging
import os
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from curator_exec_core.runner import ManagedStage
from curator_exec_core.stages import WorkerMetadata
from curator_exec_ray.teardown import register

__all__ = ["StageActor", "stage_in_process", "remote", "warm_up"]

logger = logging.getLogger("curator_exec.ray")


class StageActor:
    """The body of an actor that hosts one managed stage (wrap it with ``ray.remote``): ``setup``
    runs the stage's setup (``setup_on_node`` once per node) with this actor's metadata and
    registers it for teardown; ``run(fn, *args)`` calls ``fn(stage, *args)`` in the actor. A gang's
    rank 0 first ``load``s its stage and runs ``root()`` on it, then ``setup(None, ...)`` on the same
    instance."""

    def __init__(self) -> None:
        self.stage: ManagedStage | None = None

    def load(self, stage: ManagedStage) -> None:
        """Hold ``stage`` (not set up yet)."""
        self.stage = stage

    def root(self) -> Any:
        """A gang's ``gang_root()`` on the stage this actor holds (rank 0's own instance)."""
        assert self.stage is not None, "root() before load()"
        return self.stage.root()  # type: ignore[attr-defined]

    def setup(self, stage: ManagedStage | None, worker_id: str, gang: tuple[int, Any] | None = None,
              ) -> dict[str, Any]:
        """``stage.setup`` (``None``: the stage ``load`` gave); for a gang rank (``gang``: its rank and
        rank 0's root), ``setup_rank``."""
        import ray

        ctx = ray.get_runtime_context()
        if stage is not None:
            self.stage = stage
        stage = self.stage
        assert stage is not None, "setup(None) before load()"
        register(stage)
        if gang is not None:
            stage.setup_rank(gang[0], gang[1], worker_id, ctx.get_node_id(), ctx.get_assigned_resources())  # type: ignore[attr-defined]
        else:
            stage.setup(WorkerMetadata(worker_id=worker_id, node_id=ctx.get_node_id(),
                                       allocation=ctx.get_assigned_resources()))
        return {"worker_id": worker_id, "node_id": ctx.get_node_id(), "pid": os.getpid()}

    def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        assert self.stage is not None, "run() before setup()"
        return fn(self.stage, *args)


#: stages of the most recent runs in this (pooled, reused) worker process: run id -> {key: stage}
_task_stages: OrderedDict[str, dict[Any, ManagedStage]] = OrderedDict()
#: runs whose stages a worker process keeps (older runs' are dropped, so they do not pin memory)
TASK_STAGE_RUNS = 2


def stage_in_process(run_id: str, key: Any, stage_box: list[Any]) -> ManagedStage:
    """In a Ray task: the stage of ``stage_box`` (its object ref, boxed so that Ray does not fetch it
    for every call), fetched once per worker process and run. For stages without lifecycle
    methods, which any pooled worker process may run."""
    stages = _task_stages.get(run_id)
    if stages is None:
        stages = _task_stages[run_id] = {}
        while len(_task_stages) > TASK_STAGE_RUNS:
            _task_stages.popitem(last=False)
    stage = stages.get(key)
    if stage is None:
        import ray

        stage = ray.get(stage_box[0])
        stage.worker_id = f"{ray.get_runtime_context().get_node_id()[:12]}:{os.getpid()}"
        stages[key] = stage
    return stage


@functools.cache
def remote(obj: Any) -> Any:
    """``ray.remote(obj)`` (a function or an actor class), made once per process: every ``ray.remote``
    call exports the function to the cluster again. Give resources with ``.options(...)``."""
    import ray

    return ray.remote(obj)


_warmed: set[Any] = set()


def _import(*modules: str) -> None:
    import importlib

    for module in modules:
        importlib.import_module(module)


def warm_up(session: Any, *modules: str) -> None:
    """On a Ray this process just started (once per session): let its idle worker processes import
    ``modules`` now (fire and forget, one task per CPU), instead of in the first run's first tasks."""
    import ray

    if session.how != "started" or (session.token, modules) in _warmed:
        return
    _warmed.add((session.token, modules))
    try:
        fn = ray.remote(num_cpus=1, max_retries=0)(_import)
        for _ in range(max(1, int(ray.cluster_resources().get("CPU", 1)))):
            fn.remote(*modules)
    except Exception as exc:  # only a speed-up
        logger.debug("warming the workers failed: %r", exc)

"""Stage contract: :class:`ProcessingStage`, :class:`Resources` and worker context.

A stage is plain Python: it holds no engine API. The executor decides where and
how many copies run. Its lifecycle on every backend:

* ``setup_on_node(node_info, worker_metadata)``: once per node per stage (for
  example to download a model to local disk),
* ``setup(worker_metadata)``: once per worker (load the model),
* ``process(task)`` / ``process_batch(tasks)``: the work,
* ``teardown()``: once per worker that ran ``setup``, also after a failure.

Per-backend stage options live in ``backend_options``, a dict keyed by backend
name (``{"xenna": {"slots_per_actor": 4}}``) that each plugin validates.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Generic, TypeVar

import attrs

from curator_exec_core.stats import Summary
from curator_exec_core.tasks import Task

__all__ = ["Resources", "ProcessingStage", "NodeInfo", "WorkerMetadata", "GangInfo", "has_lifecycle"]

In = TypeVar("In", bound=Task)
Out = TypeVar("Out", bound=Task)


def _non_negative(_inst: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or math.isnan(value):
        raise TypeError(f"Resources.{attribute.name} must be a number, got {value!r}")
    if math.isinf(value):
        raise ValueError(f"Resources.{attribute.name} must be finite, got {value!r}")
    if value < 0:
        raise ValueError(f"Resources.{attribute.name} must be >= 0, got {value!r}")


def _gpus_valid(inst: object, attribute: attrs.Attribute[float], value: float) -> None:
    _non_negative(inst, attribute, value)
    if value > 1 and value != int(value):
        raise ValueError(
            f"Resources.gpus={value!r}: use a fraction below 1 (GPU sharing) or a whole number of GPUs"
        )


@attrs.frozen
class Resources:
    """What one worker of a stage needs.

    ``gpus`` is a fraction below 1 (the worker shares a GPU) or a whole number.
    ``gpu_memory_gb`` asks for GPU memory instead; the planner turns it into a GPU
    fraction against the real GPUs in the capacity (never against a guess). Give
    ``gpus`` or ``gpu_memory_gb``, not both.
    """

    cpus: float = attrs.field(default=1.0, validator=_non_negative)
    gpus: float = attrs.field(default=0.0, validator=_gpus_valid)
    gpu_memory_gb: float = attrs.field(default=0.0, validator=_non_negative)

    def __attrs_post_init__(self) -> None:
        if self.gpus and self.gpu_memory_gb:
            raise ValueError("Resources: give gpus or gpu_memory_gb, not both")

    @property
    def requires_gpu(self) -> bool:
        return bool(self.gpus or self.gpu_memory_gb)

    def describe(self) -> str:
        parts = [f"cpus={self.cpus:g}"]
        if self.gpus:
            parts.append(f"gpus={self.gpus:g}")
        if self.gpu_memory_gb:
            parts.append(f"gpu_memory_gb={self.gpu_memory_gb:g}")
        return ", ".join(parts)


@attrs.frozen
class NodeInfo:
    """The node a worker runs on (``node_id`` is the engine's id, or the hostname)."""

    node_id: str


@attrs.frozen
class GangInfo:
    """A gang rank's place: ``rank`` of ``size``, and ``root``, what rank 0's ``gang_root()`` returned."""

    rank: int
    size: int
    root: Any = None


@attrs.frozen
class WorkerMetadata:
    """Who a worker is: its id, its node, the resources it was given, and its gang (gang stages only)."""

    worker_id: str
    node_id: str = ""
    allocation: Any = None
    gang: GangInfo | None = None


class ProcessingStage(Generic[In, Out]):
    """Base class for a pipeline stage. Override :meth:`process` (or :meth:`process_batch`).

    ``process`` returns a task, a list of tasks (fan-out; an empty list drops the
    input) or ``None`` (filter). Class attributes give the defaults; set them on
    the instance to change one stage.
    """

    name: str = ""
    resources: Resources = Resources()
    batch_size: int = 1
    backend_options: Mapping[str, Mapping[str, Any]] = {}
    #: seconds one call of this stage may run before it is stopped and counts as a failure (overrides
    #: the executor's ``task_timeout``; None: the executor's)
    task_timeout: float | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not cls.__dict__.get("name"):
            cls.name = cls.__name__

    # -- sizing ------------------------------------------------------------
    def num_workers(self) -> int | None:
        """A fixed number of workers for this stage, or ``None`` to let the planner decide."""
        return None

    # -- lifecycle ---------------------------------------------------------
    def setup_on_node(self, node_info: NodeInfo | None = None, worker_metadata: WorkerMetadata | None = None) -> None:
        """Once per node per stage, before any worker on that node runs ``setup``."""

    def setup(self, worker_metadata: WorkerMetadata | None = None) -> None:
        """Once per worker, before its first task."""

    def process(self, task: In) -> Out | list[Out] | None:
        """Process one task: return a task, a list of tasks, or ``None`` to drop it."""
        raise NotImplementedError(f"{type(self).__name__} must implement process() or process_batch()")

    def process_batch(self, tasks: list[In]) -> list[Out]:
        """Process up to ``batch_size`` tasks. The default calls :meth:`process` on each."""
        out: list[Out] = []
        for task in tasks:
            result = self.process(task)
            if result is None:
                continue
            if isinstance(result, list):
                out.extend(result)
            else:
                out.append(result)
        return out

    def teardown(self) -> None:
        """Once per worker that ran ``setup``, also after a failure."""

    # -- statistics --------------------------------------------------------
    def record(self, name: str, value: float = 1.0) -> None:
        """Record ``value`` under the counter ``name`` (``self.record("tokens", len(tokens))``), from
        ``process``/``process_batch``/``keys``/``reduce``. Wherever the stage runs, the values reach
        the run: per counter, their count, sum, mean, min, max and standard deviation, per worker and
        merged, in ``result.metrics["stats"][<stage>]["counters"]`` (and ``stats.json`` with a checkpoint)."""
        records = self.__dict__.get("_curator_records")
        if records is None:
            records = self.__dict__["_curator_records"] = {}
        summary = records.get(name)
        if summary is None:
            records[name] = Summary.of(float(value))
        else:
            summary.add(float(value))

    def fingerprint(self) -> str:
        """What, beyond its class and name, makes this stage's output what it is (its parameters:
        a model version, a threshold). A checkpointed run records it, and resuming with a stage
        whose fingerprint changed is refused. Default: nothing."""
        return ""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} name={self.name!r} {self.resources.describe()} batch_size={self.batch_size}>"


LIFECYCLE_METHODS = ("setup_on_node", "setup", "teardown")


def has_lifecycle(stage: ProcessingStage[Any, Any]) -> bool:
    """Whether ``stage`` overrides ``setup``, ``setup_on_node`` or ``teardown``.

    A stage without them keeps no per-worker state, so an engine may run it on any
    pooled worker process (Ray tasks) instead of a dedicated long-lived one (an actor).
    (For a :class:`~curator_exec_core.runner.ManagedStage`, ask its ``has_lifecycle``
    property, which answers for the user's stage it wraps.)
    """
    cls = type(stage)
    return any(getattr(cls, m) is not getattr(ProcessingStage, m) for m in LIFECYCLE_METHODS)


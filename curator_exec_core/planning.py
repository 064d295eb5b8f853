"""Planning, shared by every backend: stages x capacity -> :class:`ExecutionPlan`.

The plan says how many workers each stage gets and what each worker asks for.
Backends map it onto their engine (actors, Ray Data actor pools, Xenna stage
specs). Requests that cannot be met fail here, before any engine starts, with a
message naming the stage, what it asked for and what exists.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import attrs

from curator_exec_core.capacity import Capacity, NodeCapacity, fraction_of_gpu
from curator_exec_core.errors import PlanError
from curator_exec_core.stages import ProcessingStage, Resources

__all__ = ["StagePlan", "ExecutionPlan", "plan_stages", "check_gang", "PlanError"]


@attrs.frozen
class StagePlan:
    """One stage in the plan: ``workers`` copies, each with ``resources``."""

    index: int
    name: str
    workers: int
    resources: Resources
    requested: Resources
    batch_size: int
    notes: tuple[str, ...] = ()


def _stage_plans(stages: Iterable[StagePlan]) -> tuple[StagePlan, ...]:
    return tuple(stages)


def _notes(notes: Iterable[str]) -> tuple[str, ...]:
    return tuple(notes)


@attrs.frozen
class ExecutionPlan:
    """What would run where. ``concurrent`` means all stages run at once (streaming)."""

    executor: str
    stages: tuple[StagePlan, ...] = attrs.field(converter=_stage_plans)
    capacity: Capacity
    concurrent: bool = True
    notes: tuple[str, ...] = attrs.field(default=(), converter=_notes)

    def stage(self, name_or_index: str | int) -> StagePlan:
        for sp in self.stages:
            if sp.index == name_or_index or sp.name == name_or_index:
                return sp
        raise KeyError(name_or_index)

    def describe(self) -> str:
        mode = "all stages at once (streaming)" if self.concurrent else "stage after stage"
        lines = [f"Plan for executor {self.executor!r}: {mode}", self.capacity.describe(), ""]
        header = f"  {'#':>2}  {'stage':<28} {'workers':>7}  {'per worker':<28} batch"
        lines.append(header)
        for sp in self.stages:
            lines.append(
                f"  {sp.index:>2}  {sp.name[:28]:<28} {sp.workers:>7}  {sp.resources.describe():<28} {sp.batch_size}"
            )
            lines += [f"        note: {n}" for n in sp.notes]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def _fmt_nodes(capacity: Capacity) -> str:
    if not capacity.nodes:
        return "no nodes"
    return "; ".join(
        f"{n.node_id}: {n.cpus:g} CPUs, {n.num_gpus} GPUs" + (f" ({n.gpu_reason})" if n.gpu_reason else "")
        for n in capacity.nodes
    )


def _resolve_gpus(stage: ProcessingStage[Any, Any], req: Resources, capacity: Capacity) -> float:
    """The GPU share one worker needs (``gpu_memory_gb`` resolved against real GPUs)."""
    if not req.gpu_memory_gb:
        return float(req.gpus)
    gpus = capacity.gpus
    if not gpus:
        raise PlanError(
            f"stage {stage.name!r} asks for gpu_memory_gb={req.gpu_memory_gb:g} but there is no GPU "
            f"({_fmt_nodes(capacity)}). Run it where GPUs are, or drop the GPU request."
        )
    largest = max(g.memory_total for g in gpus) / 1024**3
    if req.gpu_memory_gb > largest:
        raise PlanError(
            f"stage {stage.name!r} asks for gpu_memory_gb={req.gpu_memory_gb:g} but the largest GPU has "
            f"{largest:.1f} GiB. Lower gpu_memory_gb or ask for whole GPUs with gpus=N."
        )
    smallest = min(g.memory_total for g in gpus) / 1024**3
    if req.gpu_memory_gb > smallest + 1e-9:
        # A worker can land on any GPU; a whole small GPU would not give it the memory it asked for.
        raise PlanError(
            f"stage {stage.name!r} asks for gpu_memory_gb={req.gpu_memory_gb:g} but the GPUs differ in size and "
            f"the smallest has {smallest:.1f} GiB; a worker may be placed on any GPU. Lower gpu_memory_gb to "
            f"{smallest:.1f} or less, ask for whole GPUs with gpus=N, or run on GPUs of one size."
        )
    return min(1.0, fraction_of_gpu(req.gpu_memory_gb, gpus))


def _fits_on_a_node(cpus: float, gpus: float, capacity: Capacity) -> bool:
    need_gpus = math.ceil(gpus) if gpus else 0
    return any(n.cpus + 1e-9 >= cpus and n.num_gpus >= need_gpus for n in capacity.nodes)


def _gpu_slots(gpus: float, capacity: Capacity) -> int:
    """How many workers needing ``gpus`` each fit on the GPUs, node by node."""
    if gpus <= 0:
        return 0
    if gpus < 1:  # a fraction of a GPU cannot span two GPUs
        return sum(n.num_gpus * math.floor(1 / gpus + 1e-9) for n in capacity.nodes)
    return sum(n.num_gpus // int(gpus) for n in capacity.nodes)


def _gpus_pack(demands: Sequence[tuple[float, int]], capacity: Capacity) -> bool:
    """Do the ``(gpus per worker, workers)`` demands fit on the GPUs? First-fit decreasing:
    whole-GPU workers take free GPUs on one node, fractions take room on one GPU."""
    free = [[1.0] * n.num_gpus for n in capacity.nodes]
    for gpus in sorted((g for g, k in demands if g for _ in range(k)), reverse=True):
        if gpus >= 1:
            node = next((f for f in free if sum(x >= 1 - 1e-9 for x in f) >= int(gpus)), None)
            if node is None:
                return False
            for j in [j for j, x in enumerate(node) if x >= 1 - 1e-9][: int(gpus)]:
                node[j] = 0.0
        else:
            slot = next(((f, j) for f in free for j, x in enumerate(f) if x + 1e-9 >= gpus), None)
            if slot is None:
                return False
            slot[0][slot[1]] -= gpus
    return True


def _gpu_limit(gpus: float, capacity: Capacity, avail_gpus: float) -> int:
    """Workers needing ``gpus`` each that fit: node by node, and within the unreserved GPUs."""
    return min(_gpu_slots(gpus, capacity), math.floor(avail_gpus / gpus + 1e-9))


def _scaled(cpus: float, scale: float) -> float:
    """``cpus * scale`` rounded *down* to Ray's granularity (1e-4), so the scaled workers fit."""
    if scale == 1.0 or cpus <= 0:
        return cpus
    return max(1e-4, math.floor(cpus * scale * 1e4 + 1e-9) / 1e4)


@attrs.frozen
class _Budget:
    """What the plan may hand out: CPUs and GPUs after the reservations."""

    capacity: Capacity
    cpus: float
    gpus: float
    reserved_gpus: float
    executor: str


def plan_stages(
    stages: Sequence[ProcessingStage[Any, Any]],
    capacity: Capacity,
    *,
    executor: str = "",
    concurrent: bool = True,
    max_workers_per_stage: int | None = None,
    reserved_cpus: float = 0.0,
    reserved_gpus: float = 0.0,
    scale_cpus_to_fit: bool = True,
) -> ExecutionPlan:
    """Size every stage against ``capacity``.

    * ``concurrent``: all stages run at the same time (streaming engines), so they
      share the capacity; otherwise each stage may use all of it in turn.
    * ``max_workers_per_stage`` caps automatic sizing (``num_workers()`` of a stage
      is honoured as given, and checked).
    * ``reserved_cpus`` / ``reserved_gpus`` are held back from planning.
    * ``scale_cpus_to_fit``: when concurrent stages ask for more CPUs than exist
      (three 1-CPU stages on 2 cores), scale the CPU requests down to fractions so
      every stage gets a worker, and say so in the plan notes. Without it such a
      plan is refused.

    The phases: :func:`_validate_stage` (each request against the nodes), :func:`_cpu_scale` (concurrent
    stages that cannot all get a worker), :func:`_size_stages` (how many workers), :func:`_fit_gpus`
    (workers given back until the GPU workers pack GPU by GPU).
    """
    budget = _budget(capacity, executor, reserved_cpus, reserved_gpus)
    notes: list[str] = []
    gpu_need = [_validate_stage(stage, budget) for stage in stages]
    scale = _cpu_scale(stages, gpu_need, budget, scale_cpus_to_fit, notes) if concurrent else 1.0
    plans = _size_stages(stages, gpu_need, budget, scale, concurrent, max_workers_per_stage)
    if concurrent:
        plans = _fit_gpus(plans, [s.num_workers() is None for s in stages], capacity)
    return ExecutionPlan(executor=executor, stages=plans, capacity=capacity, concurrent=concurrent, notes=notes)


def _budget(capacity: Capacity, executor: str, reserved_cpus: float, reserved_gpus: float) -> _Budget:
    if not capacity.nodes:
        raise PlanError(
            f"executor {executor!r} has no node to run on (is ignore_head_node=True on a one-node cluster?). "
            "Add worker nodes or set ignore_head_node=False."
        )
    avail_cpus = capacity.total_cpus - reserved_cpus
    if avail_cpus <= 0:
        raise PlanError(
            f"reserved_cpus={reserved_cpus:g} leaves no CPU of the {capacity.total_cpus:g} available; lower reserved_cpus."
        )
    return _Budget(capacity, avail_cpus, capacity.total_gpus - reserved_gpus, reserved_gpus, executor)


def _validate_stage(stage: ProcessingStage[Any, Any], budget: _Budget) -> float:
    """Check one stage's request against the nodes and the budget; returns its GPUs per worker."""
    capacity, req = budget.capacity, stage.resources
    gpus = _resolve_gpus(stage, req, capacity)
    if not _fits_on_a_node(req.cpus, gpus, capacity):
        raise PlanError(
            f"stage {stage.name!r} asks for {req.describe()} per worker, which no node can give "
            f"(nodes: {_fmt_nodes(capacity)}). Lower the stage's Resources or add a node that has them."
        )
    fixed = stage.num_workers()
    if fixed is not None and (not isinstance(fixed, int) or fixed < 1):
        raise PlanError(f"stage {stage.name!r}: num_workers() must return a positive int or None, got {fixed!r}")
    if gpus and gpus > budget.gpus + 1e-9:
        raise PlanError(
            f"stage {stage.name!r} asks for gpus={gpus:g} per worker but only {budget.gpus:g} GPU(s) are "
            f"available after reserved_gpus={budget.reserved_gpus:g} ({_fmt_nodes(capacity)})."
        )
    if gpus and fixed is not None and _gpu_limit(gpus, capacity, budget.gpus) < fixed:
        raise PlanError(
            f"stage {stage.name!r} wants {fixed} workers with gpus={gpus:g} each, but only "
            f"{_gpu_limit(gpus, capacity, budget.gpus)} fit on the GPUs ({_fmt_nodes(capacity)}"
            + (f"; reserved_gpus={budget.reserved_gpus:g}" if budget.reserved_gpus else "") + ")."
        )
    if stage.batch_size < 1:
        raise PlanError(f"stage {stage.name!r}: batch_size must be >= 1, got {stage.batch_size!r}")
    return gpus


def _cpu_scale(stages: Sequence[ProcessingStage[Any, Any]], gpu_need: list[float], budget: _Budget, scale_to_fit: bool,
               notes: list[str]) -> float:
    """Concurrent stages: the factor their CPU requests are scaled by so that each gets a worker
    (1.0 if they fit); refuses GPU minimums that cannot be met."""
    capacity, avail_cpus, avail_gpus = budget.capacity, budget.cpus, budget.gpus
    scale = 1.0
    min_cpus = sum((s.num_workers() or 1) * s.resources.cpus for s in stages)
    if min_cpus > avail_cpus + 1e-9:
        if not scale_to_fit:
            raise PlanError(
                f"the {len(stages)} stages run at once and need {min_cpus:g} CPUs for one worker each, "
                f"but {avail_cpus:g} are available. Lower the stages' Resources(cpus=...), "
                "or run stage after stage."
            )
        scale = avail_cpus / min_cpus
        notes.append(
            f"stages need {min_cpus:g} CPUs for one worker each but {avail_cpus:g} are available; "
            f"CPU requests scaled by {scale:.3g} so that all run at once"
        )
    total_gpu_min = sum((s.num_workers() or 1) * g for s, g in zip(stages, gpu_need, strict=True))
    if total_gpu_min > avail_gpus + 1e-9:
        raise PlanError(
            f"the stages run at once and need {total_gpu_min:g} GPUs for one worker each, but "
            f"{avail_gpus:g} are available ({_fmt_nodes(capacity)}). Lower the GPU requests or pin fewer workers."
        )
    if not _gpus_pack([(g, s.num_workers() or 1) for s, g in zip(stages, gpu_need, strict=True)], capacity):
        raise PlanError(
            f"the stages run at once and their GPU workers ({total_gpu_min:g} GPUs for one worker each) do not "
            f"fit on the GPUs: a fraction of a GPU cannot span two GPUs and whole GPUs must be on one node "
            f"({_fmt_nodes(capacity)}). Lower the GPU requests or pin fewer workers."
        )
    return scale


def _size_stages(stages: Sequence[ProcessingStage[Any, Any]], gpu_need: list[float], budget: _Budget, scale: float,
                 concurrent: bool, max_workers: int | None) -> list[StagePlan]:
    """Every stage first gets its minimum (its fixed count, or one worker); automatically sized stages
    then share what is left equally. Concurrent plans thus never ask for more CPUs or GPUs than
    exist, even when stages differ in size."""
    cpus_of = [_scaled(s.resources.cpus, scale) for s in stages]
    auto = [s.num_workers() is None for s in stages]
    shares = _Shares(
        n_auto=max(1, sum(auto)),
        n_auto_gpu=max(1, sum(1 for a, g in zip(auto, gpu_need, strict=True) if a and g)),
        cpu_left=budget.cpus - sum((s.num_workers() or 1) * c for s, c in zip(stages, cpus_of, strict=True)),
        gpu_left=budget.gpus - sum((s.num_workers() or 1) * g for s, g in zip(stages, gpu_need, strict=True)))
    plans: list[StagePlan] = []
    for i, (stage, gpus) in enumerate(zip(stages, gpu_need, strict=True)):
        req, stage_notes = stage.resources, []
        workers = stage.num_workers()
        if workers is None:
            workers = _auto_workers(cpus_of[i], gpus, budget, shares, concurrent)
            if max_workers is not None and workers > max_workers:
                workers = max_workers
                if max_workers > 1:
                    stage_notes.append(f"capped at max workers per stage = {max_workers}")
        if req.gpu_memory_gb:
            stage_notes.append(f"gpu_memory_gb={req.gpu_memory_gb:g} -> gpus={gpus:g} of the smallest GPU")
        plans.append(StagePlan(index=i, name=stage.name, workers=workers, resources=Resources(cpus=cpus_of[i], gpus=gpus),
                               requested=req, batch_size=stage.batch_size, notes=tuple(stage_notes)))
    return plans


@attrs.frozen
class _Shares:
    """What automatically sized stages share: how many of them (with GPUs), and the CPUs and GPUs
    left once every stage has its minimum."""

    n_auto: int
    n_auto_gpu: int
    cpu_left: float
    gpu_left: float


def _auto_workers(cpus: float, gpus: float, budget: _Budget, shares: _Shares, concurrent: bool) -> int:
    """How many workers an automatically sized stage gets."""
    if cpus <= 0:
        workers = max(1, math.ceil(budget.cpus))
    elif concurrent:
        workers = 1 + math.floor(max(0.0, shares.cpu_left) / shares.n_auto / cpus + 1e-9)
    else:
        workers = max(1, math.floor(budget.cpus / cpus + 1e-9))
    if gpus:
        gpu_budget = _gpu_limit(gpus, budget.capacity, budget.gpus)
        if concurrent:
            gpu_budget = min(gpu_budget, 1 + math.floor(max(0.0, shares.gpu_left) / shares.n_auto_gpu / gpus + 1e-9))
        workers = min(workers, max(1, gpu_budget))
    return workers


def _fit_gpus(plans: list[StagePlan], auto: list[bool], capacity: Capacity) -> list[StagePlan]:
    """Shares are computed in GPU totals; give back workers until they also fit GPU by GPU."""
    while not _gpus_pack([(sp.resources.gpus, sp.workers) for sp in plans], capacity):
        shrinkable = [k for k, sp in enumerate(plans) if auto[k] and sp.resources.gpus and sp.workers > 1]
        if not shrinkable:  # pragma: no cover - the minimum was checked above
            break
        k = max(shrinkable, key=lambda k: plans[k].workers * plans[k].resources.gpus)
        plans[k] = attrs.evolve(plans[k], workers=plans[k].workers - 1)
    return plans


def check_gang(name: str, size: int, strategy: str, per_rank: Resources, capacity: Capacity, executor: str = "") -> None:
    """A gang of ``size`` ranks of ``per_rank`` must fit ``capacity`` all at once (``strategy``:
    ``STRICT_SPREAD`` one rank per node, ``STRICT_PACK`` all on one node); else :class:`PlanError`."""

    def slots(node: NodeCapacity) -> int:
        by_cpu = math.floor(node.cpus / per_rank.cpus + 1e-9) if per_rank.cpus else size
        if not per_rank.gpus:
            return by_cpu
        if per_rank.gpus < 1:  # ranks share a GPU
            return min(by_cpu, node.num_gpus * math.floor(1 / per_rank.gpus + 1e-9))
        return min(by_cpu, node.num_gpus // int(per_rank.gpus))

    per_node = [slots(n) for n in capacity.nodes]
    fits = {"STRICT_SPREAD": sum(1 for k in per_node if k >= 1) >= size,
            "STRICT_PACK": any(k >= size for k in per_node)}.get(strategy, sum(per_node) >= size)
    if not fits:
        raise PlanError(
            f"gang stage {name!r} needs {size} ranks of {per_rank.describe()} at once ({strategy}), but executor "
            f"{executor!r} has {_fmt_nodes(capacity)} (room for {sum(per_node)} such ranks"
            f"{', on ' + str(sum(1 for k in per_node if k)) + ' node(s)' if strategy == 'STRICT_SPREAD' else ''}). "
            "Lower gang_size or the per-rank resources, or add nodes.")

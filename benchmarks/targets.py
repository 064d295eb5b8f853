"""The benchmark targets (:data:`TARGETS`) and the verdicts on the measurements (:func:`evaluate`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from benchmarks.workloads import DICT, PLAIN, POOL, RAYDATA_GROUPBY

#: :attr:`Rel.baseline` for the record's own executor (another phase or field of the same workload)
SELF = "<self>"


@dataclass(frozen=True)
class Rel:
    """A limit relative to a baseline measured in the same run: ``factor * baseline.metric + plus``.

    ``baseline`` is a baseline's name, or :data:`SELF` for the executor being judged; ``phase`` and
    ``metric`` pick another record and field than the target's own (W8: the 1M run against the 100k
    run, and against W1 measured in the same process)."""

    baseline: str
    factor: float
    plus: float
    phase: str | None = None
    metric: str | None = None
    text: str | None = None  # the rule as the table shows it (default ``factor×baseline+plus``)


@dataclass(frozen=True)
class Target:
    """``record[metric] <op> limit`` for the ``phase`` ("cold" or "warm") measurement."""

    metric: str
    phase: str
    op: str
    limit: float | bool | Rel
    unit: str = ""


OPS: dict[str, Callable[[Any, Any], bool]] = {
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">=": lambda a, b: a >= b,
    ">": lambda a, b: a > b,
    "==": lambda a, b: a == b,
}
OP_TEXT = {"<=": "≤", ">=": "≥", "<": "<", ">": ">", "==": "="}

_NO_RAY_IMPORT = (Target("seconds", "warm", "<", 0.3, "s"), Target("ray_imported", "warm", "==", False))
_RSS_UNDER_1GB = (Target("peak_rss_mb", "cold", "<", 1000.0, "MB"), Target("peak_rss_mb", "warm", "<", 1000.0, "MB"))
_W5_RAY = (Target("seconds", "warm", "<=", Rel(RAYDATA_GROUPBY, 1.5, 0.0), "s"),)
_W6_RSS = (Target("peak_rss_mb", "warm", "<", 500.0, "MB"),)  # W6C too: a checkpoint must not make the driver hold the shuffle
_W7_OVERHEAD = (Target("checkpoint_overhead_pct", "warm", "<=", 10.0, "%"),)
#: W8 scale (the issue's targets): with the engine started, the driver's peak RSS at most 100 MB above its RSS
#: before the run, at 100,000 (warm) and at 1,000,000 tasks (large); the same at both within 10 % (judged
#: upwards only: less at 1M is not a failure; plus 5 MB, below which the difference of two RSS peaks is
#: allocator noise; the strict ratio is in the record as rss_growth_ratio); µs per task-stage of the 1M
#: run no worse than W1's on the same executor, measured in the same process (×1.2 + 2 µs for noise).
_W8_SCALE = (
    Target("rss_growth_mb", "warm", "<=", 100.0, "MB"),
    Target("rss_growth_mb", "large", "<=", 100.0, "MB"),
    Target("rss_growth_mb", "large", "<=", Rel(SELF, 1.1, 5.0, phase="warm", text="1.1×warm+5"), "MB"),
    Target("us_per_task_stage", "large", "<=",
           Rel(SELF, 1.2, 2.0, metric="w1_us_per_task_stage", text="1.2×W1+2"), "µs"),
)

#: Targets per executor and workload. Executors not listed here are measured but not judged.
#: W1 "19.0/3" etc.: the NeMo Curator 1.4.0 cold time of the same workload divided by the improvement we want.
TARGETS: dict[str, dict[str, tuple[Target, ...]]] = {
    "local": {
        "W1": (
            Target("us_per_task_stage", "cold", "<=", Rel(PLAIN, 2.0, 20.0), "µs"),
            Target("us_per_task_stage", "warm", "<=", Rel(PLAIN, 2.0, 20.0), "µs"),
        ),
        "W4": _NO_RAY_IMPORT,
        "W5": (Target("seconds", "warm", "<=", Rel(DICT, 3.0, 0.0), "s"),),
        "W7": _W7_OVERHEAD,
        "W8": _W8_SCALE,
        # the whole pipeline, its source a generator, the shuffle under a 512 MiB budget: bounded by the
        # budget, not the 4 GB
        "W9": (Target("peak_rss_mb", "cold", "<", 1500.0, "MB"), Target("peak_rss_mb", "warm", "<", 1500.0, "MB")),
    },
    "ray_actor_pool": {
        "W1": (Target("seconds", "cold", "<=", 19.0 / 3, "s"), Target("us_per_task_stage", "warm", "<=", 50.0, "µs")),
        "W2": (Target("efficiency", "cold", ">=", 0.6), Target("efficiency", "warm", ">=", 0.9)),
        "W3": _RSS_UNDER_1GB,
        "W4": _NO_RAY_IMPORT,  # list_executors() must stay engine-free whatever is installed
        "W5": _W5_RAY,
        "W6": _W6_RSS,
        "W6C": _W6_RSS,
        "W6R": _W6_RSS,
        "W7": _W7_OVERHEAD,
        "W8": _W8_SCALE,
    },
    "ray_data": {
        "W1": (Target("seconds", "cold", "<=", 44.7 / 5, "s"), Target("us_per_task_stage", "warm", "<=", 100.0, "µs")),
        "W2": (Target("efficiency", "cold", ">=", 0.6), Target("efficiency", "warm", ">=", 0.9)),
        "W3": _RSS_UNDER_1GB,
        "W4": _NO_RAY_IMPORT,
        "W5": _W5_RAY,
        "W6": _W6_RSS,
        "W6C": _W6_RSS,
        "W6R": _W6_RSS,
        "W8": _W8_SCALE,
    },
    "xenna": {
        "W1": (Target("seconds", "cold", "<=", 49.3 / 5, "s"),),
        "W2": (Target("efficiency", "cold", ">=", 0.6), Target("efficiency", "warm", ">=", 0.85)),
        "W3": _RSS_UNDER_1GB,
        "W4": _NO_RAY_IMPORT,
        "W6": _W6_RSS,
        "W6C": _W6_RSS,
        "W6R": _W6_RSS,
        "W8": _W8_SCALE,
    },
}

Index = dict[tuple[str, str, Any], dict]


def _limit(target: Target, rec: dict, index: Index) -> tuple[Any, str | None]:
    """The numeric limit of ``target`` (a :class:`Rel` is resolved against its baseline) and its rule text."""
    if not isinstance(target.limit, Rel):
        return target.limit, None
    rel = target.limit
    text = rel.text or f"{rel.factor:g}×{rel.baseline}+{rel.plus:g}"
    name = rec["executor"] if rel.baseline == SELF else rel.baseline
    base = index.get((name, rec["workload"], rel.phase or target.phase))
    metric = rel.metric or target.metric
    if not base or base.get("status") != "ok" or base.get(metric) is None:
        return None, text
    return rel.factor * base[metric] + rel.plus, text


def _derive(rec: dict, index: Index) -> None:
    """Fields computed across records: engine start (cold - warm) and W2 relative to the Pool baseline."""
    if rec.get("status") != "ok" or rec["workload"] == "W4":
        return
    name, workload, phase = rec["executor"], rec["workload"], rec.get("phase")
    warm = index.get((name, workload, "warm"))
    if workload == "W8" and phase == "large" and warm and warm.get("status") == "ok" \
            and rec.get("rss_growth_mb") is not None and warm.get("rss_growth_mb"):
        rec["rss_growth_ratio"] = rec["rss_growth_mb"] / warm["rss_growth_mb"]  # the strict "within 10 %"
    if phase == "cold" and warm and warm.get("status") == "ok":
        rec["engine_start_seconds"] = rec["seconds"] - warm["seconds"]
    pool = index.get((POOL, workload, phase))
    if workload == "W2" and pool and pool.get("status") == "ok" and rec.get("seconds"):
        rec["speed_vs_mp_pool2"] = pool["seconds"] / rec["seconds"]


def _judge(rec: dict, index: Index) -> None:
    """Attach ``targets`` and ``pass`` to one measurement."""
    ok_run = rec.get("status") == "ok"
    wrong = ok_run and rec.get("correct") is False
    targets = [t for t in TARGETS.get(rec["executor"], {}).get(rec["workload"], ()) if t.phase == rec.get("phase")]
    results = []
    for t in targets:
        limit, rule = _limit(t, rec, index)
        value = rec.get(t.metric) if ok_run else None
        verdict = None if value is None or limit is None else bool(OPS[t.op](value, limit))
        results.append({"metric": t.metric, "op": t.op, "limit": limit, "rule": rule, "unit": t.unit,
                        "value": value, "pass": False if wrong else verdict})
    if results:
        rec["targets"] = results
        verdicts = [r["pass"] for r in results]
        rec["pass"] = False if False in verdicts else (None if None in verdicts else True)
    elif wrong:
        rec["pass"] = False


def evaluate(records: list[dict]) -> None:
    """Attach ``targets`` (each with its limit, value and verdict) and ``pass`` to every measurement, in place."""
    index = {(r["executor"], r["workload"], r.get("phase")): r for r in records if r.get("kind") == "measurement"}
    for rec in records:
        if rec.get("kind") != "measurement":
            continue
        _derive(rec, index)
        _judge(rec, index)

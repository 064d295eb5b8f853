"""What ``curator-exec`` prints: plain tables, JSON, and the one per-stage table of a run.

:func:`stage_rows` turns a :class:`~curator_exec_core.tasks.PipelineResult` into one row per
stage of the pipeline; :func:`stage_table` renders them. ``curator-exec run`` and
``curator-exec demo`` both use them (the demo asks for the worker columns too).
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["fmt_count", "failed_rows", "failed_lines", "one_line", "print_json", "stage_rows", "stage_table",
           "table"]

#: the counters of ``result.metrics["stages"][key]`` that a stage row carries
STAGE_COUNTERS = ("tasks_in", "tasks_out", "tasks_failed")


def one_line(text: Any) -> str:
    return " ".join(str(text).split())


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=False, default=str))


def table(rows: list[list[str]], header: list[str]) -> str:
    """Left-aligned columns two spaces apart, trailing blanks stripped."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(header, widths, strict=True)).rstrip()]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


def fmt_count(value: Any) -> str:
    return "-" if value is None else str(value)


def stage_rows(pipeline: Any, result: Any, *, workers: bool = False) -> list[dict[str, Any]]:
    """One dict per stage of ``pipeline``: ``index``, ``name`` and the counters of ``result.metrics``
    (``None`` where the run recorded none). With ``workers``, also ``planned_workers`` (from
    ``result.plan``) and ``workers_seen`` (the workers named in the output tasks' ``stage_perf``)."""
    by_index = {m.get("index"): m for m in result.metrics.get("stages", {}).values()}
    rows = [{"index": i, "name": stage.name, **{k: by_index.get(i, {}).get(k) for k in STAGE_COUNTERS}}
            for i, stage in enumerate(pipeline.stages)]
    if workers:
        planned = {sp.name: sp.workers for sp in result.plan.stages} if result.plan is not None else {}
        seen: dict[str, set[str]] = {row["name"]: set() for row in rows}
        for task in result:
            for perf in task.stage_perf:
                seen.setdefault(perf.stage, set()).add(perf.worker)
        for row in rows:
            row["planned_workers"] = planned.get(row["name"])
            row["workers_seen"] = sorted(seen.get(row["name"], ()))
    return rows


def _workers_text(workers: list[str], limit: int = 4) -> str:
    if not workers:
        return "-"
    shown = ", ".join(workers[:limit])
    return shown + (f", ... ({len(workers)} in all)" if len(workers) > limit else "")


def stage_table(rows: list[dict[str, Any]], *, workers: bool = False) -> str:
    """The rows of :func:`stage_rows` as a table; ``workers`` adds the worker columns (rows made
    with ``workers=True``)."""
    header = ["#", "STAGE", "IN", "OUT", "FAILED"]
    if workers:
        header += ["PLANNED", "WORKERS SEEN (on output tasks)"]
    lines = []
    for row in rows:
        line = [str(row["index"]), row["name"], *(fmt_count(row[k]) for k in STAGE_COUNTERS)]
        if workers:
            line += [fmt_count(row["planned_workers"]), _workers_text(row["workers_seen"])]
        lines.append(line)
    return table(lines, header)


def failed_rows(result: Any) -> list[dict[str, Any]]:
    """``result.failed_tasks`` as JSON-ready dicts."""
    return [{"task_id": f.task_id, "stage": f.stage, "error": f.error} for f in result.failed_tasks]


def failed_lines(failed: list[dict[str, Any]], limit: int = 5) -> list[str]:
    """The first ``limit`` rows of :func:`failed_rows`, one indented line each."""
    return [f"  failed: task {f['task_id']} in {f['stage']}: {one_line(f['error'])}" for f in failed[:limit]]

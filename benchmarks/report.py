"""The benchmark table: one row per executor x workload, from the evaluated JSON records."""

from __future__ import annotations

from benchmarks.targets import OP_TEXT
from benchmarks.workloads import WORKLOADS

GB = 1_000_000_000
HEADER = ["executor", "workload", "cold s", "warm s", "start s", "metric", "cold", "warm", "target", "result", "notes"]


def _fmt_metric(workload: str, rec: dict | None) -> str:
    if not rec or rec.get("status") != "ok":
        return "-"
    if workload == "W1":
        return f"{rec['us_per_task_stage']:.1f}"
    if workload == "W7":
        pct = rec.get("checkpoint_overhead_pct")
        return f"{pct:+.1f}%" if pct is not None else f"{rec['us_per_task_stage']:.1f} µs"
    if workload == "W2":
        return f"{rec['efficiency']:.2f}" if rec.get("efficiency") is not None else "-"
    if workload in ("W3", "W6", "W9", "W6R"):
        return f"{rec['peak_rss_mb']:.0f}" if rec.get("peak_rss_mb") is not None else "-"
    if workload == "W8":
        return f"{rec['rss_growth_mb']:+.0f}" if rec.get("rss_growth_mb") is not None else "-"
    if workload == "W4":
        return "ray" if rec.get("ray_imported") else "no ray"
    if workload == "W5":
        return f"{rec['docs_per_second']:.0f}" if rec.get("docs_per_second") else "-"
    return "-"


def _num(x: float) -> str:
    return f"{x:.0f}" if abs(x) >= 100 else f"{x:.3g}"


def _fmt_target(t: dict) -> str:
    op = OP_TEXT[t["op"]]
    limit = t["limit"]
    if isinstance(limit, bool):
        shown = "no" if limit is False else "yes"
        return f"{t['metric']} {op} {shown}" if t["metric"] != "ray_imported" else f"ray {'not ' if not limit else ''}imported"
    if limit is None:
        return f"{t['metric']} {op} {t['rule']} (no baseline)"
    value = _num(limit)
    rule = f" ({t['rule']})" if t.get("rule") else ""
    name = {"us_per_task_stage": "µs", "seconds": "s", "efficiency": "eff", "peak_rss_mb": "MB",
            "checkpoint_overhead_pct": "overhead %"}.get(t["metric"], t["metric"])
    return f"{name} {op} {value}{rule}"


def _w4_notes(rec: dict) -> str:
    parts = [f"process {rec['process_seconds']:.3f}s"] if "process_seconds" in rec else []
    if "get_executor_seconds" in rec:
        parts.append(f"get_executor {rec['get_executor_seconds']:.3f}s"
                     f"{' (imports ray)' if rec.get('ray_imported_by_get_executor') else ''}")
    if "get_executor_error" in rec:
        parts.append(f"get_executor failed: {rec['get_executor_error'][:60]}")
    return "; ".join(parts)


def _w8_notes(warm: dict | None, large: dict | None) -> str:
    parts = []
    for label, rec in (("warm", warm), ("large", large)):
        if rec and rec.get("status") == "ok":
            parts.append(f"{label} {rec['tasks']:,} tasks: {rec['seconds']:.1f}s, {rec['us_per_task_stage']:.1f} µs/task-stage, "
                         f"RSS {rec.get('rss_before_mb', 0):.0f}->{rec.get('peak_rss_mb', 0):.0f} MB")
        elif rec:
            parts.append(f"{label}: {rec.get('status')} {str(rec.get('error', ''))[:60]}")
    rec = large if large and large.get("status") == "ok" else warm
    if rec and rec.get("w1_us_per_task_stage") is not None:
        parts.append(f"W1 same process {rec['w1_us_per_task_stage']:.1f} µs")
    if large and large.get("rss_growth_ratio") is not None:
        parts.append(f"growth large/warm {large['rss_growth_ratio']:.2f}")
    return "; ".join(parts)


def _notes(workload: str, cold: dict | None, warm: dict | None, large: dict | None = None) -> str:
    if workload == "W8" and (warm or large):
        return _w8_notes(warm, large)
    rec = warm if warm and warm.get("status") == "ok" else cold
    if not rec or rec.get("status") != "ok":
        return str((cold or {}).get("error", ""))[:60]
    if workload == "W2" and "speed_vs_mp_pool2" in rec:
        return f"warm speed vs Pool(2): {rec['speed_vs_mp_pool2']:.2f}x"
    if workload == "W5" and "unique_documents" in rec:
        return f"{rec['tasks']} documents -> {rec['unique_documents']} distinct"
    if workload in ("W6", "W9", "W6R") and "shuffled_bytes" in rec:
        budget = f", budget {rec['shuffle_memory_budget']}" if rec.get("shuffle_memory_budget") else ""
        checkpoint = (f"; checkpoint {rec['checkpoint_mb']:.0f} MB on disk, {rec.get('resumed_tasks')} resumed"
                      if rec.get("checkpoint_mb") is not None else "")
        if rec.get("rss_shmem_at_peak_mb"):
            checkpoint += (f"; RSS peak = {rec['rss_shmem_at_peak_mb']:.0f} MB shared (object store pages) + rest; "
                           f"private peak {rec.get('peak_rss_anon_mb', 0):.0f} MB")
        return f"{rec['shuffled_bytes'] / GB:.2f} GB shuffled into {rec['tasks_out']} keys{budget}{checkpoint}"
    if workload == "W3" and "intermediate_bytes" in rec:
        return f"{rec['intermediate_bytes'] / GB:.2f} GB flowed per run; RSS before warm {rec.get('rss_before_mb', 0):.0f} MB"
    if workload == "W7" and "seconds_without_checkpoint" in rec:
        return (f"median of {rec['pairs']} warm pairs: {rec['seconds_without_checkpoint'] * 1e3:.1f} ms without, "
                f"{rec['seconds_with_checkpoint'] * 1e3:.1f} ms with a checkpoint")
    if workload == "W4":
        return _w4_notes(rec)
    return ""


def _result(cold: dict | None, warm: dict | None, large: dict | None = None) -> tuple[str, list[str]]:
    """The ``result`` column and the ``target`` texts of one executor x workload (W8 has a third phase,
    ``large``)."""
    status = next((p.get("status") for p in (cold, warm, large) if p and p.get("status") != "ok"), "ok")
    targets = []
    verdicts = []
    for phase, rec in (("cold", cold), ("warm", warm), ("large", large)):
        for t in (rec or {}).get("targets", []):
            targets.append(f"{phase}: {_fmt_target(t)}")
            verdicts.append(t["pass"])
        if rec and rec.get("status") == "ok" and rec.get("correct") is False:
            verdicts.append(False)
    if status == "not_installed":
        result = "NOT INSTALLED"
    elif status in ("error", "broken"):
        result = status.upper()
    elif not verdicts:
        result = "-"
    elif any(v is False for v in verdicts):
        result = "FAIL"
    elif any(v is None for v in verdicts):
        result = "n/a"
    else:
        result = "PASS"
    if status == "ok" and any(p and p.get("correct") is False for p in (cold, warm, large)):
        result += " (wrong output)"
    return result, targets


def _secs(rec: dict | None) -> str:
    return f"{rec['seconds']:.3f}" if rec and rec.get("status") == "ok" and "seconds" in rec else "-"


def _row(name: str, workload: str, cold: dict | None, warm: dict | None, large: dict | None = None) -> list[str]:
    result, targets = _result(cold, warm, large)
    start = f"{cold['engine_start_seconds']:.3f}" if cold and "engine_start_seconds" in cold else "-"
    record = WORKLOADS.get(workload)
    title = f"{workload} {record.title if record else ''}".strip()
    data = record.data if record else workload  # W6C: shown as W6 is
    return [name, title, _secs(cold), _secs(warm), start, record.metric if record else "",
            _fmt_metric(data, cold), _fmt_metric(data, warm), "; ".join(targets) or "-", result,
            _notes(data, cold, warm, large)]


def render_table(records: list[dict]) -> str:
    """The table that follows the JSON lines: one row per executor x workload, in the order measured."""
    by_key: dict[tuple[str, str], dict[str, dict]] = {}
    for rec in records:
        if rec.get("kind") == "measurement":
            by_key.setdefault((rec["executor"], rec["workload"]), {})[rec.get("phase", "cold")] = rec
    rows = [_row(name, workload, phases.get("cold"), phases.get("warm"), phases.get("large"))
            for (name, workload), phases in by_key.items()]
    widths = [max(len(r[i]) for r in [HEADER, *rows]) for i in range(len(HEADER))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(HEADER, widths, strict=True)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)

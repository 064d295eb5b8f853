"""Smoke test for the benchmark harness: it runs and its JSON lines have the documented fields.

No timing assertions here: speed targets live in ``benchmarks/targets.py`` (``TARGETS``), not in tests.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
RUN = REPO / "benchmarks" / "run.py"
MISSING = "no_such_executor_for_bench"


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dict], list[dict], str]:
    out = tmp_path_factory.mktemp("bench") / "smoke.jsonl"
    proc = subprocess.run(
        [sys.executable, str(RUN), "local", MISSING, "--quick", "--workloads", "W1,W4", "--json-out", str(out)],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    stdout_records = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    file_records = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    return stdout_records, file_records, proc.stdout


def _find(records: list[dict], executor: str, workload: str, phase: str) -> dict:
    matches = [r for r in records if r.get("kind") == "measurement" and r["executor"] == executor
               and r["workload"] == workload and r.get("phase") == phase]
    assert len(matches) == 1, (executor, workload, phase, matches)
    return matches[0]


def test_stdout_and_file_have_the_same_json_lines(bench):
    stdout_records, file_records, _ = bench
    assert stdout_records == file_records
    assert stdout_records[0]["kind"] == "meta"
    meta = stdout_records[0]
    for field in ("executors", "workloads", "quick", "installed", "cores", "loadavg_start", "loadavg_end", "python"):
        assert field in meta, field
    assert meta["quick"] is True
    assert meta["workloads"] == ["W1", "W4"]


def test_w1_records(bench):
    records = bench[0]
    for executor in ("local", "plain_loop"):
        for phase in ("cold", "warm"):
            rec = _find(records, executor, "W1", phase)
            assert rec["status"] == "ok", rec
            assert rec["correct"] is True
            assert rec["tasks"] == 200 and rec["task_stages"] == 400
            for field in ("seconds", "us_per_task_stage", "loadavg", "construct_seconds", "run_seconds"):
                assert isinstance(rec[field], (int, float, list)), field
    cold = _find(records, "local", "W1", "cold")
    assert "engine_start_seconds" in cold
    for phase in ("cold", "warm"):
        rec = _find(records, "local", "W1", phase)
        assert rec["targets"], rec
        for target in rec["targets"]:
            assert {"metric", "op", "limit", "value", "pass"} <= set(target)
            assert target["limit"] is not None  # the plain-loop baseline ran in the same invocation
        assert rec["pass"] in (True, False)


def test_w4_records(bench):
    records = bench[0]
    for phase in ("cold", "warm"):
        rec = _find(records, "local", "W4", phase)
        assert rec["status"] == "ok", rec
        assert isinstance(rec["seconds"], float)
        assert isinstance(rec["ray_imported"], bool)
        assert isinstance(rec["process_seconds"], float)
    warm = _find(records, "local", "W4", "warm")
    assert len(warm["samples"]) == 5
    assert "local" in warm["installed"]
    assert _find(records, "python_startup", "W4", "warm")["status"] == "ok"


def test_missing_executor_is_reported_and_the_rest_still_run(bench):
    records, _, stdout = bench
    for workload in ("W1", "W4"):
        rec = _find(records, MISSING, workload, "cold")
        assert rec["status"] == "not_installed"
        assert MISSING in rec["error"]
    assert "NOT INSTALLED" in stdout
    assert "executor" in stdout and "result" in stdout  # the table header


def test_shuffle_workloads_check_their_output_beside_the_dict_baseline(tmp_path: Path) -> None:
    out = tmp_path / "shuffle.jsonl"
    proc = subprocess.run([sys.executable, str(RUN), "local", "--quick", "--workloads", "W5,W6", "--json-out", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    for executor in ("local", "dict_group"):
        w5, w6 = _find(records, executor, "W5", "warm"), _find(records, executor, "W6", "warm")
        assert w5["status"] == w6["status"] == "ok" and w5["correct"] is True and w6["correct"] is True
        assert w5["unique_documents"] == 14_000 and w5["tasks_out"] == 14_000 and w5["docs_per_second"] > 0
        assert w6["shuffled_bytes"] == 2_000 * 100_000 and w6["tasks_out"] == 100 and w6["peak_rss_mb"] > 0
    assert [t["rule"] for t in _find(records, "local", "W5", "warm")["targets"]] == ["3×dict_group+0"]


def test_checkpointed_shuffle_workload_records_its_checkpoint_and_removes_it(tmp_path: Path) -> None:
    """W6C and W6R quick on local: W6's data (W6R: repartitioned into 200 tasks, then a map) and check
    with a new checkpoint directory per run, made under BENCH_CHECKPOINT_DIR; the record has the
    directory's size and resumed_tasks, and nothing is left."""
    out, root = tmp_path / "w6c.jsonl", tmp_path / "checkpoints"
    proc = subprocess.run([sys.executable, str(RUN), "local", "--quick", "--workloads", "W6C,W6R", "--json-out",
                           str(out)],
                          capture_output=True, text=True, timeout=600, cwd=REPO,
                          env={**os.environ, "BENCH_CHECKPOINT_DIR": str(root)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    for workload, phase in itertools.product(("W6C", "W6R"), ("cold", "warm")):
        rec = _find(records, "local", workload, phase)
        assert rec["status"] == "ok" and rec["correct"] is True, rec
        keys = 100 if workload == "W6C" else 200
        assert rec["shuffled_bytes"] == 2_000 * 100_000 and rec["tasks_out"] == keys and rec["peak_rss_mb"] > 0
        assert rec["checkpoint_mb"] > 0 and rec["resumed_tasks"] == 0 and rec["checkpoint_root"] == str(root)
    assert list(root.iterdir()) == []  # each phase's directory removed
    assert "W6C shuffle 2 GB, checkpoint" in proc.stdout and "W6R repartition 2 GB, checkpoint" in proc.stdout


def test_budgeted_local_shuffle_workload_stays_below_its_input(tmp_path: Path) -> None:
    """W9 quick: 400 MB through the whole pipeline on local (a generator source, the map streamed into the
    shuffle) with a 32 MiB budget (it spills): right answer, and the driver's peak RSS well below the
    400 MB that went through."""
    out = tmp_path / "w9.jsonl"
    proc = subprocess.run([sys.executable, str(RUN), "local", "--quick", "--workloads", "W9", "--no-baselines",
                           "--set", "local.shuffle_memory_budget=32MiB", "--json-out", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    for phase in ("cold", "warm"):
        rec = _find(records, "local", "W9", phase)
        assert rec["status"] == "ok" and rec["correct"] is True, rec
        assert rec["shuffled_bytes"] == 4_000 * 100_000 and rec["tasks_out"] == 100
        assert rec["shuffle_memory_budget"] == "32MiB"
        assert rec["source"] == "generator"
        assert 0 < rec["peak_rss_mb"] < 300, rec["peak_rss_mb"]


def test_scale_workload_writes_every_row_and_judges_the_driver(tmp_path: Path) -> None:
    """W8 quick on local: 1,000 then 10,000 generated tasks through two maps into the batch JSONL writer,
    return_outputs=False: every row written once (read back), nothing returned, the RSS growth and the
    comparison with W1 in the record, the targets judged. Needs curator-exec-io (its writer: the
    integration session has it; the core session does not)."""
    pytest.importorskip("curator_exec_io", reason="W8 writes with curator-exec-io (installed in the integration session)")
    out = tmp_path / "w8.jsonl"
    proc = subprocess.run([sys.executable, str(RUN), "local", "--quick", "--workloads", "W8", "--json-out", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    for phase, n in (("cold", 1_000), ("warm", 1_000), ("large", 10_000)):
        rec = _find(records, "local", "W8", phase)
        assert rec["status"] == "ok" and rec["correct"] is True, rec
        assert rec["tasks"] == n and rec["task_stages"] == 3 * n and rec["tasks_out"] == 0
        assert rec["rows_written"] == n and rec["files_written"] == n // 1_000
        assert rec["source"] == "generator" and rec["rss_growth_mb"] is not None
    large = _find(records, "local", "W8", "large")
    assert large["w1_us_per_task_stage"] > 0 and large["us_per_task_stage"] > 0
    assert {t["rule"] for t in large["targets"]} == {None, "1.1×warm+5", "1.2×W1+2"}
    assert all(t["limit"] is not None for t in large["targets"])
    assert "W8 scale" in proc.stdout

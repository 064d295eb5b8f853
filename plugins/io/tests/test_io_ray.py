"""One short run on `ray_actor_pool` (skipped where the plugin is not installed): the stages pickle, run in Ray
workers, and the files are the same as on `local`."""

from __future__ import annotations

import json
import os

import pytest

pytest.importorskip("curator_exec_rayactorpool")
pytest.importorskip("ray")

import pyarrow.parquet as pq

from curator_exec_core import Pipeline, get_executor
from curator_exec_io import FilePartitioning, JsonlReader, ParquetWriter


@pytest.mark.timeout(300)
def test_jsonl_to_parquet_on_ray_actor_pool_same_files_as_local(tmp_path):
    (tmp_path / "in").mkdir()
    rows = [{"doc": f"d{i}", "n": i} for i in range(12)]
    for i in range(3):
        (tmp_path / "in" / f"{i}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[i * 4:(i + 1) * 4]))

    def pipeline(out: str) -> Pipeline:
        return Pipeline("io-ray", [FilePartitioning(str(tmp_path / "in")), JsonlReader(batch_rows=3),
                                   ParquetWriter(out)])

    on_local = pipeline(str(tmp_path / "local")).run("local")
    on_ray = pipeline(str(tmp_path / "ray")).run(get_executor("ray_actor_pool"))
    assert on_ray.failed_tasks == []
    names = sorted(os.listdir(tmp_path / "ray"))
    assert names == sorted(os.listdir(tmp_path / "local")) == sorted(os.path.basename(t.data.path) for t in on_ray)
    assert sorted(t.task_id for t in on_ray) == sorted(t.task_id for t in on_local)
    back = [r for n in names for r in pq.read_table(tmp_path / "ray" / n).to_pylist()]
    assert sorted(back, key=lambda r: r["n"]) == rows

"""``curator-exec run --output URL``: the final outputs written as files by this library's writers."""

from __future__ import annotations

import json
import textwrap

import pyarrow.parquet as pq

from curator_exec_core.cli import main

PIPELINE = """
    from curator_exec_core import Pipeline, ProcessingStage, Task

    class Upper(ProcessingStage):
        name = "upper"
        def process(self, task):
            return Task(data=task.data.upper()) if task.data != "drop" else None

    def build():
        return Pipeline("words", [Upper()]), [Task(data=w) for w in ["a", "drop", "b", "c"]]
"""


def run(tmp_path, monkeypatch, capsys, *extra: str) -> tuple[int, dict]:
    (tmp_path / "words_pipe.py").write_text(textwrap.dedent(PIPELINE))
    monkeypatch.chdir(tmp_path)
    code = main(["run", "--pipeline", "words_pipe:build", "--json", *extra])
    return code, json.loads(capsys.readouterr().out)


def test_output_writes_one_jsonl_file_per_output_task(tmp_path, monkeypatch, capsys):
    code, report = run(tmp_path, monkeypatch, capsys, "--output", str(tmp_path / "out"))
    assert code == 0
    assert report["output"] == {"url": str(tmp_path / "out"), "format": "jsonl", "files": 3, "rows": 3,
                                "bytes": report["output"]["bytes"]}
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert files == ["part-0.jsonl", "part-2.jsonl", "part-3.jsonl"], "named from the task ids"
    rows = [json.loads((tmp_path / "out" / f).read_text()) for f in files]
    assert rows == [{"task_id": "0", "data": "A"}, {"task_id": "2", "data": "B"}, {"task_id": "3", "data": "C"}]
    # run again: the same files, rewritten in place (no duplicates, no temporary files)
    code, _ = run(tmp_path, monkeypatch, capsys, "--output", str(tmp_path / "out"))
    assert code == 0 and sorted(p.name for p in (tmp_path / "out").iterdir()) == files


def test_output_as_parquet(tmp_path, monkeypatch, capsys):
    code, report = run(tmp_path, monkeypatch, capsys, "--output", str(tmp_path / "pq"), "--output-format", "parquet")
    assert code == 0 and report["output"]["files"] == 3
    table = pq.read_table(tmp_path / "pq" / "part-2.parquet")
    assert table.to_pylist() == [{"task_id": "2", "data": "B"}]


def test_without_output_run_prints_counts_only(tmp_path, monkeypatch, capsys):
    code, report = run(tmp_path, monkeypatch, capsys)
    assert code == 0 and report["output"] is None and report["outputs"] == 3
    assert not (tmp_path / "out").exists()

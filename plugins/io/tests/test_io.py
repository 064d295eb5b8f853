"""curator-exec-io: partitioning, readers, writers (exactly-once files), round trips on the `local` executor."""

from __future__ import annotations

import json
import os
import pickle
import uuid

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curator_exec_core import Pipeline, ProcessingStage, Task
from curator_exec_io import (
    TEMPORARY_DIR,
    FilePartitioning,
    JsonlReader,
    JsonlWriter,
    ParquetReader,
    ParquetWriter,
    WrittenFile,
    encode_task_id,
    file_name,
    list_files,
)

pytestmark = pytest.mark.timeout(120)


def _write_jsonl(path: str, rows: list[dict], fs: fsspec.AbstractFileSystem | None = None) -> None:
    text = "".join(json.dumps(r) + "\n" for r in rows)
    if fs is None:
        with open(path, "w") as f:
            f.write(text)
    else:
        fs.pipe(path, text.encode())


def _jsonl_inputs(tmp_path, n_files: int = 5, rows_per_file: int = 7) -> list[dict]:
    (tmp_path / "in").mkdir()
    everything = []
    for i in range(n_files):
        rows = [{"doc": f"f{i}-r{j}", "n": i * 100 + j} for j in range(rows_per_file)]
        _write_jsonl(str(tmp_path / "in" / f"part{i:02d}.jsonl"), rows)
        everything += rows
    return everything


class Shout(ProcessingStage):
    """A user stage on the Table payload."""

    def process(self, task: Task) -> Task:
        table = task.data
        docs = pa.array([d.upper() for d in table.column("doc").to_pylist()])
        return Task(data=table.set_column(table.schema.get_field_index("doc"), "doc", docs))


@pytest.fixture
def memfs():
    fs = fsspec.filesystem("memory")
    root = f"memory://io-test-{uuid.uuid4().hex}"
    yield fs, root
    try:
        fs.rm(root, recursive=True)
    except FileNotFoundError:
        pass


def _leftovers(fs: fsspec.AbstractFileSystem, directory: str) -> list[str]:
    return [p for p in fs.find(directory, withdirs=True) if TEMPORARY_DIR in p or p.endswith(".tmp")]


# -- partitioning ------------------------------------------------------------------------------------------

def test_file_partitioning_groups_sorted_with_deterministic_ids(tmp_path):
    _jsonl_inputs(tmp_path, n_files=5)
    (tmp_path / "in" / "notes.txt").write_text("x")
    stage = FilePartitioning(str(tmp_path / "in" / "*.jsonl"), files_per_task=2)
    result = Pipeline("p", [stage]).run("local")
    assert [t.task_id for t in result] == ["0.0", "0.1", "0.2"]
    names = [[os.path.basename(p) for p in t.data] for t in result]
    assert names == [["part00.jsonl", "part01.jsonl"], ["part02.jsonl", "part03.jsonl"], ["part04.jsonl"]]
    assert all(os.path.isabs(p) for t in result for p in t.data)
    # the same listing on the driver, as initial tasks
    assert [(t.task_id, t.data) for t in stage.tasks()] == [(str(i), t.data) for i, t in enumerate(result)]


def test_file_partitioning_directory_skips_hidden_and_temporary(tmp_path):
    _jsonl_inputs(tmp_path, n_files=3)
    (tmp_path / "in" / TEMPORARY_DIR).mkdir()
    (tmp_path / "in" / TEMPORARY_DIR / "part-0.jsonl.abc.tmp").write_text("{}\n")
    (tmp_path / "in" / ".hidden.jsonl").write_text("{}\n")
    (tmp_path / "in" / "_SUCCESS").write_text("")
    files = list_files(str(tmp_path / "in"))
    assert [os.path.basename(f) for f in files] == ["part00.jsonl", "part01.jsonl", "part02.jsonl"]
    assert list_files([str(tmp_path / "in")], extensions=[".parquet"]) == []


def test_file_partitioning_relative_paths_resolved_where_built(tmp_path, monkeypatch):
    _jsonl_inputs(tmp_path, n_files=2)
    monkeypatch.chdir(tmp_path)
    stage = FilePartitioning("in/*.jsonl")
    monkeypatch.chdir("/")
    assert [os.path.basename(g[0]) for g in stage.groups()] == ["part00.jsonl", "part01.jsonl"]


def test_file_partitioning_no_match_and_paths_from_task(tmp_path):
    with pytest.raises(FileNotFoundError, match="no file matches"):
        FilePartitioning(str(tmp_path / "*.jsonl")).groups()
    assert FilePartitioning(str(tmp_path / "*.jsonl"), allow_empty=True).groups() == []
    _jsonl_inputs(tmp_path, n_files=3)
    out = FilePartitioning(files_per_task=2).process(Task(data=str(tmp_path / "in" / "*.jsonl"), task_id="0"))
    assert [len(t.data) for t in out] == [2, 1]
    with pytest.raises(ValueError):
        FilePartitioning("x", files_per_task=0)


def test_file_partitioning_memory_urls_keep_protocol(memfs):
    fs, root = memfs
    for i in range(3):
        _write_jsonl(f"{root}/in/{i}.jsonl", [{"a": i}], fs)
    groups = FilePartitioning(f"{root}/in/*.jsonl", files_per_task=3).groups()
    assert len(groups) == 1 and all(p.startswith("memory://") for p in groups[0])


# -- readers -----------------------------------------------------------------------------------------------

def test_jsonl_reader_batch_rows(tmp_path):
    rows = _jsonl_inputs(tmp_path, n_files=3, rows_per_file=7)  # 21 rows
    result = Pipeline("p", [FilePartitioning(str(tmp_path / "in"), files_per_task=3),
                            JsonlReader(batch_rows=5)]).run("local")
    assert [t.task_id for t in result] == ["0.0.0", "0.0.1", "0.0.2", "0.0.3", "0.0.4"]
    assert [t.data.num_rows for t in result] == [5, 5, 5, 5, 1]
    assert all(isinstance(t.data, pa.Table) for t in result)
    assert [r for t in result for r in t.data.to_pylist()] == rows  # file order, then row order
    # one batch per group without batch_rows; column selection
    whole = JsonlReader(columns=["doc"]).process(Task(data=[str(tmp_path / "in" / "part00.jsonl")], task_id="0"))
    assert len(whole) == 1 and whole[0].data.column_names == ["doc"] and whole[0].data.num_rows == 7


def test_reader_batches_pickle_small(tmp_path):
    rows = [{"doc": "x" * 100, "n": i} for i in range(20_000)]
    _write_jsonl(str(tmp_path / "big.jsonl"), rows)
    out = JsonlReader(batch_rows=10).process(Task(data=str(tmp_path / "big.jsonl"), task_id="0"))
    assert len(out) == 2000
    assert len(pickle.dumps(out[0].data)) < 20_000  # a copy, not a slice carrying the whole file


def test_readers_unify_schemas_across_files(tmp_path):
    _write_jsonl(str(tmp_path / "a.jsonl"), [{"a": 1}])
    _write_jsonl(str(tmp_path / "b.jsonl"), [{"a": 2, "b": "x"}])
    (out,) = JsonlReader().process(Task(data=[str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")], task_id="0"))
    assert out.data.to_pylist() == [{"a": 1, "b": None}, {"a": 2, "b": "x"}]


def test_parquet_reader_columns_and_batches(tmp_path):
    pq.write_table(pa.table({"a": list(range(10)), "b": [str(i) for i in range(10)]}), tmp_path / "x.parquet")
    out = ParquetReader(batch_rows=4, columns=["a"]).process(Task(data=[str(tmp_path / "x.parquet")], task_id="3"))
    assert [t.data.column("a").to_pylist() for t in out] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


# -- writers -----------------------------------------------------------------------------------------------

def test_file_names_from_task_ids():
    assert file_name("0.3.1", "part-", ".parquet") == "part-0.3.1.parquet"
    assert encode_task_id("Dedup#ab12.0") == "Dedup_23ab12.0"
    assert encode_task_id("a_b") == "a_5fb" and encode_task_id("a/b") == "a_2fb"  # one-to-one
    assert encode_task_id("é") == "_e9" and encode_task_id("€") == "_u0020ac"
    long = encode_task_id("9" * 500)
    assert len(long) == 200 and long != encode_task_id("9" * 501)
    with pytest.raises(ValueError):
        encode_task_id("")
    with pytest.raises(ValueError):
        ParquetWriter("/tmp/x", prefix=".hidden")


def test_writer_output_record_and_names(tmp_path):
    out_dir = tmp_path / "out"
    writer = ParquetWriter(str(out_dir))
    table = pa.table({"a": [1, 2, 3]})
    task = writer.process(Task(data=table, task_id="Dedup#00ff.1"))
    record = task.data
    assert isinstance(record, WrittenFile) and task.num_items == 1
    assert record.path == str(out_dir / "part-Dedup_2300ff.1.parquet")
    assert record.rows == 3 and record.bytes == os.path.getsize(record.path)
    assert pq.read_table(record.path).equals(table)
    assert sorted(os.listdir(out_dir)) == ["part-Dedup_2300ff.1.parquet"]  # no _temporary left


@pytest.mark.parametrize("writer_cls", [ParquetWriter, JsonlWriter])
def test_writer_twice_same_file_no_temporary(tmp_path, writer_cls):
    """A retry, an engine re-running a chunk, a resumed run: the same task id rewrites the same file."""
    writer = writer_cls(str(tmp_path / "out"))
    table = pa.table({"doc": ["a", "b"], "n": [1, 2]})
    first = writer.process(Task(data=table, task_id="0.1")).data
    content = open(first.path, "rb").read()
    second = writer.process(Task(data=table, task_id="0.1")).data
    assert first == second
    assert os.listdir(tmp_path / "out") == [os.path.basename(first.path)]
    assert open(second.path, "rb").read() == content


def test_writer_cleans_a_killed_attempts_temporary(tmp_path):
    writer = JsonlWriter(str(tmp_path / "out"))
    tmp_dir = tmp_path / "out" / TEMPORARY_DIR
    tmp_dir.mkdir(parents=True)
    stale = tmp_dir / f"part-0.2.jsonl.{uuid.uuid4().hex}.tmp"
    stale.write_text('{"half": ')  # a killed attempt of task 0.2
    other = tmp_dir / f"part-0.3.jsonl.{uuid.uuid4().hex}.tmp"
    other.write_text("{}")  # another task's file (perhaps being written now): not ours to remove
    assert writer.stale_temporaries("0.2") == [str(stale)]
    writer.process(Task(data=pa.table({"a": [1]}), task_id="0.2"))
    assert not stale.exists() and other.exists()
    writer.process(Task(data=pa.table({"a": [1]}), task_id="0.3"))
    assert not (tmp_path / "out" / TEMPORARY_DIR).exists()
    assert sorted(os.listdir(tmp_path / "out")) == ["part-0.2.jsonl", "part-0.3.jsonl"]


def test_writer_failure_leaves_no_temporary(tmp_path):
    class Broken(ParquetWriter):
        def write_table(self, table, f):
            f.write(b"PAR1 half")
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        Broken(str(tmp_path / "out")).process(Task(data=pa.table({"a": [1]}), task_id="7"))
    assert os.listdir(tmp_path / "out") == []


def test_writer_accepts_other_payloads(tmp_path):
    writer = JsonlWriter(str(tmp_path), compression="gzip")
    record = writer.process(Task(data=[{"a": 1}, {"a": 2}], task_id="5")).data
    assert record.path.endswith("part-5.jsonl.gz") and record.rows == 2
    (back,) = JsonlReader().process(Task(data=record.path, task_id="0"))
    assert back.data.to_pylist() == [{"a": 1}, {"a": 2}]
    with pytest.raises(TypeError, match="pyarrow.Table"):
        writer.process(Task(data="text", task_id="6"))


# -- round trips on the local executor ---------------------------------------------------------------------

def test_round_trip_jsonl_to_parquet_to_jsonl_local_files(tmp_path):
    rows = _jsonl_inputs(tmp_path, n_files=5, rows_per_file=7)
    first = Pipeline("to-parquet", [FilePartitioning(str(tmp_path / "in" / "*.jsonl"), files_per_task=2),
                                    JsonlReader(batch_rows=4), Shout(), ParquetWriter(str(tmp_path / "pq"))])
    result = first.run("local")
    assert result.failed_tasks == []
    records = [t.data for t in result]
    assert all(isinstance(r, WrittenFile) for r in records)
    assert sorted(os.listdir(tmp_path / "pq")) == sorted(file_name(t.task_id, "part-", ".parquet") for t in result)
    assert sum(r.rows for r in records) == len(rows)
    assert all(r.bytes == os.path.getsize(r.path) for r in records)

    second = Pipeline("to-jsonl", [FilePartitioning(str(tmp_path / "pq"), files_per_task=100), ParquetReader(),
                                   JsonlWriter(str(tmp_path / "jsonl"))])
    (written,) = second.run("local")
    assert written.data.path == str(tmp_path / "jsonl" / "part-0.0.0.jsonl")
    with open(written.data.path) as f:
        back = [json.loads(line) for line in f]
    assert sorted(back, key=lambda r: r["n"]) == [{"doc": r["doc"].upper(), "n": r["n"]} for r in rows]


def test_round_trip_memory_filesystem(memfs):
    fs, root = memfs
    rows = [{"doc": f"d{i}", "n": i} for i in range(10)]
    for i in range(2):
        _write_jsonl(f"{root}/in/{i}.jsonl", rows[i * 5:(i + 1) * 5], fs)
    result = Pipeline("mem", [FilePartitioning(f"{root}/in/*.jsonl"), JsonlReader(batch_rows=3),
                              ParquetWriter(f"{root}/pq/")]).run("local")
    assert [t.data.path for t in result] == [f"{root}/pq/part-{i}.parquet" for i in
                                             ["0.0.0", "0.0.1", "0.1.0", "0.1.1"]]
    assert _leftovers(fs, f"{root}/pq") == []
    back = Pipeline("mem-back", [FilePartitioning(f"{root}/pq/", files_per_task=10), ParquetReader(),
                                 JsonlWriter(f"{root}/jsonl")]).run("local")
    (record,) = [t.data for t in back]
    lines = fs.cat(record.path).decode().splitlines()
    assert [json.loads(line) for line in lines] == rows and record.rows == 10
    assert record.bytes == fs.size(record.path)
    assert _leftovers(fs, f"{root}/jsonl") == []


def test_pipeline_run_twice_rewrites_same_files(tmp_path):
    _jsonl_inputs(tmp_path, n_files=3)
    pipeline = Pipeline("twice", [FilePartitioning(str(tmp_path / "in")), JsonlReader(),
                                  ParquetWriter(str(tmp_path / "out"))])
    first = pipeline.run("local")
    contents = {p: open(tmp_path / "out" / p, "rb").read() for p in os.listdir(tmp_path / "out")}
    (tmp_path / "out" / TEMPORARY_DIR).mkdir()
    (tmp_path / "out" / TEMPORARY_DIR / f"part-0.1.0.parquet.{uuid.uuid4().hex}.tmp").write_bytes(b"PAR1")
    second = pipeline.run("local")
    assert [t.data for t in first] == [t.data for t in second]
    assert {p: open(tmp_path / "out" / p, "rb").read() for p in os.listdir(tmp_path / "out")} == contents


def test_checkpointed_resume_after_partial_run_one_file_per_task(tmp_path):
    """A run that stopped part-way (a writer's temporary file left behind, some files written), resumed
    with the checkpoint: one file per output task, every row once, no temporary file."""
    rows = _jsonl_inputs(tmp_path, n_files=4, rows_per_file=3)
    ckpt = str(tmp_path / "ckpt")
    part = FilePartitioning(str(tmp_path / "in"), files_per_task=1)
    writer = ParquetWriter(str(tmp_path / "out"))
    stages = [JsonlReader(), writer]

    # a first attempt that "died" after writing two files and half of a third
    seeds = part.tasks()
    for seed in seeds[:2]:
        for i, t in enumerate(stages[0].process(seed)):
            writer.process(Task(data=t.data, task_id=f"{seed.task_id}.{i}"))
    (tmp_path / "out" / TEMPORARY_DIR).mkdir(exist_ok=True)
    (tmp_path / "out" / TEMPORARY_DIR / f"part-2.0.parquet.{uuid.uuid4().hex}.tmp").write_bytes(b"PAR1 half")

    result = Pipeline("resume", stages).run("local", part.tasks(), checkpoint_path=ckpt)
    assert sorted(os.listdir(tmp_path / "out")) == [f"part-{i}.0.parquet" for i in range(4)]
    back = pa.concat_tables([pq.read_table(t.data.path) for t in sorted(result, key=lambda t: t.task_id)])
    assert back.to_pylist() == rows
    again = Pipeline("resume", stages).run("local", part.tasks(), checkpoint_path=ckpt)
    assert again.metrics["checkpoint"]["resumed_tasks"] == 4
    assert sorted((t.task_id, t.data) for t in again) == sorted((t.task_id, t.data) for t in result)


# -- pickling and fingerprints ------------------------------------------------------------------------------

def _stages(root: str) -> list[ProcessingStage]:
    return [FilePartitioning(f"{root}/*.jsonl", files_per_task=3), JsonlReader(batch_rows=10, columns=["a"]),
            ParquetReader(batch_rows=5), JsonlWriter(f"{root}/j", compression="gzip"),
            ParquetWriter(f"{root}/p", compression="snappy", row_group_size=100)]


@pytest.mark.parametrize("index", range(5))
def test_stages_pickle_and_keep_no_filesystem(tmp_path, index):
    stage = _stages(str(tmp_path))[index]
    _ = stage.fingerprint()
    clone = pickle.loads(pickle.dumps(stage))
    assert type(clone) is type(stage) and clone.fingerprint() == stage.fingerprint()
    assert not any(isinstance(v, fsspec.AbstractFileSystem) for v in vars(stage).values())


def test_fingerprints_include_paths_and_options(tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    assert ParquetWriter(a).fingerprint() != ParquetWriter(b).fingerprint()
    assert ParquetWriter(a).fingerprint() != ParquetWriter(a, compression="snappy").fingerprint()
    assert JsonlWriter(a).fingerprint() != JsonlWriter(a, compression="gzip").fingerprint()
    assert JsonlReader(batch_rows=1).fingerprint() != JsonlReader(batch_rows=2).fingerprint()
    assert FilePartitioning(a).fingerprint() != FilePartitioning(a, files_per_task=2).fingerprint()
    assert FilePartitioning(a).fingerprint() != FilePartitioning(b).fingerprint()
    secret = ParquetWriter(a, storage_options={"key": "SECRET"}).fingerprint()
    assert "SECRET" not in secret and secret == ParquetWriter(a).fingerprint()


# -- a driver killed with SIGKILL mid-write, then run again -------------------------------------------------

_KILL_SCRIPT = '''
import os, sys, time
from curator_exec_core import Pipeline
from curator_exec_io import FilePartitioning, JsonlReader, ParquetWriter

root, mode = sys.argv[1], sys.argv[2]


class SlowWriter(ParquetWriter):
    def write_table(self, table, f):
        super().write_table(table, f)
        if os.environ.get("HANG_AT") and self._n >= 2:   # the third file: half written, then hang
            f.flush()
            open(os.environ["HANG_AT"], "w").close()
            time.sleep(600)
        self._n += 1

    _n = 0


part = FilePartitioning(os.path.join(root, "in"), files_per_task=1)
stages = [JsonlReader(batch_rows=2), SlowWriter(os.path.join(root, "out"))]
if mode == "in-pipeline":
    result = Pipeline("kill", [part, *stages]).run("local", checkpoint_path=os.path.join(root, "ckpt"))
else:
    result = Pipeline("kill", stages).run("local", part.tasks(), checkpoint_path=os.path.join(root, "ckpt"))
print(len(result))
'''


@pytest.mark.parametrize("mode", ["in-pipeline", "driver-listed"])
def test_sigkilled_driver_then_rerun_one_file_per_task(tmp_path, mode):
    import signal
    import subprocess
    import sys
    import time

    rows = _jsonl_inputs(tmp_path, n_files=4, rows_per_file=3)
    script = tmp_path / "kill.py"
    script.write_text(_KILL_SCRIPT)
    marker = tmp_path / "hanging"
    env = {**os.environ, "HANG_AT": str(marker)}
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path), mode], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(30)
    out = tmp_path / "out"
    assert any(f.endswith(".tmp") for f in os.listdir(out / TEMPORARY_DIR))  # a killed attempt's leftover

    rerun = subprocess.run([sys.executable, str(script), str(tmp_path), mode], capture_output=True, text=True,
                           env={k: v for k, v in os.environ.items() if k != "HANG_AT"}, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    n_tasks = int(rerun.stdout.strip().splitlines()[-1])
    files = sorted(os.listdir(out))
    assert len(files) == n_tasks == 8  # 4 files of 3 rows, batches of 2: 2 output tasks per file
    assert all(f.startswith("part-") and f.endswith(".parquet") for f in files)
    back = [r for f in files for r in pq.read_table(out / f).to_pylist()]
    assert sorted(back, key=lambda r: r["n"]) == rows  # every row once

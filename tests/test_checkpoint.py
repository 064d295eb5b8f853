"""Resumable runs in the core: lineage shares, the journal format, resume rules, ``curator-exec run``."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from fractions import Fraction

import pytest

from curator_exec_core import CheckpointError, Pipeline, ProcessingStage, Task, get_executor
from curator_exec_core.checkpoint import FORMAT_VERSION, Journal, read_journal
from curator_exec_core.checkpoint.journal import HEADER_SIZE, frame
from curator_exec_core.checkpoint.recovery import finished
from curator_exec_core.cli import main
from curator_exec_core.testing.conformance import canonical, reference_run
from curator_exec_core.testing.stages import FailOn, resume_stages


def block(records: list) -> bytes:
    return frame(pickle.dumps(records))


def o(task_id: str, lineage: tuple, data: object) -> tuple:
    """An output record as a journal writes it (format 1: outputs by column)."""
    return ("c", [task_id], [lineage], [data], {})


def write(folder, name: str, *blocks: bytes) -> None:
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, name), "ab") as f:
        for b in blocks:
            f.write(b)


HALF = Fraction(1, 2)


def test_a_source_is_done_only_when_its_shares_add_up_to_one(tmp_path):
    # source "a" fanned out in two halves; only one half is recorded: not done. "b" was dropped: done.
    write(tmp_path, "1-h-1.journal", block([o("a.0", (("a", HALF),), 10), ("d", "0:b", (), "b")]))
    done, outputs, torn = finished(str(tmp_path), {"a", "b"})
    assert done == {"b"} and outputs == [] and torn == 0
    write(tmp_path, "1-h-2.journal", block([o("a.1", (("a", HALF),), 11)]))  # another worker process
    done, outputs, _ = finished(str(tmp_path), {"a", "b"})
    assert done == {"a", "b"}
    assert sorted((t.task_id, t.data) for t in outputs) == [("a.0", 10), ("a.1", 11)]


def test_repeated_records_of_a_rerun_chunk_count_once(tmp_path):
    rec = block([o("a.0", (("a", HALF),), 10)])
    write(tmp_path, "1-h-1.journal", rec, rec)  # the engine ran the chunk twice
    assert finished(str(tmp_path), {"a"})[0] == set()  # 1/2, not 1
    write(tmp_path, "1-h-1.journal", block([o("a.1", (("a", HALF),), 11)]))
    done, outputs, _ = finished(str(tmp_path), {"a"})
    assert done == {"a"} and len(outputs) == 2


def test_columns_blocks_and_a_torn_tail(tmp_path):
    cols = ("c", ["x", "y"], None, [1, 2], {})
    good = block([cols]) + block([("d", "1:z", (), "z")])
    last = block([o("w", (), 5)])
    for cut in (3, HEADER_SIZE + 2, len(last) - 1):  # inside a header, a body, the last byte
        path = tmp_path / f"cut{cut}.journal"
        path.write_bytes(good + last[:cut])
        records, torn = read_journal(str(path))
        assert torn and [(type(r).__name__, r[0]) for r in records] == [("Output", "x"), ("Output", "y"),
                                                                         ("Dropped", "1:z")]
    damaged = bytearray(good)
    damaged[-1] ^= 0xFF  # a flipped byte in the last block: its checksum fails
    (tmp_path / "bad.journal").write_bytes(bytes(damaged))
    records, torn = read_journal(str(tmp_path / "bad.journal"))
    assert torn and [r[0] for r in records] == ["x", "y"]


def test_a_source_finished_in_two_attempts_is_taken_from_one(tmp_path):
    write(tmp_path, "1-h-1.journal", block([o("a", (), 1)]))
    write(tmp_path, "2-h-1.journal", block([o("a", (), 1), o("b", (), 2)]))
    done, outputs, _ = finished(str(tmp_path), {"a", "b"})
    assert done == {"a", "b"} and sorted(t.task_id for t in outputs) == ["a", "b"]


def test_an_output_of_several_sources_counts_only_if_allfinished(tmp_path):
    # a batch stage merged a and b into one output; b also has a second branch never recorded
    write(tmp_path, "1-h-1.journal", block([o("m", (("a", 1), ("b", HALF)), 7)]))
    done, outputs, _ = finished(str(tmp_path), {"a", "b"})
    assert done == set() and outputs == []  # a alone would lose its output


def test_journal_copies_in_one_process_are_all_written(tmp_path):
    import copy
    from types import SimpleNamespace

    j = Journal(str(tmp_path), "7", end=0)
    copies = [copy.deepcopy(j) for _ in range(3)]
    for i, c in enumerate(copies):
        c.call_done(SimpleNamespace(index=0), [Task(data=i, task_id=str(i))])
    del copies  # a backend may drop its worker copies before the part ends
    j.flush_all()
    (path,) = tmp_path.glob("*.journal")
    assert sorted(r.task_id for r in read_journal(str(path))[0]) == ["0", "1", "2"]


class Scale(ProcessingStage):
    def __init__(self, factor: int) -> None:
        self.factor = factor

    def process(self, task: Task) -> Task:
        return Task(data=task.data * self.factor)

    def fingerprint(self) -> str:
        return f"factor={self.factor}"


def test_a_stage_fingerprint_change_is_refused(tmp_path):
    ex = get_executor("local", show_progress=False)
    tasks = [Task(data=i) for i in range(4)]
    ex.run([Scale(2)], tasks, checkpoint_path=tmp_path)
    with pytest.raises(CheckpointError, match=r"stage 0 fingerprint: 'factor=2' -> 'factor=3'"):
        ex.run([Scale(3)], [Task(data=i) for i in range(4)], checkpoint_path=tmp_path)
    with pytest.raises(CheckpointError, match="distinct task_ids"):
        ex.run([Scale(2)], [Task(data=1, task_id="x"), Task(data=2, task_id="x")], checkpoint_path=tmp_path / "d")


def test_failures_with_ignore_failures_are_resumed_as_failures(tmp_path):
    ex = get_executor("local", show_progress=False, ignore_failures=True)
    stages = [FailOn({3, 5})]
    first = ex.run(stages, [Task(data=i) for i in range(8)], checkpoint_path=tmp_path)
    again = ex.run(stages, [Task(data=i) for i in range(8)], checkpoint_path=tmp_path)
    assert again.metrics["checkpoint"]["resumed_tasks"] == 8
    assert canonical(again) == canonical(first)
    assert sorted(f.task_id for f in again.failed_tasks) == sorted(f.task_id for f in first.failed_tasks) == ["3", "5"]
    with pytest.raises(CheckpointError, match="ignore_failures: True -> False"):
        get_executor("local", show_progress=False).run(stages, [Task(data=i) for i in range(8)],
                                                        checkpoint_path=tmp_path)


def test_progress_counts_resumed_tasks_as_done(tmp_path):
    from curator_exec_core import hookimpl, register_plugin, unregister_plugin

    events = []

    class Observer:
        @hookimpl
        def curator_exec_progress(self, event):
            if event.kind == "stage_progress":
                events.append((event.index, event.tasks_in, event.tasks_resumed))

    stages, tasks = resume_stages(n=12, seconds=0.0)
    ex = get_executor("local", show_progress=False)
    ex.run(stages, tasks, checkpoint_path=tmp_path)
    observer = Observer()
    register_plugin(observer, "observer")
    try:
        stages, tasks = resume_stages(n=12, seconds=0.0)
        ex.run(stages, tasks, checkpoint_path=tmp_path)
    finally:
        unregister_plugin(observer)
    assert (0, 0, 12) in events


# -- curator-exec run ---------------------------------------------------------------------------

FACTORY = '''
from curator_exec_core import Pipeline, Task
from curator_exec_core.testing.stages import FailOn, resume_stages

def pipeline():
    stages, tasks = resume_stages(n=10, seconds=0.0)
    return Pipeline("mine", stages), tasks

def failing():
    return Pipeline("failing", [FailOn({3})]), [Task(data=i) for i in range(5)]

def only_pipeline():
    return Pipeline("plain", [FailOn(set())])
'''


@pytest.fixture
def factory(tmp_path, monkeypatch):
    (tmp_path / "my_pipelines.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    return tmp_path


def test_run_command_summary_resume_and_exit_codes(factory, capsys):
    ck = factory / "ck"
    assert main(["run", "--pipeline", "my_pipelines:pipeline", "--checkpoint", str(ck)]) == 0
    out = capsys.readouterr().out
    assert "Pipeline 'mine' on executor 'local'" in out and "branchy" in out
    stages, tasks = resume_stages(n=10, seconds=0.0)
    expected = len(reference_run(stages, tasks))
    assert f"Outputs: {expected} tasks" in out and "0 of 10 source tasks resumed" in out
    assert main(["run", "--pipeline", "my_pipelines:pipeline", "--checkpoint", str(ck), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["outputs"] == expected and report["checkpoint"]["resumed_tasks"] == 10
    assert main(["run", "-p", "my_pipelines:only_pipeline"]) == 0  # a factory that returns only a Pipeline
    capsys.readouterr()
    # a stage failure exits 1; a mismatched checkpoint, a bad flag combination or target exits 2
    assert main(["run", "--pipeline", "my_pipelines:failing"]) == 1
    assert "StageFailedError" in capsys.readouterr().err
    assert main(["run", "--pipeline", "my_pipelines:failing", "--checkpoint", str(ck)]) == 2
    err = capsys.readouterr().err
    assert "different pipeline or inputs" in err and "--fresh" in err and len(err.strip().splitlines()) == 1
    assert main(["run", "--pipeline", "my_pipelines:failing", "--set", "ignore_failures=true",
                 "--checkpoint", str(ck), "--fresh"]) == 0
    capsys.readouterr()
    assert main(["run", "--pipeline", "my_pipelines:pipeline", "--fresh"]) == 2
    assert "--fresh discards a checkpoint" in capsys.readouterr().err
    assert main(["run", "--pipeline", "my_pipelines:nothing"]) == 2
    assert main(["run", "--pipeline", "my_pipelines:pipeline", "--executor", "no_such"]) == 2


def test_python_dash_m_is_the_command(factory):
    out = subprocess.run([sys.executable, "-m", "curator_exec_core", "run", "--pipeline", "my_pipelines:pipeline",
                          "--json"], capture_output=True, text=True, timeout=120, cwd=factory)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["pipeline"] == "mine"


def test_executor_by_class_path(factory, capsys):
    assert main(["run", "-p", "my_pipelines:pipeline", "-e", "curator_exec_local:LocalExecutor", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["executor"] == "local"
    assert main(["run", "-p", "my_pipelines:pipeline", "-e", "my_pipelines:Pipeline"]) == 2
    assert "not a BaseExecutor subclass" in capsys.readouterr().err


def test_pipeline_run_forwards_the_checkpoint(tmp_path):
    stages, tasks = resume_stages(n=8, seconds=0.0)
    result = Pipeline("p", stages).run("local", tasks, checkpoint_path=tmp_path)
    assert result.metrics["checkpoint"]["path"] == str(tmp_path)
    assert canonical(result) == canonical(reference_run(*resume_stages(n=8, seconds=0.0)))


def test_a_checkpoint_directory_is_private_and_one_others_can_write_is_not_resumed(tmp_path):
    """Journals and barrier files are pickles: a resume runs them. The directory is created private to
    its user, and a checkpoint that other users can write is refused (as ssh refuses such a key)."""
    import stat

    ck = tmp_path / "ck"
    stages, tasks = resume_stages(n=8, seconds=0.0)
    first = get_executor("local", show_progress=False).run(stages, tasks, checkpoint_path=ck)
    assert stat.S_IMODE(os.stat(ck).st_mode) == 0o700
    assert all(stat.S_IMODE(os.stat(p).st_mode) & 0o077 == 0 for p in ck.rglob("*.journal"))
    os.chmod(ck, 0o775)
    before = sorted(p.name for p in ck.rglob("*"))
    stages, tasks = resume_stages(n=8, seconds=0.0)
    with pytest.raises(CheckpointError, match=r"can be written by other users \(mode 775\).*chmod go-w"):
        get_executor("local", show_progress=False).run(stages, tasks, checkpoint_path=ck)
    assert sorted(p.name for p in ck.rglob("*")) == before  # nothing touched
    os.chmod(ck, 0o700)
    stages, tasks = resume_stages(n=8, seconds=0.0)
    again = get_executor("local", show_progress=False).run(stages, tasks, checkpoint_path=ck)
    assert canonical(again) == canonical(first) and again.metrics["checkpoint"]["resumed_tasks"] == 8


# -- the initial tasks' content (format 2) ------------------------------------------------------
def docs(n: int = 6, changed: dict[int, str] | None = None) -> list[Task]:
    changed = changed or {}
    return [Task(data={"text": changed.get(i, f"document {i}"), "tags": {"a", "b", f"t{i}"}}, task_id=f"doc-{i}")
            for i in range(n)]


class Words(ProcessingStage):
    def process(self, task: Task) -> list[Task]:
        return [Task(data=w) for w in task.data["text"].split()]


def test_changed_content_with_the_same_ids_is_refused_naming_the_first_changed_task(tmp_path):
    ex = get_executor("local", show_progress=False)
    first = ex.run([Words()], docs(), checkpoint_path=tmp_path)
    kept = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file() and p.name != "lock"}
    assert {"manifest.json", "inputs.digests"} <= set(kept)
    manifest = json.loads(kept["manifest.json"])
    assert manifest["format"] == FORMAT_VERSION == 4 and manifest["initial_tasks"]["content"]["file"] == "inputs.digests"
    assert len(kept["inputs.digests"]) == 8 + 24 * 6  # a header, 24 bytes a task
    with pytest.raises(CheckpointError, match=rf"checkpoint {tmp_path}: .*content of initial task 'doc-2' "
                                              r"\(position 2\) changed \(the first of 2 changed tasks\).*"
                                              r"overwrite=True \(curator-exec run --fresh\)"):
        ex.run([Words()], docs(changed={2: "other text", 4: "more"}), checkpoint_path=tmp_path)
    assert kept == {n: (tmp_path / n).read_bytes() for n in kept}  # nothing changed
    assert not list(tmp_path.glob("inputs.digests.tmp-*"))
    (tmp_path / "inputs.digests.tmp-0123").write_bytes(b"left by a run killed while it read its inputs")
    # the same content, in new objects (a set's order and shared strings do not matter): resumed
    again = ex.run([Words()], docs(), checkpoint_path=tmp_path)
    assert again.metrics["checkpoint"]["resumed_tasks"] == 6 and canonical(again) == canonical(first)
    assert not list(tmp_path.glob("inputs.digests.tmp-*"))
    # overwrite starts over with the new content
    fresh = ex.run([Words()], docs(changed={2: "other text"}), checkpoint_path=tmp_path, overwrite=True)
    assert fresh.metrics["checkpoint"]["resumed_tasks"] == 0
    assert canonical(fresh) == canonical(reference_run([Words()], docs(changed={2: "other text"})))
    assert ex.run([Words()], docs(changed={2: "other text"}), checkpoint_path=tmp_path).metrics[
        "checkpoint"]["resumed_tasks"] == 6


def test_metadata_is_content_and_other_ids_are_named(tmp_path):
    ex = get_executor("local", show_progress=False)
    ex.run([Words()], docs(), checkpoint_path=tmp_path)
    tasks = docs()
    tasks[3].metadata["lang"] = "fr"
    with pytest.raises(CheckpointError, match="content of initial task 'doc-3'"):
        ex.run([Words()], tasks, checkpoint_path=tmp_path)
    swapped = docs()
    swapped[1], swapped[2] = swapped[2], swapped[1]
    with pytest.raises(CheckpointError, match=r"initial tasks: 6 tasks .* -> 6 tasks .*the first other id is "
                                              r"'doc-2' at position 1"):
        ex.run([Words()], swapped, checkpoint_path=tmp_path)


def test_without_the_digests_file_a_change_is_still_refused_and_the_same_content_resumes(tmp_path):
    ex = get_executor("local", show_progress=False)
    ex.run([Words()], docs(), checkpoint_path=tmp_path)
    (tmp_path / "inputs.digests").unlink()
    with pytest.raises(CheckpointError, match="content of the initial tasks changed .*cannot be named"):
        ex.run([Words()], docs(changed={0: "x"}), checkpoint_path=tmp_path)
    assert ex.run([Words()], docs(), checkpoint_path=tmp_path).metrics["checkpoint"]["resumed_tasks"] == 6
    assert (tmp_path / "inputs.digests").exists()  # written again


def test_a_format_1_checkpoint_resumes_with_a_warning_and_is_upgraded(tmp_path, caplog):
    ex = get_executor("local", show_progress=False)
    first = ex.run([Words()], docs(), checkpoint_path=tmp_path)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    del manifest["initial_tasks"]["content"]
    manifest["format"] = 1  # as an older curator-exec wrote it: ids only, no digests file
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    (tmp_path / "inputs.digests").unlink()
    with pytest.raises(CheckpointError, match="initial tasks: 6 tasks"):  # the ids are still checked
        ex.run([Words()], docs(5), checkpoint_path=tmp_path)
    with caplog.at_level("WARNING", logger="curator_exec"):
        again = ex.run([Words()], docs(), checkpoint_path=tmp_path)
    assert "format 1, which recorded the initial tasks' ids but not their content" in caplog.text
    assert again.metrics["checkpoint"]["resumed_tasks"] == 6 and canonical(again) == canonical(first)
    upgraded = json.loads((tmp_path / "manifest.json").read_text())
    assert upgraded["format"] == FORMAT_VERSION and "content" in upgraded["initial_tasks"]
    assert upgraded["started_by"] == manifest["started_by"] and upgraded["created"] == manifest["created"]
    with pytest.raises(CheckpointError, match="content of initial task 'doc-1'"):  # checked from now on
        ex.run([Words()], docs(changed={1: "new"}), checkpoint_path=tmp_path)


def test_content_digest_is_by_value_and_type():
    from curator_exec_core.checkpoint.inputs import content_digest

    def d(data, **kw):
        return content_digest(Task(data=data, **kw))

    text = "x" * 10
    assert d([text, text]) == d(["x" * 10, "".join(["x"] * 10)])  # sharing does not matter
    assert d({"a": 1, "b": 2}) != d({"b": 2, "a": 1})  # a dict's order does (a stage can see it)
    assert d({1, 2, 3}) == d({3, 2, 1}) and d(frozenset({1})) != d({1})
    assert len({d(1), d(1.0), d(True), d("1"), d(b"1"), d((1,)), d([1])}) == 7
    assert d(1) != d(1, dataset_name="other") and d(1) != d(1, metadata={"k": 1})
    assert d(Fraction(1, 3)) == d(Fraction(1, 3)) != d(Fraction(1, 2))  # other objects: by their pickle
    cycle: list = [1]
    cycle.append(cycle)  # a list that holds itself: by its pickle
    assert d(cycle) == d(pickle.loads(pickle.dumps(cycle))) != d([1, [1]])
    assert len(d("x")) == 16


def test_a_set_of_strings_digests_the_same_in_another_process():
    from curator_exec_core.checkpoint.inputs import content_digest

    data = {"tags": {f"tag{i}" for i in range(50)}, "text": "t"}
    code = ("from curator_exec_core.checkpoint.inputs import content_digest; from curator_exec_core import Task; "
            "print(content_digest(Task(data={'tags': {f'tag{i}' for i in range(50)}, 'text': 't'})).hex())")
    for seed in ("1", "2"):
        out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONHASHSEED": seed},
                             capture_output=True, text=True, check=True).stdout.strip()
        assert out == content_digest(Task(data=data)).hex()


def test_input_ledger_compares_in_windows_and_names_a_change_past_the_first(tmp_path):
    from curator_exec_core.checkpoint.inputs import WINDOW, InputLedger

    n = 2 * WINDOW + 7
    first = InputLedger(str(tmp_path))
    first.check(Task(data=i, task_id=str(i)) for i in range(n))
    old = first.finish()
    first.close()
    assert os.path.getsize(tmp_path / "inputs.digests") == 8 + 24 * n
    # read whole first (collect): every difference counted, nothing written
    second = InputLedger(str(tmp_path), expected=old, collect=True)
    second.check(Task(data=-i if i in (WINDOW + 3, n - 1) else i, task_id=str(i)) for i in range(n))
    new = second.finish()
    second.close()
    assert new["sha256"] == old["sha256"] and new["content"] != old["content"]
    assert second.first_changed == (WINDOW + 3, str(WINDOW + 3)) and second.changed == 2
    assert os.path.getsize(tmp_path / "inputs.digests") == 8 + 24 * n
    # read as it goes: refused at the first change, in the batch that holds it
    third = InputLedger(str(tmp_path), expected=old)
    third.check(Task(data=i, task_id=str(i)) for i in range(WINDOW + 3))
    with pytest.raises(CheckpointError, match=rf"content of initial task '{WINDOW + 3}' \(position {WINDOW + 3}\)"):
        third.check([Task(data=-1, task_id=str(WINDOW + 3))])
    third.close()
    (tmp_path / "x").mkdir()
    with pytest.raises(CheckpointError, match="'7' appears more than once"):
        InputLedger(str(tmp_path / "x"), fresh=True).check(Task(data=i, task_id=str(i)) for i in (5, 7, 7))
    assert sorted(os.listdir(tmp_path)) == ["inputs.digests", "x"]  # no temporary file


def test_input_ledger_grows_with_each_attempt_and_refuses_a_shorter_or_longer_source(tmp_path):
    from curator_exec_core.checkpoint.inputs import InputLedger

    first = InputLedger(str(tmp_path))  # an attempt killed after reading 10 tasks: no count yet
    first.check(Task(data=i, task_id=str(i)) for i in range(10))
    first.close()
    with open(tmp_path / "inputs.digests", "ab") as f:
        f.write(b"torn")  # a record cut short by the kill
    second = InputLedger(str(tmp_path))
    assert second.recorded == 10 and os.path.getsize(tmp_path / "inputs.digests") == 8 + 24 * 10
    second.check(Task(data=i, task_id=str(i)) for i in range(6))
    with pytest.raises(CheckpointError, match="end after 6, but it recorded 10"):
        second.finish()
    second.close()
    third = InputLedger(str(tmp_path))
    third.check(Task(data=i, task_id=str(i)) for i in range(12))  # two more: appended
    done = third.finish()
    third.close()
    assert done["count"] == 12 and os.path.getsize(tmp_path / "inputs.digests") == 8 + 24 * 12
    fourth = InputLedger(str(tmp_path), expected=done)
    fourth.check(Task(data=i, task_id=str(i)) for i in range(12))
    with pytest.raises(CheckpointError, match="more initial tasks than the 12 it recorded"):
        fourth.check([Task(data=12, task_id="12")])
    fourth.close()


def test_a_first_start_killed_before_its_manifest_starts_again(tmp_path):
    (tmp_path / "inputs.digests").write_bytes(b"CXDIGv1\n")  # written, then killed before the manifest
    (tmp_path / "inputs.digests.tmp-1").write_bytes(b"")
    result = get_executor("local", show_progress=False).run([Words()], docs(), checkpoint_path=tmp_path)
    assert result.metrics["checkpoint"]["resumed_tasks"] == 0
    assert sorted(p.name for p in tmp_path.glob("inputs.digests*")) == ["inputs.digests"]
    assert os.path.getsize(tmp_path / "inputs.digests") == 8 + 24 * 6


def test_barrier_outputs_file_blocks_trailer_and_the_format_2_file(tmp_path):
    from curator_exec_core.checkpoint import (
        BARRIER_BLOCK,
        Checkpoint,
        barrier_count,
        read_barrier,
        read_barrier_blocks,
    )
    from curator_exec_core.checkpoint.journal import frame
    from curator_exec_core.runner.segments import BarrierSegment

    ck = Checkpoint(tmp_path)
    n = 2 * BARRIER_BLOCK + 5
    outputs = (Task(data=i, task_id=str(i)) for i in range(n))
    count, back = ck.save_barrier(BarrierSegment(1, None), outputs)
    path = tmp_path / "part-1.outputs"
    blocks = list(back)
    assert count == n == barrier_count(str(path)) and [t.data for b, _ in blocks for t in b] == list(range(n))
    assert [len(b) for b, _ in blocks] == [BARRIER_BLOCK, BARRIER_BLOCK, 5]
    # large tasks: a block of about BARRIER_BLOCK_BYTES (or one task), and windows of about WINDOW_BYTES
    from curator_exec_core.checkpoint import BARRIER_BLOCK_BYTES
    from curator_exec_core.run import WINDOW_BYTES, _Flow

    big = BARRIER_BLOCK_BYTES // 3 + 1
    count, back = ck.save_barrier(BarrierSegment(3, None), (Task(data=b"x" * big, task_id=str(i)) for i in range(40)))
    flow = _Flow.of_blocks(back)
    assert not flow.empty()
    windows = list(flow.windows(10_000))
    assert [t.task_id for w in windows for t in w] == [str(i) for i in range(40)]
    assert all(sum(len(t.data) for t in w) <= WINDOW_BYTES + 3 * big for w in windows) and len(windows) > 1
    assert [len(b) for b, _ in read_barrier_blocks(str(tmp_path / "part-3.outputs"))][:2] == [3, 3]
    assert not list(tmp_path.glob("*.tmp-*"))
    data = path.read_bytes()
    path.write_bytes(data[:-3])  # cut short: never trusted
    assert barrier_count(str(path)) is None
    path.write_bytes(data[:10] + b"x" + data[11:])  # damaged in the first block
    assert barrier_count(str(path)) is None
    old = [Task(data=i, task_id=str(i)) for i in range(3)]  # format 2: one block, the list
    path.write_bytes(frame(pickle.dumps(old)))
    assert barrier_count(str(path)) == 3 and [t.data for t in read_barrier(str(path))] == [0, 1, 2]

    def failing():
        yield Task(data=0)
        raise RuntimeError("the barrier failed")

    with pytest.raises(RuntimeError, match="the barrier failed"):
        ck.save_barrier(BarrierSegment(2, None), failing())
    assert not (tmp_path / "part-2.outputs").exists() and not list(tmp_path.glob("*.tmp-*"))


def test_barrier_blocks_keep_shared_objects_of_each_task_apart(tmp_path):
    from curator_exec_core.checkpoint import Checkpoint, read_barrier
    from curator_exec_core.runner.segments import BarrierSegment

    shared = {"k": [1, 2]}
    tasks = [Task(data={"a": shared, "b": shared, "i": i}, metadata={"m": {"x": i}}, task_id=str(i)) for i in range(5)]
    Checkpoint(tmp_path).save_barrier(BarrierSegment(1, None), iter(tasks))
    back = list(read_barrier(str(tmp_path / "part-1.outputs")))
    assert [(t.task_id, t.data, t.metadata) for t in back] == [(t.task_id, t.data, t.metadata) for t in tasks]
    assert back[0].data["a"] is back[0].data["b"]  # shared within a task, as pickled


def test_barrier_outputs_written_by_workers_are_named_checked_and_loaded_where_asked(tmp_path):
    """Blocks files a worker wrote (BarrierStore.write, here in another process) are named by the
    outputs file; read back by the driver, or as StoredBlock items a worker loads (no lineage); a
    missing or cut blocks file makes the barrier unfinished; files it does not name are removed."""
    from types import SimpleNamespace

    from curator_exec_core.checkpoint import BARRIER_BLOCK, BlockRef, Checkpoint, StoredBlock, barrier_count
    from curator_exec_core.run import _Flow
    from curator_exec_core.runner.segments import BarrierSegment

    ck = Checkpoint(tmp_path)
    segment = BarrierSegment(1, SimpleNamespace(name="groups"))
    store = pickle.loads(pickle.dumps(ck.barrier_store(segment)))  # it travels to the workers
    script = ("import pickle, sys; from curator_exec_core import Task\n"
              "store, first, n = pickle.loads(sys.stdin.buffer.read())\n"
              "tasks = [Task(data=i, task_id=str(i), lineage=(('s', 1),)) for i in range(first, first + n)]\n"
              "sys.stdout.buffer.write(pickle.dumps(store.write(tasks)))")
    refs: list = []
    for first, n in ((0, BARRIER_BLOCK + 10), (BARRIER_BLOCK + 10, 7)):
        done = subprocess.run([sys.executable, "-c", script], input=pickle.dumps((store, first, n)),
                              capture_output=True, check=True)
        refs += pickle.loads(done.stdout)
    assert [r.count for r in refs] == [BARRIER_BLOCK, 10, 7] and all(isinstance(r, BlockRef) for r in refs)
    folder = tmp_path / "part-1.blocks"
    (folder / "orphan-of-a-retried-writer.blocks").write_bytes(b"x")
    count, back = ck.save_barrier(segment, iter([*refs, Task(data=-1, task_id="inline")]))
    total = BARRIER_BLOCK + 17 + 1
    assert count == total == barrier_count(str(tmp_path / "part-1.outputs"))
    assert len(os.listdir(folder)) == 2 and not list(folder.glob("*.tmp")), "only the named files are kept"
    assert sorted(t.data for b, _ in back for t in b) == list(range(-1, BARRIER_BLOCK + 17))
    after = BarrierSegment(2, SimpleNamespace(name="not_run"))
    _, _, stored = ck.last_barrier([segment, after], stored=True)  # not the last segment: stored blocks
    items = [item for block, _ in stored for item in block]
    assert sum(isinstance(i, StoredBlock) for i in items) == 3 and sum(isinstance(i, Task) for i in items) == 1
    first = next(i for i in items if isinstance(i, StoredBlock))
    loaded = pickle.loads(pickle.dumps(first)).load()  # what a worker does
    assert [t.data for t in loaded] == list(range(BARRIER_BLOCK)) and all(t.lineage == () for t in loaded)
    windows = list(_Flow.of_blocks(iter([([i], 0) for i in items])).windows(100))
    assert [sum(i.count if isinstance(i, StoredBlock) else 1 for i in w) for w in windows] == [1 + BARRIER_BLOCK, 17]
    _, _, last = ck.last_barrier([segment], stored=True)  # the run's outputs: tasks, read here
    assert all(isinstance(t, Task) for block, _ in last for t in block)
    victim = folder / refs[-1].file
    data = victim.read_bytes()
    victim.write_bytes(data[:-5])
    assert barrier_count(str(tmp_path / "part-1.outputs")) is None
    victim.unlink()
    assert barrier_count(str(tmp_path / "part-1.outputs")) is None

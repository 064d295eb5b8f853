"""``curator-exec status DIR``: a checkpoint's run read without running anything."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from curator_exec_core import Task, get_executor
from curator_exec_core.checkpoint.manifest import acquire_lock
from curator_exec_core.cli import main
from curator_exec_core.errors import CheckpointError, StageFailedError
from curator_exec_core.testing.stages import AddOne, FailOn, KeepFirst, Unwrap


def status(capsys, path, *extra: str) -> tuple[int, str]:
    code = main(["status", str(path), *extra])
    return code, capsys.readouterr().out


def ints(n: int) -> list[Task]:
    return [Task(data=i) for i in range(n)]


def test_a_finished_run(tmp_path, capsys):
    ck = tmp_path / "ck"
    get_executor("local", show_progress=False).run([AddOne(), KeepFirst(modulo=4), Unwrap()], ints(20),
                                                   checkpoint_path=ck)
    code, out = status(capsys, ck, "--json")
    report = json.loads(out)
    assert code == 0 and report["state"] == "finished" and report["source_tasks"] == 20
    assert [(s["kind"], s["stages"], s["done"], s["total"]) for s in report["segments"]] == [
        ("map", ["add_one"], 20, 20), ("shuffle", ["keep_first"], 1, 1), ("map", ["unwrap"], 4, 4)]
    assert report["lock"]["state"] == "free" and report["failed_total"] == 0
    code, out = status(capsys, ck)
    assert code == 0 and "finished" in out.splitlines()[0] and "Resume:" not in out


def test_a_stopped_run_shows_progress_and_the_command_that_resumes_it(tmp_path):
    (tmp_path / "mypipe.py").write_text(textwrap.dedent("""
        from curator_exec_core import Pipeline, Task
        from curator_exec_core.testing.stages import AddOne, FailOn

        def build():
            return Pipeline("p", [AddOne(), FailOn((7,), "picky")]), [Task(data=i) for i in range(20)]
    """))
    env = {**os.environ, "PYTHONPATH": ""}
    run = subprocess.run([sys.executable, "-m", "curator_exec_core", "run", "--pipeline", "mypipe:build",
                          "--checkpoint", "ck"], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert run.returncode == 1 and "picky" in run.stderr  # FailOn(7) stops the run at task 6 (data 7)
    got = subprocess.run([sys.executable, "-m", "curator_exec_core", "status", "ck", "--json"], cwd=tmp_path,
                         capture_output=True, text=True, env=env)
    report = json.loads(got.stdout)
    assert got.returncode == 3 and report["state"] == "stopped"
    (segment,) = report["segments"]
    assert segment["total"] == 20 and 0 < segment["done"] < 20
    command = report["resume_command"]
    assert command.startswith(f"cd {tmp_path} && ") and "curator-exec run --pipeline mypipe:build --checkpoint ck" \
        in command


def test_failed_tasks_are_listed_with_their_errors(tmp_path, capsys):
    ck = tmp_path / "ck"
    get_executor("local", show_progress=False, ignore_failures=True).run(
        [FailOn((3, 5), "picky"), AddOne()], ints(10), checkpoint_path=ck)
    code, out = status(capsys, ck)
    assert code == 1 and out.splitlines()[0].endswith("failed")
    assert "Failed tasks: 2" in out and "3 in stage 'picky'" in out and "cannot take 5" in out


def test_a_run_that_holds_the_lock_is_running(tmp_path, capsys):
    ck = tmp_path / "ck"
    with pytest.raises(StageFailedError):
        get_executor("local", show_progress=False).run([FailOn((2,), "picky")], ints(10), checkpoint_path=ck)
    fd = acquire_lock(str(ck), CheckpointError)
    try:
        code, out = status(capsys, ck, "--json")
    finally:
        os.close(fd)
    report = json.loads(out)
    assert code == 3 and report["state"] == "running"
    assert report["lock"]["state"] == "held" and report["lock"]["alive"] is True
    assert f"pid {os.getpid()}" in report["lock"]["holder"]


def test_not_a_checkpoint(tmp_path, capsys):
    (tmp_path / "other").mkdir()
    code, out = status(capsys, tmp_path / "other", "--json")
    assert code == 4 and json.loads(out)["state"] == "not a checkpoint"
    code, out = status(capsys, tmp_path / "missing")
    assert code == 4 and "not a directory" in out

"""Resumable runs: ``checkpoint_path``, a killed driver or worker, torn journals, checkpoint errors.

See :mod:`curator_exec_core.testing.kit`.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import pytest

from curator_exec_core.checkpoint import Checkpoint
from curator_exec_core.errors import CheckpointError
from curator_exec_core.registry import list_executors
from curator_exec_core.tasks import PipelineResult, Task
from curator_exec_core.testing.kit.base import ConformanceBase, MakeExecutor, canonical, reference_run
from curator_exec_core.testing.stages import RESUME_ENV, Paced, leftover_temporaries, resume_stages, written_files


class ResumeTests(ConformanceBase):
    """Resumable runs (``run(..., checkpoint_path=...)``): a finished run resumed without work; a
    driver killed at seeded random points and a worker killed by a stage, each resumed to the
    reference answer; a resume after a finished shuffle that redoes nothing before it; a torn
    journal end; the checkpoint errors (mismatch, changed content with the same ids, lock, bad paths,
    newer format).

    The kill tests start a second driver, ``python -m curator_exec_core run --executor <name>``
    (or ``module:Class`` if the executor is not registered), with the ``driver_env`` fixture's
    environment; ``resume_seconds`` and ``resume_kill_window`` pace them. A resumed run counts
    only the work it did itself, so its ``metrics["stages"]`` is not compared with the reference's.
    """

    # -- helpers -------------------------------------------------------------
    def _driver(self, make_executor: MakeExecutor, driver_env: dict[str, str], checkpoint: str | os.PathLike[str],
                **params: Any) -> subprocess.Popen[bytes]:
        """``curator-exec run`` of the resume pipeline in a process of its own (its own session, so
        the test can kill its whole process group), with this executor and its options."""
        executor = make_executor(show_progress=False)
        sets = [f"{f.name}={json.dumps(v)}" for f in attrs.fields(type(executor.options))
                if (v := getattr(executor.options, f.name)) != f.default]
        env = {**os.environ, **driver_env, RESUME_ENV: json.dumps(params)}
        name = executor.executor_name
        if name not in {spec.name for spec in list_executors()}:  # not registered (yet): by its class, importable from its folder
            cls = type(executor)
            name = f"{cls.__module__}:{cls.__qualname__}"
            folder = os.path.dirname(os.path.abspath(sys.modules[cls.__module__].__file__ or "."))
            while os.path.exists(os.path.join(folder, "__init__.py")):
                folder = os.path.dirname(folder)
            env["PYTHONPATH"] = os.pathsep.join(p for p in (folder, env.get("PYTHONPATH", "")) if p)
        cmd = [sys.executable, "-m", "curator_exec_core", "run", "--pipeline",
               "curator_exec_core.testing.stages:resume_pipeline", "--executor", name,
               "--checkpoint", str(checkpoint), "--json", *[a for kv in sets for a in ("--set", kv)]]
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)

    def _resume_and_compare(self, make_executor: MakeExecutor, checkpoint: str | os.PathLike[str],
                            **params: Any) -> PipelineResult:
        written = params.get("write_dir")
        reference = {**params, "write_dir": f"{written}-reference"} if written else params
        expected = reference_run(*resume_stages(**reference))
        stages, tasks = resume_stages(**params)
        got = make_executor(show_progress=False).run(stages, tasks, checkpoint_path=checkpoint)
        assert canonical(got) == canonical(expected)
        assert got.failed_tasks == [] and got.metrics["checkpoint"]["source_tasks"] == len(tasks)
        if written:  # a writer last: exactly one file per output task, every one complete, no temporary left
            files, want = written_files(written), written_files(reference["write_dir"])
            assert sorted(files) == sorted(want), (
                f"the writer's folder holds {len(files)} files, expected one per output task ({len(want)}): "
                f"missing {sorted(set(want) - set(files))[:5]}, extra {sorted(set(files) - set(want))[:5]}")
            assert files == want, "a file's content differs from the uninterrupted run's"
            assert leftover_temporaries(written) == [], "temporary files were left behind"
        return got

    @staticmethod
    def _wait_for(predicate: Callable[[], bool], proc: subprocess.Popen[bytes], timeout: float = 180) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            if proc.poll() is not None:
                return False
            time.sleep(0.02)
        raise AssertionError(f"the driver did not get there in {timeout} s")

    @staticmethod
    def _journal_written(checkpoint: str | os.PathLike[str]) -> Callable[[], bool]:
        def written() -> bool:
            folder = os.path.join(str(checkpoint), "part-0")
            return os.path.isdir(folder) and any(os.path.getsize(os.path.join(folder, f)) > 0
                                                 for f in os.listdir(folder) if f.endswith(".journal"))
        return written

    # -- tests ---------------------------------------------------------------
    def test_resume_of_a_finished_run_returns_its_result_without_work(self, make_executor: MakeExecutor,
                                                                      tmp_path: Path) -> None:
        stages, tasks = resume_stages(n=self.n, seconds=0.0)
        expected = reference_run(stages, tasks)
        first = make_executor(show_progress=False).run(stages, tasks, checkpoint_path=tmp_path / "ck")
        assert canonical(first) == canonical(expected)
        assert first.metrics["checkpoint"]["resumed_tasks"] == 0
        stages, tasks = resume_stages(n=self.n, seconds=0.0)
        again = make_executor(show_progress=False).run(stages, tasks, checkpoint_path=tmp_path / "ck")
        assert canonical(again) == canonical(expected)
        assert again.metrics["checkpoint"]["resumed_tasks"] == self.n
        assert all(m["tasks_in"] == 0 for m in again.metrics["stages"].values())  # nothing ran again

    @pytest.mark.parametrize("seed", [0, 1, 2])
    def test_resume_after_the_driver_is_killed_at_a_random_point(self, make_executor: MakeExecutor,
                                                                  driver_env: dict[str, str], tmp_path: Path,
                                                                  seed: int) -> None:
        params = {"n": self.n, "seconds": self.resume_seconds, "write_dir": str(tmp_path / "out")}
        ck = tmp_path / "ck"
        proc = self._driver(make_executor, driver_env, ck, **params)
        try:
            if self._wait_for(self._journal_written(ck), proc):
                time.sleep(random.Random(seed).uniform(0.0, self.resume_kill_window))
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # the driver and everything in its process group
            out, err = proc.communicate()
        assert proc.returncode in (0, -signal.SIGKILL), err.decode()[-2000:]
        got = self._resume_and_compare(make_executor, ck, **params)
        if proc.returncode != 0:  # killed: what the checkpoint held was resumed, the rest ran now (a kill that
            # lands after the last record but before the driver exits leaves all of it resumed)
            assert 0 <= got.metrics["checkpoint"]["resumed_tasks"] <= self.n

    def test_resume_after_a_worker_is_killed(self, make_executor: MakeExecutor, driver_env: dict[str, str],
                                             tmp_path: Path) -> None:
        params = {"n": self.n, "seconds": self.resume_seconds, "kill_dir": str(tmp_path), "kill_on": 401,
                  "write_dir": str(tmp_path / "out")}
        proc = self._driver(make_executor, driver_env, tmp_path / "ck", **params)
        out, err = proc.communicate(timeout=300)
        assert os.path.exists(tmp_path / "killed"), "the stage did not kill its worker"
        # the engine either replaced the worker and finished, or the run died with it
        assert proc.returncode in (0, 1, -signal.SIGKILL), err.decode()[-2000:]
        self._resume_and_compare(make_executor, tmp_path / "ck", **params)

    def test_resume_after_a_finished_shuffle_does_not_redo_it(self, make_executor: MakeExecutor,
                                                              driver_env: dict[str, str], tmp_path: Path) -> None:
        params = {"n": self.n, "seconds": self.resume_seconds, "shuffle": True}
        ck = tmp_path / "ck"
        proc = self._driver(make_executor, driver_env, ck, **params)
        try:
            finished = self._wait_for(lambda: os.path.exists(ck / "part-1.outputs"), proc)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
        assert finished, "the driver ended before its shuffle finished"
        got = self._resume_and_compare(make_executor, ck, **params)
        assert got.metrics["checkpoint"]["resumed_after"] == "keep_first"
        assert got.metrics["checkpoint"]["resumed_tasks"] == self.n
        before = [m for m in got.metrics["stages"].values() if m["index"] <= 2]  # branchy, paced_1, keep_first
        assert all(m["tasks_in"] == 0 for m in before), "work before the finished shuffle was redone"

    def test_torn_journal_end_is_ignored(self, make_executor: MakeExecutor, tmp_path: Path) -> None:
        stages, tasks = resume_stages(n=self.n, seconds=0.0)
        make_executor(show_progress=False).run(stages, tasks, checkpoint_path=tmp_path)
        journals = sorted((tmp_path / "part-0").glob("*.journal"))
        assert journals
        with open(journals[-1], "r+b") as f:  # a kill in the middle of the last write
            f.truncate(max(1, os.path.getsize(journals[-1]) - 7))
        got = self._resume_and_compare(make_executor, tmp_path, n=self.n, seconds=0.0)
        assert got.metrics["checkpoint"]["resumed_tasks"] < self.n

    def test_checkpoint_of_changed_content_is_refused(self, make_executor: MakeExecutor, tmp_path: Path) -> None:
        """Same ids, other data: the checkpoint's content digests refuse it, naming the first changed
        task, and change nothing; ``overwrite=True`` starts over."""
        executor = make_executor(show_progress=False)
        stages, tasks = resume_stages(n=8, seconds=0.0)
        executor.run(stages, tasks, checkpoint_path=tmp_path / "ck")
        kept = {p.name: p.read_bytes() for p in (tmp_path / "ck").iterdir() if p.is_file() and p.name != "lock"}
        assert "inputs.digests" in kept
        stages, tasks = resume_stages(n=8, seconds=0.0)
        changed = tasks[5].task_id or "5"  # initial tasks without an id get their index
        tasks[5].data = -1000
        where = re.escape(str(tmp_path / "ck"))
        with pytest.raises(CheckpointError, match=rf"{where}.*content of initial task '{changed}'.*"
                                                  r"overwrite=True \(curator-exec run --fresh\)"):
            executor.run(stages, tasks, checkpoint_path=tmp_path / "ck")
        assert kept == {n: (tmp_path / "ck" / n).read_bytes() for n in kept}  # nothing changed
        assert sorted(p.name for p in (tmp_path / "ck").iterdir() if p.is_file()) == sorted([*kept, "lock"])
        ref_stages, ref_tasks = resume_stages(n=8, seconds=0.0)
        ref_tasks[5].data = -1000
        fresh = executor.run(stages, tasks, checkpoint_path=tmp_path / "ck", overwrite=True)
        assert canonical(fresh) == canonical(reference_run(ref_stages, ref_tasks))
        assert fresh.metrics["checkpoint"]["resumed_tasks"] == 0

    def test_checkpoint_mismatch_lock_and_bad_paths_are_clear_errors(self, make_executor: MakeExecutor,
                                                                     tmp_path: Path) -> None:
        executor = make_executor(show_progress=False)
        stages, tasks = resume_stages(n=6, seconds=0.0)
        executor.run(stages, tasks, checkpoint_path=tmp_path / "ck")
        manifest = (tmp_path / "ck" / "manifest.json").read_bytes()
        with pytest.raises(CheckpointError, match=r"stage 1 name: 'paced_1' -> 'renamed'.*overwrite=True"):
            executor.run([stages[0], Paced(0.0, "renamed"), stages[2]], tasks, checkpoint_path=tmp_path / "ck")
        with pytest.raises(CheckpointError, match=r"initial tasks: 6 tasks .* -> 7 tasks"):
            executor.run(stages, [*tasks, Task(data=6, task_id="6")], checkpoint_path=tmp_path / "ck")
        assert (tmp_path / "ck" / "manifest.json").read_bytes() == manifest  # nothing overwritten
        fresh = executor.run(stages[:1], tasks, checkpoint_path=tmp_path / "ck", overwrite=True)
        assert canonical(fresh) == canonical(reference_run(stages[:1], tasks))
        holder = Checkpoint(tmp_path / "ck")
        holder.open(stages[:1], False)
        try:
            with pytest.raises(CheckpointError, match="in use by another run"):
                executor.run(stages[:1], tasks, checkpoint_path=tmp_path / "ck")
        finally:
            holder.close()
        (tmp_path / "file").write_text("x")
        with pytest.raises(CheckpointError, match="is a file"):
            executor.run(stages, tasks, checkpoint_path=tmp_path / "file")
        (tmp_path / "other").mkdir()
        (tmp_path / "other" / "notes.txt").write_text("mine")
        with pytest.raises(CheckpointError, match="holds no curator-exec checkpoint"):
            executor.run(stages, tasks, checkpoint_path=tmp_path / "other", overwrite=True)
        assert (tmp_path / "other" / "notes.txt").read_text() == "mine"
        newer = json.loads(manifest)
        newer["format"] = 99
        (tmp_path / "ck" / "manifest.json").write_text(json.dumps(newer))
        with pytest.raises(CheckpointError, match="format 99 by a newer curator-exec"):
            executor.run(stages, tasks, checkpoint_path=tmp_path / "ck", overwrite=True)

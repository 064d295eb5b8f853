"""Workers Ray cannot place: a warning every ``placement_warning_s`` (naming the stage, the request
and what the cluster has free) until they start, or the ``actor_start_timeout`` error. Real Ray: a
blocker actor of this test holds every CPU of the session's cluster, then lets go."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from rap_stages import Logged

from curator_exec_core import Task
from curator_exec_rayactorpool import RayActorPoolExecutor
from curator_exec_rayactorpool.executor import ActorPoolError


def ints(n: int) -> list[Task]:
    return [Task(data=i) for i in range(n)]


def _blocker_class() -> Any:
    class Blocker:  # defined in a function: pickled by value, so Ray's workers need not import this module
        def ready(self) -> bool:
            return True

    return Blocker


@pytest.fixture
def blocker(ray_attached: Any) -> Iterator[Any]:
    """An actor of this test holding every CPU of the cluster (skips if it cannot get them soon);
    killed at the end (by its handle) if the test did not free it."""
    import ray

    cpus = ray.cluster_resources().get("CPU", 0)
    handle = ray.remote(_blocker_class()).options(num_cpus=cpus, max_restarts=0).remote()
    try:
        ray.get(handle.ready.remote(), timeout=60)
    except ray.exceptions.GetTimeoutError:
        ray.kill(handle)
        pytest.skip("the cluster's CPUs stayed busy: cannot hold them all for this test")
    yield handle
    ray.kill(handle)


class _FreeAfterWarnings(logging.Handler):
    """Keeps the placement warnings logged on ``curator_exec.ray`` and kills the blocker once ``count``
    were (the run waits until then)."""

    def __init__(self, handle: Any, count: int) -> None:
        super().__init__(logging.WARNING)
        self.blocker, self.count, self.said = handle, count, []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno == logging.WARNING and "placed after" in record.getMessage():
            self.said.append(record.getMessage())
            if len(self.said) == self.count:
                import ray

                ray.kill(self.blocker)


@contextlib.contextmanager
def _free_after_warnings(handle: Any, count: int) -> Iterator[list[str]]:
    """The warnings said while inside (the blocker is killed after ``count`` of them)."""
    log = logging.getLogger("curator_exec.ray")
    handler = _FreeAfterWarnings(handle, count)
    log.addHandler(handler)
    try:
        yield handler.said
    finally:
        log.removeHandler(handler)


def test_actors_that_cannot_be_placed_are_warned_about_until_they_start(blocker, tmp_path):
    # (actor_start_timeout: a run that never warns fails instead of waiting 300 s)
    ex = RayActorPoolExecutor(show_progress=False, placement_warning_s=1, max_workers_per_stage=1,
                              actor_start_timeout=60)
    with _free_after_warnings(blocker, 3) as said:  # about 3 s of waiting
        result = ex.run([Logged(tmp_path, "held_back", cpus=1)], ints(10))
    assert sorted(t.data for t in result) == list(range(1, 11))
    assert len(said) >= 3, said  # repeated while the blocker held the CPUs
    first = said[0]
    assert first.startswith("stage 'held_back': 0 of 1 actors placed after"), first
    assert "each asks Ray for {CPU: 1}" in first and "Free (free/total): node " in first and "CPU 0/" in first
    assert "actor_start_timeout=60s" in first


def test_a_gang_that_cannot_be_placed_is_warned_about_until_it_starts(blocker, tmp_path):
    from curator_exec_core.testing.stages import AllReduceSum

    ex = RayActorPoolExecutor(show_progress=False, placement_warning_s=1, actor_start_timeout=60)
    with _free_after_warnings(blocker, 2) as said:
        result = ex.run([AllReduceSum(str(tmp_path), name="held_gang")], ints(12))
    assert sorted(t.data["value"] for t in result) == list(range(12))
    assert {t.data["sum"] for t in result} == {sum(range(12))}
    assert len(said) >= 2, said
    assert said[0].startswith("stage 'held_gang': 0 of 1 placement groups placed after"), said[0]
    assert "{CPU: 0.5} per rank (one group of 2 bundles, strategy PACK)" in said[0]


def test_the_start_timeout_error_says_what_was_asked_and_what_is_free(blocker, tmp_path):
    ex = RayActorPoolExecutor(show_progress=False, placement_warning_s=None, actor_start_timeout=2,
                              max_workers_per_stage=1)
    with pytest.raises(ActorPoolError, match=r"stage 'never_placed': no worker started within "
                       r"actor_start_timeout=2s \(0 of 1 actors placed; each asks Ray for \{CPU: 1\}; "
                       r"free \(free/total\): node .*CPU 0/"):
        ex.run([Logged(tmp_path, "never_placed", cpus=1)], ints(3))


def test_the_option_is_validated_and_can_be_off():
    from curator_exec_core import ConfigError

    assert RayActorPoolExecutor().options.placement_warning_s == 30.0
    assert RayActorPoolExecutor(placement_warning_s=0).options.placement_warning_s == 0.0
    assert RayActorPoolExecutor(placement_warning_s=None).options.placement_warning_s is None
    for bad in (-1, "30"):
        with pytest.raises(ConfigError, match="placement_warning_s"):
            RayActorPoolExecutor(placement_warning_s=bad)

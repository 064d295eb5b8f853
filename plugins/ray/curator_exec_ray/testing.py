"""Pytest fixtures and helpers for tests of Ray-based executor plugins (ours or a third party's).

Enable them in a ``conftest.py``::

    pytest_plugins = ["curator_exec_ray.testing"]

What you get (``ray`` is imported lazily, so loading this module costs nothing):

* ``ray_session`` (session scope): attaches this test process to Ray once
  through :func:`curator_exec_ray.session.ensure_ray` (``num_cpus=2``; an
  already initialised Ray or ``RAY_ADDRESS`` is reused) and, at the end of the
  session, stops it only if it was started here (``shutdown_if_owned``).
* ``ray_attached`` (function scope): the same, re-attaching first if a cluster
  test detached the driver; use it in tests that need Ray up *now*.
* ``ray_driver_env``: ``{"RAY_ADDRESS": ...}`` of that Ray, for a second driver process (the
  conformance kit's ``driver_env``, used by its resume tests that kill a driver).
* :func:`ray_cluster` (a context manager) and the module-scoped
  ``ray_two_node_cluster`` fixture: a multi-node ``ray.cluster_utils.Cluster``
  (several raylets on this machine) with optional fake GPUs. A driver talks to
  one cluster at a time, so entering it detaches from the current Ray (stopping
  it only if this process started it), and leaving it stops only the Cluster's
  own processes and re-attaches the way the session was attached before, so the
  session stays usable.

Fake GPUs: a node given ``num_gpus=N`` gets ``N`` Ray ``GPU`` resources (Ray
schedules against them) and, for the capacity probe, the fake NVML module
(:mod:`curator_exec_core.testing.fake_nvml`) reports ``N`` devices of
``gpu_memory_gb`` on that node only (through the raylet's environment).

Multi-node tests are slow (a Cluster takes about 5 s to start on 2 cores): group
them in one module that uses the module-scoped fixture.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import attrs
import pytest

from curator_exec_core.hookspecs import hookimpl
from curator_exec_core.testing import fake_nvml
from curator_exec_ray import _compat as ray_compat
from curator_exec_ray import session as rs
from curator_exec_ray.cluster import NVML_MODULE_ENV
from curator_exec_ray.reaper import owned_processes, reap

__all__ = [
    "DEFAULT_NUM_CPUS",
    "PinStage",
    "RayPlacementTests",
    "RayTestCluster",
    "attach",
    "ray_attached",
    "ray_driver_env",
    "ray_cluster",
    "ray_session",
    "ray_two_node_cluster",
    "wait_until_idle",
    "quiet_run",
    "assert_quiet",
]

#: CPUs of the local Ray the ``ray_session`` fixture starts when none exists
DEFAULT_NUM_CPUS = 2

# How this process attached to Ray the last time :func:`attach` was called,
# so that :func:`ray_cluster` can re-attach the same way afterwards.
_attach_kwargs: dict[str, Any] = {"num_cpus": DEFAULT_NUM_CPUS}


def attach(**init_kwargs: Any) -> rs.RaySession:
    """``ensure_ray(**init_kwargs)``, remembering the arguments for re-attaching later."""
    global _attach_kwargs
    _attach_kwargs = dict(init_kwargs)
    return rs.ensure_ray(**init_kwargs)


def _reattach() -> rs.RaySession:
    return rs.ensure_ray(**_attach_kwargs)


@pytest.fixture(scope="session")
def ray_session() -> Iterator[rs.RaySession]:
    """This test session's Ray (started with 2 CPUs only if none exists); stopped at the end only if owned."""
    session = attach(num_cpus=DEFAULT_NUM_CPUS)
    yield session
    rs.shutdown_if_owned()


@pytest.fixture
def ray_attached(ray_session: rs.RaySession) -> rs.RaySession:
    """Like ``ray_session``, but makes sure the driver is attached right now (after a cluster test too)."""
    return _reattach()


@pytest.fixture
def ray_driver_env(ray_attached: rs.RaySession) -> Iterator[dict[str, str]]:
    """The environment a second driver process (e.g. ``curator-exec run`` in a subprocess) needs to
    join this session's Ray instead of starting one: the kit's ``driver_env``. After the test, waits
    (at most 60 s) until Ray has released what a killed driver's workers held, so the next test gets
    the whole cluster."""
    yield {"RAY_ADDRESS": ray_attached.address}
    wait_until_idle()


def wait_until_idle(timeout: float = 60.0) -> bool:
    """Wait until every CPU of the cluster is free again (the workers of a driver that died are
    killed by Ray a moment later); whether it got there within ``timeout``."""
    import time

    import ray

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not ray.is_initialized():
            return True
        total, free = ray.cluster_resources().get("CPU", 0.0), ray.available_resources().get("CPU", 0.0)
        if free >= total:
            return True
        time.sleep(0.2)
    return False


@attrs.frozen
class RayTestCluster:
    """A running test cluster: the ``Cluster``, its address and node ids."""

    cluster: Any
    address: str
    head_node_id: str
    worker_node_ids: tuple[str, ...]
    gpu_node_ids: tuple[str, ...]

    @property
    def node_ids(self) -> tuple[str, ...]:
        return (self.head_node_id, *self.worker_node_ids)


def _address_file() -> str | None:
    try:
        return ray_compat.address_file()
    except Exception:
        return None


@contextlib.contextmanager
def _restore_file(path: str | None) -> Iterator[None]:
    """Put ``path`` back as it was (``Cluster`` records its address in Ray's ``ray_current_cluster``
    file, which would make other processes on this machine connect to it)."""
    if path is None:
        yield
        return
    before = None
    if os.path.exists(path):
        with open(path) as f:
            before = f.read()
    try:
        yield
    finally:
        try:
            if before is None:
                os.remove(path)
            else:
                with open(path, "w") as f:
                    f.write(before)
        except OSError:
            pass


def _node_args(args: Mapping[str, Any], label: str, gpu_memory_gb: float) -> dict[str, Any]:
    out = {"num_cpus": 1, **args}
    env = dict(out.pop("env_vars", None) or {})
    env.setdefault(fake_nvml.COUNT_ENV, str(int(out.get("num_gpus") or 0)))
    env.setdefault(fake_nvml.MEMORY_ENV, str(gpu_memory_gb))
    env.setdefault("CURATOR_EXEC_FAKE_GPU_NODE", label)
    out["env_vars"] = env
    return out


@contextlib.contextmanager
def ray_cluster(
    head: Mapping[str, Any] | None = None,
    workers: Sequence[Mapping[str, Any]] = ({"num_cpus": 1},),
    *,
    fake_nvml_probe: bool = True,
    gpu_memory_gb: float = 16.0,
    runtime_env: Mapping[str, Any] | None = None,
) -> Iterator[RayTestCluster]:
    """A multi-node ``ray.cluster_utils.Cluster`` on this machine, with the driver connected to it.

    ``head`` and each entry of ``workers`` are ``Cluster.add_node`` arguments
    (``num_cpus`` defaults to 1; ``num_gpus=N`` gives the node N fake GPUs).
    With ``fake_nvml_probe`` the per-node capacity probe uses the fake NVML
    module, which reports on each node the GPUs that node was given.

    On entry the driver detaches from the Ray it is attached to (a local Ray
    this process started is stopped; a cluster it merely connected to is left
    running). On exit the Cluster's processes are stopped, the environment and
    Ray's ``ray_current_cluster`` file are restored, and the driver re-attaches
    as before (a local Ray this process owned is started again).
    """
    import ray
    from ray.cluster_utils import Cluster

    was_attached = ray.is_initialized()
    previous = rs.current_session()
    if was_attached:
        if not rs.shutdown_if_owned():
            ray.shutdown()  # only disconnects this driver from a cluster it did not start
    env = {NVML_MODULE_ENV: fake_nvml.MODULE} if fake_nvml_probe else {}
    cluster = None
    with contextlib.ExitStack() as stack:
        stack.enter_context(rs.temporary_env(env))
        try:
            with _restore_file(_address_file()):
                cluster = Cluster(initialize_head=True,
                                  head_node_args=_node_args(head or {}, "head", gpu_memory_gb))
            worker_nodes = [cluster.add_node(**_node_args(w, f"worker{i}", gpu_memory_gb))
                            for i, w in enumerate(workers)]
            cluster.wait_for_nodes()
            rs.ensure_ray(runtime_env=runtime_env, address=cluster.address)
            gpu_nodes = [n.node_id for n, w in zip(worker_nodes, workers, strict=True) if w.get("num_gpus")]
            if (head or {}).get("num_gpus"):
                gpu_nodes.insert(0, cluster.head_node.node_id)
            yield RayTestCluster(
                cluster=cluster,
                address=cluster.address,
                head_node_id=cluster.head_node.node_id,
                worker_node_ids=tuple(n.node_id for n in worker_nodes),
                gpu_node_ids=tuple(gpu_nodes),
            )
        finally:
            if ray.is_initialized():
                ray.shutdown()
            if cluster is not None:
                procs = owned_processes(cluster.list_all_nodes())
                cluster.shutdown()
                reap(procs)  # workers that outlive their raylet (parent PID 1 otherwise)
    if was_attached:
        if previous is not None and previous.how != "started":
            rs.ensure_ray(address=previous.address)
        else:
            _reattach()


@pytest.fixture(scope="module")
def ray_two_node_cluster() -> Iterator[RayTestCluster]:
    """Head node (1 CPU, no GPU) + worker node (2 CPUs, 2 fake GPUs of 16 GiB), for one test module."""
    with ray_cluster(head={"num_cpus": 1}, workers=[{"num_cpus": 2, "num_gpus": 2}]) as handle:
        yield handle


# -- two-node placement checks every Ray executor plugin runs ----------------------------------


class PinStage:
    """A hook plugin that wraps the schedule phase and pins stage ``index`` to ``nodes``: what a
    site policy ("the GPU stage on those nodes") looks like. Register it with
    :func:`curator_exec_core.register_plugin`."""

    def __init__(self, index: int, nodes: Sequence[str]) -> None:
        self.index, self.nodes = index, list(nodes)

    @hookimpl(wrapper=True)
    def curator_exec_schedule(self, executor: Any, plan: Any) -> Any:
        schedule = yield
        return schedule.pin(self.index, self.nodes)


class RayPlacementTests:
    """Placement every Ray executor must obey, on the module's ``ray_two_node_cluster`` (head: 1
    CPU; worker: 2 CPUs): ``ignore_head_node`` keeps every worker off the head, and a schedule that
    pins a stage to a node keeps that stage's work there. Subclass it in the plugin's multi-node
    test module with a ``make_executor(**options)`` fixture, as for the conformance kit."""

    @pytest.fixture
    def make_executor(self) -> Any:
        raise NotImplementedError("define a make_executor fixture returning (**options) -> executor")

    def test_ignore_head_node_keeps_every_worker_off_the_head(self, ray_two_node_cluster: RayTestCluster,
                                                              make_executor: Any, tmp_path: Any) -> None:
        from curator_exec_core import Task
        from curator_exec_core.testing.stages import Traced, read_trace

        c = ray_two_node_cluster
        stages = [Traced(str(tmp_path), "first", cpus=0.25), Traced(str(tmp_path), "second", cpus=0.25)]
        got = make_executor(ignore_head_node=True, show_progress=False).run(stages, [Task(data=i) for i in range(30)])
        assert sorted(t.data for t in got) == list(range(2, 32))
        nodes = {e["node"] for name in ("first", "second") for e in read_trace(tmp_path, name)}
        assert nodes == {c.worker_node_ids[0]}

    def test_ignore_head_node_with_a_checkpointed_barrier(self, ray_two_node_cluster: RayTestCluster,
                                                          make_executor: Any, tmp_path: Any) -> None:
        """With a checkpoint, a shuffle's outputs are saved and loaded again by Ray tasks that keep to
        the schedule's nodes too (a label selector off the head); the run and a resume after the
        shuffle give the answer, and the stages' work stays off the head."""
        import shutil

        from curator_exec_core import Task
        from curator_exec_core.testing.stages import KeepFirst, Traced, Unwrap, read_trace

        c = ray_two_node_cluster
        stages = [Traced(str(tmp_path), "first", cpus=0.25), KeepFirst(modulo=5), Unwrap(),
                  Traced(str(tmp_path), "second", cpus=0.25)]
        want = [2, 3, 4, 5, 6]  # each group's first task (ids in order: data 0..4 become 1..5), plus one
        ck = tmp_path / "ck"
        got = make_executor(ignore_head_node=True, show_progress=False).run(
            stages, [Task(data=i) for i in range(30)], checkpoint_path=ck)
        assert sorted(t.data for t in got) == want
        shutil.rmtree(ck / "part-2")  # the part after the shuffle runs again, from its saved outputs
        again = make_executor(ignore_head_node=True, show_progress=False).run(
            stages, [Task(data=i) for i in range(30)], checkpoint_path=ck)
        assert sorted(t.data for t in again) == want
        nodes = {e["node"] for name in ("first", "second") for e in read_trace(tmp_path, name)}
        assert nodes == {c.worker_node_ids[0]}

    def test_a_schedule_wrapper_pins_a_stage_to_a_node(self, ray_two_node_cluster: RayTestCluster,
                                                       make_executor: Any, tmp_path: Any) -> None:
        from curator_exec_core import Task, register_plugin, unregister_plugin
        from curator_exec_core.testing.stages import Traced, read_trace

        c = ray_two_node_cluster
        for target in (c.head_node_id, c.worker_node_ids[0]):
            folder = tmp_path / target[:8]
            folder.mkdir()
            stages = [Traced(str(folder), "free", cpus=0.25), Traced(str(folder), "pinned", cpus=0.25)]
            pin = PinStage(1, [target])
            register_plugin(pin, name="test-pin-stage")
            try:
                result = make_executor(show_progress=False).run(stages, [Task(data=i) for i in range(30)])
            finally:
                unregister_plugin(pin)
            assert sorted(t.data for t in result) == list(range(2, 32))
            assert {e["node"] for e in read_trace(folder, "pinned")} == {target}

    def test_a_gang_follows_the_schedule(self, ray_two_node_cluster: RayTestCluster, make_executor: Any,
                                         tmp_path: Any) -> None:
        """A gang's ranks (one placement group) stay off the head with ``ignore_head_node``, and on the
        node a schedule wrapper pins the gang stage to."""
        from curator_exec_core import Task, register_plugin, unregister_plugin
        from curator_exec_core.testing.stages import AllReduceSum

        c = ray_two_node_cluster
        tasks = [Task(data=i) for i in range(10)]
        got = make_executor(ignore_head_node=True, show_progress=False).run([AllReduceSum(str(tmp_path))], tasks)
        assert len(got) == 10 and {t.data["node"] for t in got} == {c.worker_node_ids[0]}
        pin = PinStage(0, [c.head_node_id])
        register_plugin(pin, name="test-pin-stage")
        try:
            got = make_executor(show_progress=False).run([AllReduceSum(str(tmp_path), name="pinned_gang")],
                                                         [Task(data=i) for i in range(10)])
        finally:
            unregister_plugin(pin)
        assert len(got) == 10 and {t.data["node"] for t in got} == {c.head_node_id}


# -- what a run prints with default settings ---------------------------------------------------

#: a line of the engines' own logging (Ray's Python format, Xenna's loguru format) below ERROR
_ENGINE_CHATTER = (" INFO ", "\tINFO ", "\tWARNING ", "| INFO ", "| WARNING ", "| DEBUG ", "will hang unless",
                   "CuratorStage", "Using blocking ray.get", "Progress bars disabled", "Started a local Ray",
                   "Connecting to existing Ray cluster")


def quiet_run(executor: str, folder: str, *, runs: Sequence[Mapping[str, Any]] = ({},),
              env: Mapping[str, str] | None = None, timeout: float = 300) -> tuple[list[str], list[str], list[str]]:
    """Run a two-stage pipeline (a stateless stage, then one with lifecycle methods named ``recorded``)
    once per entry of ``runs`` (executor options on top of the defaults) in a fresh interpreter, with
    ``env`` (e.g. ``ray_driver_env``; without ``RAY_ADDRESS`` the run starts its own Ray). Returns the
    lines of stdout and stderr other than the script's own ``RESULT`` lines, and those."""
    import json
    import subprocess
    import sys

    code = (
        "import json, sys\n"
        "from curator_exec_core import Task, get_executor\n"
        "from curator_exec_core.testing.stages import AddOne, Recorded\n"
        f"for options in json.loads({json.dumps(json.dumps(list(runs)))}):\n"
        f"    got = get_executor({executor!r}, **options).run(\n"
        f"        [AddOne('add_one', cpus=0.25), Recorded({folder!r}, 'recorded', resources=None)],\n"
        "        [Task(data=i) for i in range(24)])\n"
        "    print('RESULT', len(got), got.metrics.get('engine', {}).get('engine_log'), flush=True)\n"
    )
    full_env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    full_env.update(env or {})
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                          env=full_env, cwd=folder)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = [line for line in proc.stdout.splitlines() if line.strip()]
    results = [line for line in out if line.startswith("RESULT ")]
    return [line for line in out if not line.startswith("RESULT ")], \
        [line for line in proc.stderr.splitlines() if line.strip()], results


def assert_quiet(stdout: Sequence[str], stderr: Sequence[str], *, at_most: int = 2) -> None:
    """Nothing of the engines' chatter, and at most ``at_most`` other lines (a warning of Ray's core,
    which writes to the terminal itself, may remain)."""
    printed = [*stdout, *stderr]
    chatter = [line for line in printed if any(s in line for s in _ENGINE_CHATTER)]
    assert not chatter, "engine chatter on the console:\n" + "\n".join(printed)
    assert len(printed) <= at_most, "more than a handful of lines:\n" + "\n".join(printed)

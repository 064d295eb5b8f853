"""A fake NVML module for tests on machines without GPUs.

It has the few ``pynvml`` calls :func:`curator_exec_core.capacity.probe_gpus`
uses. How many GPUs it reports is read from the environment of the process that
imports it, when ``nvmlInit`` is called:

* ``CURATOR_EXEC_FAKE_GPUS``: number of devices (unset or ``0``: NVML works but
  finds no device),
* ``CURATOR_EXEC_FAKE_GPU_MEMORY_GB``: memory of each device (default 16).

Use it for the per-node capacity probe on a ``ray.cluster_utils.Cluster`` by
setting ``CURATOR_EXEC_NVML_MODULE=curator_exec_core.testing.fake_nvml`` in the
driver and giving each node its GPU count through the raylet environment::

    cluster.add_node(num_cpus=1, num_gpus=2, env_vars={"CURATOR_EXEC_FAKE_GPUS": "2"})

(:func:`curator_exec_core.testing.fixtures.ray_cluster` does both.) Only NVML is
faked this way; Ray itself schedules against the ``num_gpus`` a node was given.
"""

from __future__ import annotations

import os
from types import SimpleNamespace

COUNT_ENV = "CURATOR_EXEC_FAKE_GPUS"
MEMORY_ENV = "CURATOR_EXEC_FAKE_GPU_MEMORY_GB"
MODULE = __name__


class NVMLError(Exception):
    pass


_initialised = False


def _count() -> int:
    return int(os.environ.get(COUNT_ENV, "0") or 0)


def nvmlInit() -> None:
    global _initialised
    _initialised = True


def nvmlShutdown() -> None:
    global _initialised
    if not _initialised:
        raise NVMLError("Uninitialized")
    _initialised = False


def nvmlDeviceGetCount() -> int:
    if not _initialised:
        raise NVMLError("Uninitialized")
    return _count()


def nvmlDeviceGetHandleByIndex(index: int) -> int:
    if not 0 <= index < _count():
        raise NVMLError(f"Invalid Argument: no device {index}")
    return index


def nvmlDeviceGetName(handle: int) -> str:
    return "Fake GPU"


def nvmlDeviceGetUUID(handle: int) -> str:
    return f"GPU-fake-{os.environ.get('CURATOR_EXEC_FAKE_GPU_NODE', 'node')}-{handle:04d}"


def nvmlDeviceGetMemoryInfo(handle: int) -> SimpleNamespace:
    total = int(float(os.environ.get(MEMORY_ENV, "16")) * 1024**3)
    return SimpleNamespace(total=total, free=total, used=0)

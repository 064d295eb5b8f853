"""What compute there is: :class:`Capacity`, :class:`NodeCapacity`, :class:`GpuInfo`.

:func:`probe_local` measures this machine: usable CPUs (CPU affinity and the
cgroup CPU quota, not just ``os.cpu_count()``), memory (cgroup limit aware) and
GPUs through NVML (the ``pynvml`` module of the ``nvidia-ml-py`` distribution),
honouring ``CUDA_VISIBLE_DEVICES``. Without a driver it reports zero GPUs and the
reason, never an exception and never a guessed size. Distributed backends run
the same probe on each node and assemble a :class:`Capacity` from the results.
"""

from __future__ import annotations

import math
import os
import socket
from collections.abc import Iterable
from types import ModuleType
from typing import Any

import attrs

__all__ = ["GpuInfo", "NodeCapacity", "Capacity", "probe_local", "probe_gpus", "usable_cpus"]


@attrs.frozen
class GpuInfo:
    """One GPU as NVML reports it. Memory is in bytes."""

    index: int
    uuid: str
    name: str
    memory_total: int
    memory_free: int

    @property
    def memory_total_gb(self) -> float:
        return self.memory_total / 1024**3


def _gpu_tuple(gpus: Iterable[GpuInfo]) -> tuple[GpuInfo, ...]:
    return tuple(gpus)


@attrs.frozen
class NodeCapacity:
    """One node: usable CPUs, memory in bytes, its GPUs, and why it has none (if so)."""

    node_id: str
    hostname: str
    cpus: float
    memory: int
    gpus: tuple[GpuInfo, ...] = attrs.field(default=(), converter=_gpu_tuple)
    is_head: bool = False
    gpu_reason: str | None = None

    @property
    def num_gpus(self) -> int:
        return len(self.gpus)

    def describe(self) -> str:
        head = " (head)" if self.is_head else ""
        gpus = ", ".join(f"{g.index}:{g.name} {g.memory_total_gb:.0f} GiB" for g in self.gpus) or (
            f"none ({self.gpu_reason})" if self.gpu_reason else "none"
        )
        return (
            f"node {self.node_id}{head} [{self.hostname}]: cpus={self.cpus:g} "
            f"memory={self.memory / 1024**3:.1f} GiB gpus={gpus}"
        )


def _node_tuple(nodes: Iterable[NodeCapacity]) -> tuple[NodeCapacity, ...]:
    return tuple(nodes)


@attrs.frozen
class Capacity:
    """The compute an executor can use: a tuple of nodes, with totals."""

    nodes: tuple[NodeCapacity, ...] = attrs.field(converter=_node_tuple)

    @property
    def total_cpus(self) -> float:
        return sum(n.cpus for n in self.nodes)

    @property
    def total_gpus(self) -> int:
        return sum(n.num_gpus for n in self.nodes)

    @property
    def total_memory(self) -> int:
        return sum(n.memory for n in self.nodes)

    @property
    def gpus(self) -> list[GpuInfo]:
        return [g for n in self.nodes for g in n.gpus]

    def without_head(self) -> Capacity:
        """The same capacity with the head node removed (``ignore_head_node``)."""
        return Capacity(nodes=[n for n in self.nodes if not n.is_head])

    def describe(self) -> str:
        lines = [
            f"{len(self.nodes)} node(s): cpus={self.total_cpus:g} gpus={self.total_gpus} "
            f"memory={self.total_memory / 1024**3:.1f} GiB"
        ]
        lines += ["  " + n.describe() for n in self.nodes]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self, recurse=True)


# -- CPUs and memory ---------------------------------------------------------------


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def cgroup_cpu_quota(root: str = "/sys/fs/cgroup") -> float | None:
    """CPUs allowed by the cgroup quota (v2 ``cpu.max`` or v1 CFS), or None if unlimited."""
    quota: str | None
    period: str | None
    v2 = _read(os.path.join(root, "cpu.max"))
    if v2:
        quota, _, period = v2.partition(" ")
        if quota != "max" and period:
            return int(quota) / int(period)
        return None
    quota = _read(os.path.join(root, "cpu", "cpu.cfs_quota_us")) or _read(os.path.join(root, "cpu.cfs_quota_us"))
    period = _read(os.path.join(root, "cpu", "cpu.cfs_period_us")) or _read(os.path.join(root, "cpu.cfs_period_us"))
    if quota and period and int(quota) > 0:
        return int(quota) / int(period)
    return None


def usable_cpus(cgroup_root: str = "/sys/fs/cgroup") -> float:
    """CPUs this process may use: affinity mask, capped by the cgroup quota."""
    try:
        cpus: float = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    quota = cgroup_cpu_quota(cgroup_root)
    if quota is not None:
        cpus = min(cpus, max(quota, 0.01))
    return cpus


def usable_memory(cgroup_root: str = "/sys/fs/cgroup") -> int:
    """Physical memory in bytes, capped by the cgroup memory limit."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = 0
    for path in ("memory.max", "memory/memory.limit_in_bytes"):
        value = _read(os.path.join(cgroup_root, path))
        if value and value.isdigit():
            limit = int(value)
            if 0 < limit < total or not total:
                total = limit
    return total


# -- GPUs --------------------------------------------------------------------------


def _visible_filter(devices: list[GpuInfo], visible: str | None) -> list[GpuInfo]:
    """Apply ``CUDA_VISIBLE_DEVICES`` (indices or UUID prefixes; invalid entry ends the list)."""
    if visible is None:
        return devices
    chosen: list[GpuInfo] = []
    for raw in visible.split(","):
        item = raw.strip()
        if not item:
            break
        match: GpuInfo | None = None
        if item.lstrip("-").isdigit():
            idx = int(item)
            if idx < 0:
                break
            match = next((d for d in devices if d.index == idx), None)
        else:
            match = next((d for d in devices if d.uuid.startswith(item) or d.uuid == "GPU-" + item), None)
        if match is None:
            break  # CUDA stops at the first invalid entry
        if match not in chosen:
            chosen.append(match)
    # CUDA renumbers visible devices from 0; keep NVML's index so users can map back.
    return chosen


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def probe_gpus(nvml: ModuleType | None = None, visible: str | None = None) -> tuple[list[GpuInfo], str | None]:
    """GPUs via NVML as ``(gpus, reason)``; ``reason`` says why the list is empty.

    ``nvml`` defaults to the ``pynvml`` module (from ``nvidia-ml-py``); tests pass a
    fake. ``visible`` defaults to ``CUDA_VISIBLE_DEVICES`` from the environment.
    """
    if visible is None:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if nvml is None:
        try:
            import pynvml  # provided by nvidia-ml-py
        except Exception as exc:  # ImportError, or a broken install
            return [], f"pynvml not importable ({exc}); install nvidia-ml-py"
        nvml = pynvml
    try:
        nvml.nvmlInit()
    except Exception as exc:
        return [], f"NVML unavailable: {exc}"
    try:
        devices: list[GpuInfo] = []
        for i in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(i)
            mem = nvml.nvmlDeviceGetMemoryInfo(handle)
            devices.append(
                GpuInfo(
                    index=i,
                    uuid=_text(nvml.nvmlDeviceGetUUID(handle)),
                    name=_text(nvml.nvmlDeviceGetName(handle)),
                    memory_total=int(mem.total),
                    memory_free=int(mem.free),
                )
            )
    except Exception as exc:
        return [], f"NVML query failed: {exc}"
    finally:
        try:
            nvml.nvmlShutdown()
        except Exception:
            pass
    if not devices:
        return [], "NVML reports no GPU devices"
    chosen = _visible_filter(devices, visible)
    if not chosen:
        return [], f"no GPU visible with CUDA_VISIBLE_DEVICES={visible!r}"
    return chosen, None


def probe_local(
    node_id: str | None = None,
    *,
    is_head: bool = True,
    nvml: ModuleType | None = None,
    visible: str | None = None,
    cgroup_root: str = "/sys/fs/cgroup",
) -> NodeCapacity:
    """Measure this machine. Never raises for missing GPUs or drivers."""
    hostname = socket.gethostname()
    gpus, reason = probe_gpus(nvml=nvml, visible=visible)
    return NodeCapacity(
        node_id=node_id or hostname,
        hostname=hostname,
        cpus=usable_cpus(cgroup_root),
        memory=usable_memory(cgroup_root),
        gpus=gpus,
        is_head=is_head,
        gpu_reason=reason,
    )


def local_capacity(**kwargs: Any) -> Capacity:
    """A one-node :class:`Capacity` for this machine."""
    return Capacity(nodes=[probe_local(**kwargs)])


def fraction_of_gpu(gpu_memory_gb: float, gpus: Iterable[GpuInfo]) -> float:
    """The GPU fraction that gives ``gpu_memory_gb`` on the smallest of ``gpus``."""
    smallest = min(g.memory_total for g in gpus)
    frac = gpu_memory_gb * 1024**3 / smallest
    return math.ceil(frac * 1000) / 1000

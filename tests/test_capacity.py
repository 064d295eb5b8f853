"""Capacity: the NVML probe (with a fake NVML and the real no-driver path), cgroup-aware
CPUs and memory, and the Capacity / NodeCapacity / GpuInfo records."""

from __future__ import annotations

import json
import os
import pickle
import sys

import pytest

from curator_exec_core.capacity import (
    Capacity,
    GpuInfo,
    NodeCapacity,
    cgroup_cpu_quota,
    fraction_of_gpu,
    local_capacity,
    probe_gpus,
    probe_local,
    usable_cpus,
    usable_memory,
)

GiB = 1024**3


def affinity_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


# -- a fake NVML ---------------------------------------------------------------------


class FakeNVMLError(Exception):
    """Stands in for pynvml.NVMLError."""


class FakeMemory:
    def __init__(self, total: int, free: int) -> None:
        self.total = total
        self.free = free
        self.used = total - free


class FakeNVML:
    """Just the NVML calls the probe makes. Records calls; can fail on purpose.

    Device 0 returns its name as bytes (old nvidia-ml-py), the others as str.
    """

    NVMLError = FakeNVMLError

    def __init__(self, devices=None, *, fail_init=False, fail_on_index=None, fail_shutdown=False):
        self.devices = devices if devices is not None else [
            ("GPU-aaaaaaaa-0000-0000-0000-000000000000", "NVIDIA A100-SXM4-80GB", 80 * GiB, 79 * GiB),
            ("GPU-bbbbbbbb-1111-1111-1111-111111111111", "Tesla T4", 16 * GiB, 15 * GiB),
        ]
        self.fail_init = fail_init
        self.fail_on_index = fail_on_index
        self.fail_shutdown = fail_shutdown
        self.calls: list[str] = []

    def nvmlInit(self):
        self.calls.append("init")
        if self.fail_init:
            raise FakeNVMLError("Driver Not Loaded")

    def nvmlShutdown(self):
        self.calls.append("shutdown")
        if self.fail_shutdown:
            raise FakeNVMLError("Uninitialized")

    def nvmlDeviceGetCount(self):
        self.calls.append("count")
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, i):
        self.calls.append(f"handle:{i}")
        if i == self.fail_on_index:
            raise FakeNVMLError("GPU is lost")
        return i

    def nvmlDeviceGetName(self, handle):
        name = self.devices[handle][1]
        return name.encode() if handle == 0 else name

    def nvmlDeviceGetUUID(self, handle):
        uuid = self.devices[handle][0]
        return uuid.encode() if handle == 0 else uuid

    def nvmlDeviceGetMemoryInfo(self, handle):
        _, _, total, free = self.devices[handle]
        return FakeMemory(total, free)


UUID0 = "GPU-aaaaaaaa-0000-0000-0000-000000000000"
UUID1 = "GPU-bbbbbbbb-1111-1111-1111-111111111111"


# -- probe_gpus with a fake NVML -------------------------------------------------------


def test_gpus_reported_with_index_uuid_name_memory():
    nvml = FakeNVML()
    gpus, reason = probe_gpus(nvml=nvml, visible=None)
    assert reason is None
    assert gpus == [
        GpuInfo(index=0, uuid=UUID0, name="NVIDIA A100-SXM4-80GB", memory_total=80 * GiB, memory_free=79 * GiB),
        GpuInfo(index=1, uuid=UUID1, name="Tesla T4", memory_total=16 * GiB, memory_free=15 * GiB),
    ]
    # bytes from NVML are decoded
    assert all(isinstance(g.name, str) and isinstance(g.uuid, str) for g in gpus)
    assert gpus[0].memory_total_gb == 80.0
    assert nvml.calls[0] == "init" and nvml.calls[-1] == "shutdown"
    assert nvml.calls.count("shutdown") == 1


def test_visible_devices_default_comes_from_environment(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    gpus, reason = probe_gpus(nvml=FakeNVML())
    assert [g.index for g in gpus] == [1] and reason is None
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    gpus, reason = probe_gpus(nvml=FakeNVML())
    assert [g.index for g in gpus] == [0, 1]


@pytest.mark.parametrize(
    ("visible", "indices"),
    [
        ("0", [0]),
        ("1", [1]),
        ("1,0", [1, 0]),  # CUDA order follows the variable
        (" 1 , 0 ", [1, 0]),
        ("1,1", [1]),
        (UUID1, [1]),  # full UUID
        ("GPU-bbbbbbbb", [1]),  # UUID prefix
        ("bbbbbbbb-1111-1111-1111-111111111111", [1]),  # UUID without the GPU- prefix
        (f"{UUID1},0", [1, 0]),
    ],
)
def test_cuda_visible_devices_selects(visible, indices):
    gpus, reason = probe_gpus(nvml=FakeNVML(), visible=visible)
    assert [g.index for g in gpus] == indices
    assert reason is None
    # NVML's index is kept (not CUDA's renumbering) so users can map back
    assert all(g.uuid == (UUID0 if g.index == 0 else UUID1) for g in gpus)


@pytest.mark.parametrize(
    ("visible", "indices"),
    [
        ("0,7,1", [0]),  # CUDA stops at the first invalid entry
        ("1,GPU-nope,0", [1]),
        ("0,-1,1", [0]),
        ("0,,1", [0]),
    ],
)
def test_invalid_visible_entry_truncates_the_list(visible, indices):
    gpus, reason = probe_gpus(nvml=FakeNVML(), visible=visible)
    assert [g.index for g in gpus] == indices
    assert reason is None


@pytest.mark.parametrize("visible", ["", "-1", "7", "GPU-nope", "NoDevFiles"])
def test_nothing_visible_means_no_gpu_with_reason(visible):
    nvml = FakeNVML()
    gpus, reason = probe_gpus(nvml=nvml, visible=visible)
    assert gpus == []
    assert reason and "CUDA_VISIBLE_DEVICES" in reason and repr(visible) in reason
    assert nvml.calls[-1] == "shutdown"


def test_no_devices_reported():
    nvml = FakeNVML(devices=[])
    gpus, reason = probe_gpus(nvml=nvml, visible=None)
    assert gpus == [] and "no GPU devices" in reason
    assert nvml.calls == ["init", "count", "shutdown"]


def test_init_failure_means_zero_gpus_and_reason_never_an_exception():
    nvml = FakeNVML(fail_init=True)
    gpus, reason = probe_gpus(nvml=nvml, visible=None)
    assert gpus == []
    assert "NVML unavailable" in reason and "Driver Not Loaded" in reason
    # never shut down what did not start (real NVML raises Uninitialized then)
    assert nvml.calls == ["init"]


def test_query_failure_midway_means_zero_gpus_and_shutdown_still_called():
    nvml = FakeNVML(fail_on_index=1)
    gpus, reason = probe_gpus(nvml=nvml, visible=None)
    assert gpus == []  # never a partial list
    assert "NVML query failed" in reason and "GPU is lost" in reason
    assert nvml.calls[-1] == "shutdown" and nvml.calls.count("shutdown") == 1


def test_failing_shutdown_is_swallowed():
    gpus, reason = probe_gpus(nvml=FakeNVML(fail_shutdown=True), visible=None)
    assert len(gpus) == 2 and reason is None


def test_pynvml_not_importable(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` raise ImportError
    gpus, reason = probe_gpus(visible=None)
    assert gpus == []
    assert "pynvml not importable" in reason and "nvidia-ml-py" in reason


def test_probe_local_with_fake_nvml(tmp_path):
    (tmp_path / "cpu.max").write_text("100000 100000\n")
    (tmp_path / "memory.max").write_text(str(2 * GiB))
    node = probe_local("node-a", is_head=False, nvml=FakeNVML(), visible="1", cgroup_root=str(tmp_path))
    assert node.node_id == "node-a"
    assert node.hostname
    assert node.cpus == min(1.0, affinity_cpus())
    assert node.memory == 2 * GiB
    assert [g.name for g in node.gpus] == ["Tesla T4"]
    assert node.num_gpus == 1 and node.gpu_reason is None and node.is_head is False


def test_probe_local_defaults_node_id_to_hostname():
    node = probe_local(nvml=FakeNVML(fail_init=True))
    assert node.node_id == node.hostname and node.is_head is True
    assert node.gpus == () and "NVML" in node.gpu_reason


# -- the real no-driver path on this machine -----------------------------------------


def test_real_nvml_without_driver_reports_zero_gpus_with_reason():
    import pynvml  # from nvidia-ml-py

    node = probe_local()  # real pynvml, real CUDA_VISIBLE_DEVICES, real cgroups
    assert node.cpus > 0 and node.memory > 0
    if node.gpus:
        pytest.skip(f"this machine has GPUs: {[g.name for g in node.gpus]}")
    assert node.gpu_reason and "NVML" in node.gpu_reason
    # and it costs nothing to ask again: no state is left behind
    gpus, reason = probe_gpus()
    assert gpus == [] and reason
    assert issubclass(pynvml.NVMLError, Exception)
    cap = local_capacity()
    assert cap.total_gpus == 0 and cap.gpus == [] and len(cap.nodes) == 1 and cap.nodes[0].is_head


def test_real_nvml_init_failure_is_the_documented_error():
    """Pins what the probe relies on: without a driver, nvmlInit raises an NVMLError."""
    import pynvml

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        assert "NVML" in str(exc) or exc.value
    else:
        pynvml.nvmlShutdown()
        pytest.skip("NVML is available on this machine")


# -- CPUs and memory under cgroups -----------------------------------------------------


def test_cgroup_v2_quota_caps_cpus(tmp_path):
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cgroup_cpu_quota(str(tmp_path)) == 1.5
    assert usable_cpus(str(tmp_path)) == min(1.5, affinity_cpus())


def test_cgroup_v2_unlimited_is_the_affinity_count(tmp_path):
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_quota(str(tmp_path)) is None
    assert usable_cpus(str(tmp_path)) == affinity_cpus()


def test_cgroup_quota_above_affinity_does_not_raise_cpus(tmp_path):
    (tmp_path / "cpu.max").write_text(f"{(affinity_cpus() + 8) * 100000} 100000\n")
    assert usable_cpus(str(tmp_path)) == affinity_cpus()


def test_tiny_quota_is_never_zero(tmp_path):
    (tmp_path / "cpu.max").write_text("100 100000\n")
    assert 0 < usable_cpus(str(tmp_path)) <= 0.01 + 1e-12


@pytest.mark.parametrize("nested", [True, False])
def test_cgroup_v1_quota(tmp_path, nested):
    folder = tmp_path / "cpu" if nested else tmp_path
    folder.mkdir(exist_ok=True)
    (folder / "cpu.cfs_quota_us").write_text("50000\n")
    (folder / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_quota(str(tmp_path)) == 0.5
    assert usable_cpus(str(tmp_path)) == 0.5


def test_cgroup_v1_unlimited(tmp_path):
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_quota(str(tmp_path)) is None
    assert usable_cpus(str(tmp_path)) == affinity_cpus()


def test_no_cgroup_files_is_the_affinity_count(tmp_path):
    assert cgroup_cpu_quota(str(tmp_path)) is None
    assert usable_cpus(str(tmp_path)) == affinity_cpus()
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert usable_memory(str(tmp_path)) == physical


def test_memory_max_caps_memory(tmp_path):
    (tmp_path / "memory.max").write_text(f"{GiB}\n")
    assert usable_memory(str(tmp_path)) == GiB


def test_memory_max_unlimited_or_above_physical(tmp_path):
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    (tmp_path / "memory.max").write_text("max\n")
    assert usable_memory(str(tmp_path)) == physical
    (tmp_path / "memory.max").write_text(f"{physical * 4}\n")
    assert usable_memory(str(tmp_path)) == physical


def test_cgroup_v1_memory_limit(tmp_path):
    (tmp_path / "memory").mkdir()
    (tmp_path / "memory" / "memory.limit_in_bytes").write_text(f"{3 * GiB}\n")
    assert usable_memory(str(tmp_path)) == 3 * GiB
    # v1 "unlimited" is a huge number: physical memory wins
    (tmp_path / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    assert usable_memory(str(tmp_path)) == os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


# -- the records -----------------------------------------------------------------------


def gpu(index: int, gib: int, node: str = "n") -> GpuInfo:
    return GpuInfo(index=index, uuid=f"GPU-{node}-{index}", name=f"Fake{gib}G", memory_total=gib * GiB,
                   memory_free=gib * GiB)


@pytest.fixture
def cluster() -> Capacity:
    return Capacity(nodes=[
        NodeCapacity("head", "h0", cpus=4, memory=16 * GiB, is_head=True, gpu_reason="NVML unavailable: test"),
        NodeCapacity("w1", "h1", cpus=8, memory=64 * GiB, gpus=[gpu(0, 80, "w1"), gpu(1, 80, "w1")]),
        NodeCapacity("w2", "h2", cpus=6.5, memory=32 * GiB, gpus=[gpu(0, 16, "w2")]),
    ])


def test_capacity_totals(cluster):
    assert cluster.total_cpus == 18.5
    assert cluster.total_gpus == 3
    assert cluster.total_memory == 112 * GiB
    assert [g.uuid for g in cluster.gpus] == ["GPU-w1-0", "GPU-w1-1", "GPU-w2-0"]
    assert [n.num_gpus for n in cluster.nodes] == [0, 2, 1]
    assert isinstance(cluster.nodes, tuple) and isinstance(cluster.nodes[1].gpus, tuple)  # lists are converted


def test_without_head(cluster):
    rest = cluster.without_head()
    assert [n.node_id for n in rest.nodes] == ["w1", "w2"]
    assert rest.total_cpus == 14.5 and rest.total_gpus == 3
    assert cluster.total_cpus == 18.5  # frozen: the original is unchanged
    one = Capacity(nodes=[NodeCapacity("only", "h", cpus=2, memory=GiB, is_head=True)])
    assert one.without_head().nodes == () and one.without_head().total_cpus == 0


def test_describe(cluster):
    text = cluster.describe()
    lines = text.splitlines()
    assert lines[0] == "3 node(s): cpus=18.5 gpus=3 memory=112.0 GiB"
    assert lines[1].startswith("  node head (head) [h0]: cpus=4 ") and "none (NVML unavailable: test)" in lines[1]
    assert "0:Fake80G 80 GiB, 1:Fake80G 80 GiB" in lines[2]
    assert "(head)" not in lines[2] and "cpus=6.5" in lines[3]


def test_to_dict_is_plain_data(cluster):
    d = cluster.to_dict()
    assert d["nodes"][1]["node_id"] == "w1"
    assert d["nodes"][1]["gpus"][0] == {"index": 0, "uuid": "GPU-w1-0", "name": "Fake80G",
                                        "memory_total": 80 * GiB, "memory_free": 80 * GiB}
    assert d["nodes"][0]["is_head"] is True and d["nodes"][0]["gpu_reason"] == "NVML unavailable: test"
    json.dumps(d)  # serialisable


def test_capacity_pickles(cluster):
    assert pickle.loads(pickle.dumps(cluster)) == cluster


def test_records_are_frozen(cluster):
    import attrs

    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        cluster.nodes[0].cpus = 99  # type: ignore[misc]


def test_fraction_of_gpu_uses_the_smallest_gpu():
    assert fraction_of_gpu(8, [gpu(0, 16)]) == 0.5
    assert fraction_of_gpu(8, [gpu(0, 80)]) == 0.1
    assert fraction_of_gpu(8, [gpu(0, 80), gpu(1, 16)]) == 0.5
    assert fraction_of_gpu(5, [gpu(0, 16)]) == 0.313  # rounded up, never below the need

"""Accelerator and host detection against fakes of NVML and amdsmi built from real machines' data.

The fakes raise the real `pynvml.NVMLError` classes, so the detectors' except clauses run for real.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import msgspec
import pynvml
import pytest

import agent.detect
from agent.blocks import BlocksError
from agent.detect import DetectResult, detect_inventory
from agent.detect import amd as amd_module
from agent.detect import nvidia as nvidia_module
from agent.detect.amd import amd_name, detect_amd
from agent.detect.host import HostFacts, detect_host
from agent.detect.nvidia import detect_nvidia, normalize_nvidia_name
from agent.detect.simulate import parse_simulated_gpus
from agent.detect.sysfs import read_numa_node, sysfs_pci_address
from shared.wire import GpuDevice, Inventory
from tests.fakes import (
    AmdSmiLibraryException,
    fake_amdsmi,
    fake_nvml,
    fake_sysfs,
    load,
    no_nvml_calls,
    nvml_error,
)

NO_NVIDIA = "NVIDIA: NVML library not found; no NVIDIA GPUs"
NO_AMD = "AMD: amdsmi not available; no AMD GPUs"


# --- NVIDIA ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "short"),
    [
        ("NVIDIA H100 80GB HBM3", "H100"),
        ("NVIDIA A10G", "A10G"),
        ("Tesla T4", "T4"),
        ("NVIDIA L40S", "L40S"),
        ("NVIDIA GeForce RTX 4090", "RTX4090"),
        ("NVIDIA A100-SXM4-80GB", "A100"),
        ("NVIDIA H100 PCIe", "H100"),
        ("NVIDIA RTX A6000", "RTXA6000"),
        ("Tesla V100-SXM2-16GB", "V100"),
        ("NVIDIA A100 80GB PCIe", "A100"),
        ("NVIDIA H200", "H200"),
        ("NVIDIA L4", "L4"),
    ],
)
def test_nvidia_names_are_normalized(raw: str, short: str) -> None:
    assert normalize_nvidia_name(raw) == short


def test_eight_h100_sxm(tmp_path: Path) -> None:
    fixture = load("nvml", "h100_sxm_8")
    nvml = fake_nvml(fixture)

    result = detect_nvidia(nvml, sysfs_root=fake_sysfs(tmp_path, fixture, "pci_bus_id"))

    assert result.warnings == ()
    assert result.info == ("NVIDIA: driver 550.90.07, CUDA 12.4, 8 GPUs",)
    assert [g.index for g in result.gpus] == list(range(8))
    assert {(g.vendor, g.name, g.memory_mib, g.simulated) for g in result.gpus} == {
        ("nvidia", "H100", 81559, False)
    }
    assert [g.uuid for g in result.gpus] == [d["uuid"] for d in fixture["devices"]]
    assert result.gpus[1].pci_bus_id == "00000000:2A:00.0"
    assert [g.numa_node for g in result.gpus] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert nvml.calls == ["init", "shutdown"]


def test_numa_node_is_none_without_sysfs(tmp_path: Path) -> None:
    result = detect_nvidia(fake_nvml(load("nvml", "h100_sxm_8")), sysfs_root=str(tmp_path))

    assert {g.numa_node for g in result.gpus} == {None}


def test_four_a10g_from_a_binding_that_returns_bytes(tmp_path: Path) -> None:
    fixture = load("nvml", "a10g_4")

    result = detect_nvidia(fake_nvml(fixture), sysfs_root=fake_sysfs(tmp_path, fixture, "pci_bus_id"))

    assert result.warnings == ()
    assert result.info == ("NVIDIA: driver 535.183.01, CUDA 12.2, 4 GPUs",)
    assert [(g.index, g.name, g.memory_mib) for g in result.gpus] == [(i, "A10G", 23028) for i in range(4)]
    assert result.gpus[3].pci_bus_id == "00000000:00:1E.0"
    assert result.gpus[0].uuid == "GPU-3f1b0c2e-8d4a-11ee-9a6b-0242ac120002"
    assert {g.numa_node for g in result.gpus} == {None}  # sysfs says -1: no affinity


def test_a_gpu_with_mig_enabled_is_not_handed_out(tmp_path: Path) -> None:
    result = detect_nvidia(fake_nvml(load("nvml", "a100_mig")), sysfs_root=str(tmp_path))

    assert [(g.index, g.name, g.memory_mib) for g in result.gpus] == [(0, "A100", 81920)]
    assert len(result.warnings) == 1
    assert result.warnings[0].startswith("NVIDIA: GPU 1 skipped: MIG is enabled")
    assert "MIG instances are not supported yet" in result.warnings[0]


def test_driver_library_version_mismatch_is_loud() -> None:
    nvml = fake_nvml(load("nvml", "version_mismatch"))

    result = detect_nvidia(nvml)

    assert result == DetectResult(
        warnings=(
            "NVIDIA: NVML failed: Driver/library version mismatch — "
            "GPUs on this host are not usable until it is fixed",
        )
    )
    assert nvml.calls == ["init"]


def test_driver_not_loaded_is_loud() -> None:
    result = detect_nvidia(fake_nvml({"init_error": "DRIVER_NOT_LOADED"}))

    assert result.gpus == ()
    assert result.warnings == (
        "NVIDIA: NVML failed: Driver Not Loaded — GPUs on this host are not usable until it is fixed",
    )


def test_missing_library_is_only_info() -> None:
    assert detect_nvidia(fake_nvml(load("nvml", "no_library"))) == DetectResult(info=(NO_NVIDIA,))


def test_missing_library_raised_as_its_own_class() -> None:
    nvml = fake_nvml({})

    def init() -> None:
        raise pynvml.NVMLError_LibraryNotFound()

    nvml.nvmlInit = init
    assert detect_nvidia(nvml) == DetectResult(info=(NO_NVIDIA,))


def test_missing_binding_is_only_info(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_module() -> None:
        raise ImportError("No module named 'pynvml'")

    monkeypatch.setattr(nvidia_module, "_import_pynvml", no_module)

    assert detect_nvidia() == DetectResult(info=(NO_NVIDIA,))


def test_a_lost_gpu_is_skipped_and_the_rest_are_kept(tmp_path: Path) -> None:
    fixture = load("nvml", "h100_sxm_8")
    fixture["devices"][5]["error"] = "GPU_IS_LOST"

    result = detect_nvidia(fake_nvml(fixture), sysfs_root=str(tmp_path))

    assert [g.index for g in result.gpus] == [0, 1, 2, 3, 4, 6, 7]
    assert result.warnings == ("NVIDIA: GPU 5 skipped: GPU is lost",)


def test_nvml_is_shut_down_when_enumeration_fails() -> None:
    nvml = fake_nvml(load("nvml", "h100_sxm_8"))

    def count() -> int:
        raise nvml_error("UNKNOWN")

    nvml.nvmlDeviceGetCount = count
    result = detect_nvidia(nvml)

    assert result.gpus == ()
    assert result.warnings == (
        "NVIDIA: NVML failed: Unknown Error — GPUs on this host are not usable until it is fixed",
    )
    assert nvml.calls == ["init", "shutdown"]


@pytest.mark.parametrize(
    ("bus_id", "address"),
    [
        ("00000000:18:00.0", "0000:18:00.0"),
        ("00000000:AB:00.0", "0000:ab:00.0"),
        ("0000:c6:00.0", "0000:c6:00.0"),
        ("00000001:DB:00.1", "0001:db:00.1"),
        ("garbage", None),
        ("zz:18:00.0", None),
    ],
)
def test_sysfs_pci_address(bus_id: str, address: str | None) -> None:
    assert sysfs_pci_address(bus_id) == address


def test_unreadable_numa_node_is_none(tmp_path: Path) -> None:
    device = tmp_path / "bus" / "pci" / "devices" / "0000:18:00.0"
    device.mkdir(parents=True)
    (device / "numa_node").write_text("not a number\n")

    assert read_numa_node("00000000:18:00.0", str(tmp_path)) is None
    assert read_numa_node("00000000:19:00.0", str(tmp_path)) is None


# --- AMD -------------------------------------------------------------------------------------------------


def test_eight_mi300x(tmp_path: Path) -> None:
    fixture = load("amdsmi", "mi300x_8")
    amdsmi = fake_amdsmi(fixture)

    result = detect_amd(amdsmi, sysfs_root=fake_sysfs(tmp_path, fixture, "bdf"))

    assert result.warnings == ()
    assert result.info == ("AMD: 8 GPUs",)
    assert {(g.vendor, g.name, g.memory_mib) for g in result.gpus} == {("amd", "MI300X", 196592)}
    assert [g.index for g in result.gpus] == list(range(8))
    assert [g.pci_bus_id for g in result.gpus] == [d["bdf"] for d in fixture["devices"]]
    assert result.gpus[0].uuid == "05ff74a1-0000-1000-80d2-6a1f3c8e5b47"
    assert [g.numa_node for g in result.gpus] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert amdsmi.calls == ["init", "shutdown"]


@pytest.mark.parametrize(
    ("market_name", "device_id", "short"),
    [
        ("AMD Instinct MI300X", "0x74a1", "MI300X"),
        ("Instinct MI250X / MI250", 0x740C, "MI250X"),
        ("AMD Instinct MI210", "0x740f", "MI210"),
        ("", "0x74a1", "MI300X"),
        ("0x740c", "0x740c", "MI250X"),
        ("N/A", 0x738C, "MI100"),
        ("", "0x74b5", "AMD-0x74b5"),
        ("0x74b5", None, "AMD-0x74b5"),
    ],
)
def test_amd_names(market_name: str, device_id: int | str | None, short: str) -> None:
    assert amd_name(market_name, device_id) == short


def test_amdsmi_failure_is_loud() -> None:
    amdsmi = fake_amdsmi({}, init_error="AMDSMI_STATUS_DRIVER_NOT_LOADED")

    result = detect_amd(amdsmi)

    assert result.gpus == ()
    assert result.warnings == (
        "AMD: amdsmi failed: AMDSMI_STATUS_DRIVER_NOT_LOADED — GPUs on this host are not usable until it is fixed",
    )


def test_amdsmi_is_shut_down_when_a_query_fails() -> None:
    amdsmi = fake_amdsmi(load("amdsmi", "mi300x_8"))

    def vram(handle: int) -> dict[str, int]:
        raise AmdSmiLibraryException("AMDSMI_STATUS_NOT_SUPPORTED")

    amdsmi.amdsmi_get_gpu_vram_info = vram
    result = detect_amd(amdsmi)

    assert result.gpus == () and len(result.warnings) == 1
    assert amdsmi.calls == ["init", "shutdown"]


@pytest.mark.parametrize(
    "error", [ImportError("No module named 'amdsmi'"), OSError("libamd_smi.so: not found")]
)
def test_missing_amdsmi_is_only_info(monkeypatch: pytest.MonkeyPatch, error: Exception) -> None:
    def no_module() -> None:
        raise error

    monkeypatch.setattr(amd_module, "_import_amdsmi", no_module)

    assert detect_amd() == DetectResult(info=(NO_AMD,))


# --- simulate --------------------------------------------------------------------------------------------


def test_simulated_h100_host() -> None:
    gpus = parse_simulated_gpus("8xH100:80GB")

    assert [g.index for g in gpus] == list(range(8))
    assert {(g.vendor, g.name, g.memory_mib, g.simulated) for g in gpus} == {("nvidia", "H100", 81920, True)}
    assert gpus[3].uuid == "GPU-sim-00000000-0000-0000-0000-000000000003"
    assert len({g.pci_bus_id for g in gpus}) == 8
    assert gpus[0].pci_bus_id == "00000000:18:00.0"
    assert [g.numa_node for g in gpus] == [0, 0, 0, 0, 1, 1, 1, 1]


def test_simulated_mixed_models_share_one_index_space() -> None:
    gpus = parse_simulated_gpus("2xH100:80GB, 2xA100:40GB")

    assert [(g.index, g.name, g.memory_mib) for g in gpus] == [
        (0, "H100", 81920),
        (1, "H100", 81920),
        (2, "A100", 40960),
        (3, "A100", 40960),
    ]
    assert [g.numa_node for g in gpus] == [0, 0, 1, 1]


@pytest.mark.parametrize(
    ("spec", "vendor", "name", "memory_mib"),
    [
        ("4xA10G:24GB", "nvidia", "A10G", 24576),
        ("8xMI300X:192GB", "amd", "MI300X", 196608),
        ("1xL4", "nvidia", "L4", 24576),
        ("1xh200", "nvidia", "H200", 141 * 1024),
        ("2xMI250", "amd", "MI250", 128 * 1024),
        ("8xGaudi2", "intel", "GAUDI2", 96 * 1024),
        ("1xT4:15360MB", "nvidia", "T4", 15360),
        ("1xFuture9:100GiB", "nvidia", "Future9", 102400),
    ],
)
def test_simulated_models(spec: str, vendor: str, name: str, memory_mib: int) -> None:
    gpu = parse_simulated_gpus(spec)[0]

    assert (gpu.vendor, gpu.name, gpu.memory_mib) == (vendor, name, memory_mib)


def test_simulated_amd_uuid_is_serial_like() -> None:
    gpus = parse_simulated_gpus("2xMI300X")

    assert [g.uuid for g in gpus] == ["sim-amd-0000000000000000", "sim-amd-0000000000000001"]


def test_many_simulated_gpus_get_distinct_bus_ids() -> None:
    gpus = parse_simulated_gpus("300xH100")

    assert len({g.pci_bus_id for g in gpus}) == 300


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("8H100", "simulate: expected COUNTxMODEL[:MEMORY], got '8H100'"),
        ("", "simulate: expected COUNTxMODEL[:MEMORY], got ''"),
        ("8xH100,", "simulate: expected COUNTxMODEL[:MEMORY], got ''"),
        ("xH100", "simulate: expected COUNTxMODEL[:MEMORY], got 'xH100'"),
        ("0xH100", "simulate: GPU count must be at least 1, got '0xH100'"),
        ("2xFoo", "simulate: unknown model 'Foo' needs its memory, e.g. '2xFoo:80GB'"),
        ("2xH100:80", "simulate: memory must look like 80GB or 24576MB, got '80' in '2xH100:80'"),
        ("2xH100:lots", "simulate: memory must look like 80GB or 24576MB, got 'lots' in '2xH100:lots'"),
    ],
)
def test_bad_simulate_specs(spec: str, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_simulated_gpus(spec)

    assert str(caught.value) == message


# --- host and inventory ----------------------------------------------------------------------------------


def test_detect_host_reads_this_machine(tmp_path: Path) -> None:
    facts = detect_host(str(tmp_path))

    assert facts.hostname
    assert facts.cpus == tuple(sorted(os.sched_getaffinity(0)))
    assert facts.memory_mib > 0 and facts.disk_mib > 0


@pytest.fixture
def host_64_cores(monkeypatch: pytest.MonkeyPatch) -> HostFacts:
    facts = HostFacts(hostname="gpu-node-7", cpus=tuple(range(64)), memory_mib=2_000_000, disk_mib=7_000_000)
    monkeypatch.setattr(agent.detect, "detect_host", lambda state_dir, sysfs_root: facts)
    return facts


def test_simulated_inventory_is_a_whole_declared_host(tmp_path: Path) -> None:
    inventory = detect_inventory(
        state_dir=str(tmp_path), blocks="auto", simulate="8xH100:80GB", nvml=no_nvml_calls(), amdsmi=object()
    )

    assert inventory.simulated
    assert all(g.simulated for g in inventory.gpus)
    assert inventory.cpu_count == 64
    assert inventory.memory_mib == 8 * 128 * 1024
    assert inventory.warnings == ()
    assert [b.gpus for b in inventory.blocks] == [(i,) for i in range(8)]
    assert inventory.blocks[1].cpus == tuple(range(8, 16))
    assert inventory.blocks[1].memory_mib == 128 * 1024


def test_simulated_inventory_with_declared_cpus_and_memory(tmp_path: Path) -> None:
    inventory = detect_inventory(
        state_dir=str(tmp_path),
        blocks=2,
        simulate="4xA10G:24GB",
        simulate_cpus=48,
        simulate_memory_mib=196_608,
        runtimes=("process", "docker"),
    )

    assert (inventory.cpu_count, inventory.memory_mib, inventory.runtimes) == (
        48,
        196_608,
        ("process", "docker"),
    )
    assert [(b.gpus, len(b.cpus), b.memory_mib) for b in inventory.blocks] == [
        ((0, 1), 24, 98_304),
        ((2, 3), 24, 98_304),
    ]


def test_h100_inventory(host_64_cores: HostFacts, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="agent.detect")
    no_amd = fake_amdsmi({})

    inventory = detect_inventory(
        state_dir="/unused",
        blocks=4,
        simulate=None,
        nvml=fake_nvml(load("nvml", "h100_sxm_8")),
        amdsmi=no_amd,
    )

    assert inventory.hostname == "gpu-node-7"
    assert not inventory.simulated
    assert [g.name for g in inventory.gpus] == ["H100"] * 8
    assert [(b.gpus, b.cpus[0], len(b.cpus), b.memory_mib, b.disk_mib) for b in inventory.blocks] == [
        ((0, 1), 0, 16, 500_000, 1_750_000),
        ((2, 3), 16, 16, 500_000, 1_750_000),
        ((4, 5), 32, 16, 500_000, 1_750_000),
        ((6, 7), 48, 16, 500_000, 1_750_000),
    ]
    assert inventory.warnings == ()
    assert "NVIDIA: driver 550.90.07, CUDA 12.4, 8 GPUs" in caplog.messages
    assert "AMD: 0 GPUs" in caplog.messages
    assert msgspec.json.decode(msgspec.json.encode(inventory), type=Inventory) == inventory


def test_mi300x_inventory(host_64_cores: HostFacts) -> None:
    inventory = detect_inventory(
        state_dir="/unused",
        blocks="auto",
        simulate=None,
        nvml=fake_nvml(load("nvml", "no_library")),
        amdsmi=fake_amdsmi(load("amdsmi", "mi300x_8")),
    )

    assert [(g.vendor, g.name) for g in inventory.gpus] == [("amd", "MI300X")] * 8
    assert len(inventory.blocks) == 8
    assert inventory.warnings == ()


def test_broken_driver_reaches_the_inventory_and_info_does_not(
    host_64_cores: HostFacts, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="agent.detect")

    inventory = detect_inventory(
        state_dir="/unused",
        blocks="auto",
        simulate=None,
        nvml=fake_nvml(load("nvml", "version_mismatch")),
        amdsmi=fake_amdsmi({}),
    )

    assert inventory.gpus == ()
    assert len(inventory.blocks) == 64  # a CPU-only host now: one block per core
    assert inventory.warnings == (
        "NVIDIA: NVML failed: Driver/library version mismatch — GPUs on this host are not usable until it is fixed",
    )
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warned == list(inventory.warnings)


def test_cpu_only_host_without_any_library(
    host_64_cores: HostFacts, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="agent.detect")

    inventory = detect_inventory(
        state_dir="/unused",
        blocks=8,
        simulate=None,
        nvml=fake_nvml(load("nvml", "no_library")),
        amdsmi=fake_amdsmi({}, init_error="AMDSMI_STATUS_INIT_ERROR"),
    )

    assert [b.cpus for b in inventory.blocks][1] == tuple(range(8, 16))
    assert inventory.warnings[0].startswith("AMD: amdsmi failed: AMDSMI_STATUS_INIT_ERROR")
    assert NO_NVIDIA in caplog.messages
    assert NO_NVIDIA not in inventory.warnings


def test_a_mig_gpu_leaves_the_inventory_with_a_warning(host_64_cores: HostFacts) -> None:
    inventory = detect_inventory(
        state_dir="/unused",
        blocks="auto",
        simulate=None,
        nvml=fake_nvml(load("nvml", "a100_mig")),
        amdsmi=fake_amdsmi({}),
    )

    assert [g.index for g in inventory.gpus] == [0]
    assert [b.gpus for b in inventory.blocks] == [(0,)]
    assert "MIG" in inventory.warnings[0]


def test_nvidia_and_amd_on_one_host_keeps_nvidia(host_64_cores: HostFacts) -> None:
    inventory = detect_inventory(
        state_dir="/unused",
        blocks="auto",
        simulate=None,
        nvml=fake_nvml(load("nvml", "a10g_4")),
        amdsmi=fake_amdsmi(load("amdsmi", "mi300x_8")),
    )

    assert {g.vendor for g in inventory.gpus} == {"nvidia"}
    assert inventory.warnings == (
        "AMD: 8 GPUs left out: hosts with both NVIDIA and AMD accelerators are not supported yet",
    )


def test_spare_cores_under_auto_are_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    facts = HostFacts(hostname="odd", cpus=tuple(range(12)), memory_mib=1000, disk_mib=1000)
    monkeypatch.setattr(agent.detect, "detect_host", lambda state_dir, sysfs_root: facts)

    inventory = detect_inventory(
        state_dir="/unused",
        blocks="auto",
        simulate=None,
        nvml=fake_nvml(load("nvml", "h100_sxm_8")),
        amdsmi=fake_amdsmi({}),
    )

    assert inventory.warnings == (
        "blocks: 4 of 12 CPU cores belong to no block, because 8 blocks do not divide them; "
        "set blocks to a divisor of both counts to use them all",
    )


def test_shared_cores_under_auto_are_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    facts = HostFacts(hostname="vm", cpus=(0, 1), memory_mib=1000, disk_mib=1000)
    monkeypatch.setattr(agent.detect, "detect_host", lambda state_dir, sysfs_root: facts)

    inventory = detect_inventory(
        state_dir="/unused",
        blocks="auto",
        simulate=None,
        nvml=fake_nvml(load("nvml", "h100_sxm_8")),
        amdsmi=fake_amdsmi({}),
    )

    assert [b.cpus for b in inventory.blocks] == [(0,), (1,)] * 4
    assert inventory.warnings == (
        "blocks: this host has 2 CPU cores for 8 GPUs, so its 8 blocks share cores (one each); "
        "jobs on different blocks may compete for the same core",
    )


def test_blocks_error_propagates(host_64_cores: HostFacts) -> None:
    with pytest.raises(BlocksError, match="blocks: 3 does not divide the 8 GPUs"):
        detect_inventory(
            state_dir="/unused",
            blocks=3,
            simulate=None,
            nvml=fake_nvml(load("nvml", "h100_sxm_8")),
            amdsmi=fake_amdsmi({}),
        )


def test_bad_simulate_spec_propagates(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="simulate: expected COUNTxMODEL"):
        detect_inventory(state_dir=str(tmp_path), blocks="auto", simulate="8H100")


def test_simulated_devices_are_wire_structs() -> None:
    assert all(isinstance(g, GpuDevice) for g in parse_simulated_gpus("2xL40S"))

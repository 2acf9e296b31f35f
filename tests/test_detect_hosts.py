"""Each recorded host end to end: the detectors over replayed vendor data and a fake sysfs, the real CPU-topology
parsers, and the real block cutting. For every host: the inventory, then `blocks: auto`, `2` and `4`."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

import agent.detect
from agent.detect import detect_inventory
from agent.detect.sysfs import parse_cpulist
from shared.topology import islands, relation_word
from shared.wire import Block, Inventory
from tests.fakes import fake_amdsmi, fake_hl_smi, fake_nvml, fake_sysfs, fixture_host, load

MEMORY_MIB, DISK_MIB = 2_000_000, 7_000_000


def detect(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    blocks: str | int = "auto",
    *,
    nvml: str | None = None,
    amd: str | None = None,
    gaudi: str | None = None,
) -> Inventory:
    """The inventory of the host a fixture recorded; the host's CPUs come from the first fixture given."""
    fixtures = {
        kind: load(kind, name)
        for kind, name in (("nvml", nvml), ("amdsmi", amd), ("hlsmi", gaudi))
        if name is not None
    }
    keys = {"nvml": "pci_bus_id", "amdsmi": "bdf", "hlsmi": "bus_id"}
    root = tmp_path / "sys"
    for kind, fixture in fixtures.items():
        fake_sysfs(root, fixture if kind == next(iter(fixtures)) else {**fixture, "host": {}}, keys[kind])
    first = next(iter(fixtures.values()))
    facts = fixture_host(first, str(root))
    monkeypatch.setattr(agent.detect, "detect_host", lambda state_dir, sysfs_root: facts)
    return detect_inventory(
        state_dir="/unused",
        blocks=blocks,
        simulate=None,
        nvml=fake_nvml(fixtures.get("nvml", {"init_error": "LIBRARY_NOT_FOUND"})),
        amdsmi=fake_amdsmi(fixtures.get("amdsmi", {})),
        hl_smi=fake_hl_smi(fixtures.get("hlsmi", {"devices": []})),
        sysfs_root=str(root),
    )


def cut(inventory: Inventory) -> list[tuple[tuple[int, ...], tuple[int, ...], int | None]]:
    """Each block as (GPUs, CPU ids, NUMA node)."""
    return [(b.gpus, b.cpus, b.numa_node) for b in inventory.blocks]


def cpus(text: str) -> tuple[int, ...]:
    return parse_cpulist(text)


def matrix_word(recorded: str) -> str:
    """What our matrix says for a word of `nvidia-smi topo -m`: we know links, host bridges and NUMA nodes,
    not the PCIe switches below a host bridge, so PIX and PXB read as PHB."""
    if re.fullmatch(r"NV\d+", recorded):
        return "NV"
    return {"PIX": "PHB", "PXB": "PHB"}.get(recorded, recorded)


def assert_matrix(inventory: Inventory, fixture: dict[str, Any]) -> None:
    recorded = fixture["topo_matrix"]
    gpus = inventory.gpus
    ours = [[relation_word(a, b) for b in gpus] for a in gpus]
    assert ours == [[matrix_word(word) for word in row] for row in recorded]


def assert_shares(inventory: Inventory, count: int) -> None:
    """Equal memory and disk shares, and no CPU id in two blocks."""
    assert {(b.memory_mib, b.disk_mib) for b in inventory.blocks} == {
        (MEMORY_MIB // count, DISK_MIB // count)
    }
    every = [c for b in inventory.blocks for c in b.cpus]
    assert len(every) == len(set(every))


# --- 8x H100 SXM on NVSwitch --------------------------------------------------------------------------------


def test_h100_nvswitch_inventory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    inventory = detect(tmp_path, monkeypatch, nvml="h100_sxm_8")

    assert inventory.warnings == ()
    assert inventory.cpu_count == 224
    gpu = inventory.gpus[2]
    assert (gpu.name, gpu.memory_mib, gpu.compute_capability) == ("H100", 81559, "9.0")
    assert (gpu.driver_version, gpu.cuda_version) == ("550.90.07", "12.4")
    assert (gpu.serial, gpu.pci_bus_id, gpu.pcie_root, gpu.numa_node) == (
        "1654922004417",
        "00000000:3A:00.0",
        "pci0000:37",
        0,
    )
    assert all(g.links == tuple(i for i in range(8) if i != g.index) for g in inventory.gpus)
    assert set(islands(inventory.gpus).values()) == {0}  # one island of eight, through the NVSwitches
    assert_matrix(inventory, load("nvml", "h100_sxm_8"))


def test_h100_nvswitch_blocks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    auto = detect(tmp_path / "auto", monkeypatch, nvml="h100_sxm_8")
    # 224 CPU ids in 8 blocks of 28: 14 whole cores (both hyperthreads) on the GPU's own socket.
    assert cut(auto)[0] == ((0,), cpus("0-13,112-125"), 0)
    assert cut(auto)[3] == ((3,), cpus("42-55,154-167"), 0)
    assert cut(auto)[4] == ((4,), cpus("56-69,168-181"), 1)
    assert_shares(auto, 8)

    two = detect(tmp_path / "two", monkeypatch, 2, nvml="h100_sxm_8")
    assert cut(two) == [((0, 1, 2, 3), cpus("0-55,112-167"), 0), ((4, 5, 6, 7), cpus("56-111,168-223"), 1)]
    assert_shares(two, 2)

    four = detect(tmp_path / "four", monkeypatch, 4, nvml="h100_sxm_8")
    assert [b.gpus for b in four.blocks] == [(0, 1), (2, 3), (4, 5), (6, 7)]
    assert cut(four)[1] == ((2, 3), cpus("28-55,140-167"), 0)
    assert cut(four)[2] == ((4, 5), cpus("56-83,168-195"), 1)
    assert_shares(four, 4)


# --- 4x A10G, one NUMA node (g5.12xlarge) -------------------------------------------------------------------


def test_a10g_single_node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    inventory = detect(tmp_path, monkeypatch, nvml="a10g_4")

    assert [(g.name, g.compute_capability, g.links) for g in inventory.gpus] == [("A10G", "8.6", ())] * 4
    assert {g.numa_node for g in inventory.gpus} == {None}  # sysfs says -1
    assert_matrix(inventory, load("nvml", "a10g_4"))
    assert cut(inventory)[0] == ((0,), cpus("0-5,24-29"), None)
    assert cut(inventory)[3] == ((3,), cpus("18-23,42-47"), None)

    two = detect(tmp_path / "two", monkeypatch, 2, nvml="a10g_4")
    assert cut(two) == [((0, 1), cpus("0-11,24-35"), None), ((2, 3), cpus("12-23,36-47"), None)]
    assert_shares(two, 2)
    four = detect(tmp_path / "four", monkeypatch, 4, nvml="a10g_4")
    assert cut(four) == cut(inventory)


# --- 4x A10G on two NUMA nodes ---------------------------------------------------------------------------


def test_a10g_two_numa_nodes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fixture = load("nvml", "a10g_4_two_numa")
    inventory = detect(tmp_path, monkeypatch, nvml="a10g_4_two_numa")

    assert [(g.numa_node, g.pcie_root) for g in inventory.gpus] == [
        (0, "pci0000:16"),
        (0, "pci0000:16"),
        (1, "pci0000:97"),
        (1, "pci0000:b0"),
    ]
    assert_matrix(inventory, fixture)
    assert cut(inventory) == [
        ((0,), cpus("0-7,32-39"), 0),
        ((1,), cpus("8-15,40-47"), 0),
        ((2,), cpus("16-23,48-55"), 1),
        ((3,), cpus("24-31,56-63"), 1),
    ]
    assert_shares(inventory, 4)
    two = detect(tmp_path / "two", monkeypatch, 2, nvml="a10g_4_two_numa")
    assert cut(two) == [((0, 1), cpus("0-15,32-47"), 0), ((2, 3), cpus("16-31,48-63"), 1)]
    four = detect(tmp_path / "four", monkeypatch, 4, nvml="a10g_4_two_numa")
    assert cut(four) == cut(inventory)


# --- 8x A100 on two NVLink islands of four -----------------------------------------------------------------


def test_two_nvlink_islands(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    inventory = detect(tmp_path, monkeypatch, nvml="a100_sxm4_2x4")

    assert inventory.gpus[1].links == (0, 2, 3)
    assert inventory.gpus[6].links == (4, 5, 7)
    assert islands(inventory.gpus) == {i: 0 if i < 4 else 4 for i in range(8)}
    assert_matrix(inventory, load("nvml", "a100_sxm4_2x4"))
    assert cut(inventory)[5] == ((5,), cpus("80-95,208-223"), 1)
    two = detect(tmp_path / "two", monkeypatch, 2, nvml="a100_sxm4_2x4")
    assert cut(two) == [((0, 1, 2, 3), cpus("0-63,128-191"), 0), ((4, 5, 6, 7), cpus("64-127,192-255"), 1)]
    four = detect(tmp_path / "four", monkeypatch, 4, nvml="a100_sxm4_2x4")
    assert [b.gpus for b in four.blocks] == [(0, 1), (2, 3), (4, 5), (6, 7)]
    assert [b.numa_node for b in four.blocks] == [0, 0, 1, 1]
    assert_shares(four, 4)


def test_a_mig_gpu_is_no_nvlink_peer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    inventory = detect(tmp_path, monkeypatch, nvml="a100_mig")

    assert [(g.index, g.links) for g in inventory.gpus] == [(0, ())]
    assert [b.gpus for b in inventory.blocks] == [(0,)]
    assert "MIG is enabled" in inventory.warnings[0]


# --- 8x MI300X ------------------------------------------------------------------------------------------------


def test_mi300x(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    inventory = detect(tmp_path, monkeypatch, amd="mi300x_8")

    gpu = inventory.gpus[3]
    assert (gpu.vendor, gpu.name, gpu.memory_mib, gpu.architecture) == ("amd", "MI300X", 196592, "gfx942")
    assert (gpu.driver_version, gpu.serial, gpu.render_node) == (
        "6.8.5",
        "692251001235",
        "/dev/dri/renderD152",
    )
    assert (gpu.uuid, gpu.pci_bus_id, gpu.pcie_root, gpu.numa_node) == (
        "65ff74a1-0000-1000-80c4-8a2b4d6f0e19",
        "0000:65:00.0",
        "pci0000:60",
        0,
    )
    assert all(len(g.links) == 7 for g in inventory.gpus)
    assert_matrix(inventory, load("amdsmi", "mi300x_8"))
    assert cut(inventory)[7] == ((7,), cpus("168-191,360-383"), 1)
    two = detect(tmp_path / "two", monkeypatch, 2, amd="mi300x_8")
    assert cut(two) == [((0, 1, 2, 3), cpus("0-95,192-287"), 0), ((4, 5, 6, 7), cpus("96-191,288-383"), 1)]
    four = detect(tmp_path / "four", monkeypatch, 4, amd="mi300x_8")
    assert cut(four)[1] == ((2, 3), cpus("48-95,240-287"), 0)
    assert_shares(four, 4)


# --- 8x Gaudi2 ---------------------------------------------------------------------------------------------


def test_gaudi2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    inventory = detect(tmp_path, monkeypatch, gaudi="gaudi2_8")

    assert inventory.warnings == ()
    gpu = inventory.gpus[5]
    assert (gpu.index, gpu.vendor, gpu.name, gpu.memory_mib) == (5, "intel", "GAUDI2", 98304)
    assert (gpu.uuid, gpu.serial, gpu.pci_bus_id, gpu.numa_node, gpu.pcie_root) == (
        "01P0-HL2080A0-15-TNF0A5-07-07-05",
        "AN52321005",
        "0000:b4:00.0",
        1,
        "pci0000:b0",
    )
    assert gpu.driver_version == "1.17.0-fw-51.2.0"
    assert cut(inventory)[0] == ((0,), cpus("0-9,80-89"), 0)
    two = detect(tmp_path / "two", monkeypatch, 2, gaudi="gaudi2_8")
    assert cut(two) == [((0, 1, 2, 3), cpus("0-39,80-119"), 0), ((4, 5, 6, 7), cpus("40-79,120-159"), 1)]
    four = detect(tmp_path / "four", monkeypatch, 4, gaudi="gaudi2_8")
    assert [b.gpus for b in four.blocks] == [(0, 1), (2, 3), (4, 5), (6, 7)]
    assert_shares(four, 4)


# --- failures and odd hosts ----------------------------------------------------------------------------------


def test_a_failing_nvml_is_a_warning_not_a_silent_empty_host(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fixture = {**load("nvml", "version_mismatch"), "host": load("nvml", "h100_sxm_8")["host"], "devices": []}
    root = tmp_path / "sys"
    fake_sysfs(root, fixture, "pci_bus_id")
    facts = fixture_host(fixture, str(root))
    monkeypatch.setattr(agent.detect, "detect_host", lambda state_dir, sysfs_root: facts)

    inventory = detect_inventory(
        state_dir="/unused",
        blocks="auto",
        simulate=None,
        nvml=fake_nvml(fixture),
        amdsmi=fake_amdsmi({}),
        hl_smi=fake_hl_smi({"devices": []}),
        sysfs_root=str(root),
    )

    assert inventory.gpus == ()
    assert inventory.warnings == (
        "NVIDIA: NVML failed: Driver/library version mismatch — GPUs on this host are not usable until it is fixed",
    )


def test_an_integrated_radeon_does_not_hide_the_nvidia_card(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="agent.detect")
    fixture = load("amdsmi", "radeon_780m_apu")
    root = tmp_path / "sys"
    fake_sysfs(root, fixture, "bdf")
    fake_sysfs(root, {**load("nvml", "rtx4090_workstation"), "host": {}}, "pci_bus_id")
    facts = fixture_host(fixture, str(root))
    monkeypatch.setattr(agent.detect, "detect_host", lambda state_dir, sysfs_root: facts)

    inventory = detect_inventory(
        state_dir="/unused",
        blocks="auto",
        simulate=None,
        nvml=fake_nvml(load("nvml", "rtx4090_workstation")),
        amdsmi=fake_amdsmi(fixture),
        hl_smi=fake_hl_smi({"devices": []}),
        sysfs_root=str(root),
    )

    assert [(g.vendor, g.name, g.compute_capability, g.serial) for g in inventory.gpus] == [
        ("nvidia", "RTX4090", "8.9", "")
    ]
    assert inventory.warnings == ()
    assert "AMD: integrated GPU Radeon780MGraphics at 0000:c5:00.0 ignored" in caplog.messages
    assert inventory.blocks == (
        Block(
            index=0,
            gpus=(0,),
            cpus=tuple(range(16)),
            memory_mib=MEMORY_MIB,
            disk_mib=DISK_MIB,
            numa_node=None,
        ),
    )

"""The vendor details behind detection: NVLink and XGMI peers, integrated GPUs, hl-smi's CSV, live metrics,
and the sysfs readers. Fakes replay the fixtures (tests/fakes.py)."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace

import msgspec
import pytest

from agent.blocks import CpuTopology, make_blocks
from agent.detect import detect_inventory
from agent.detect import gaudi as gaudi_module
from agent.detect.amd import detect_amd, is_integrated
from agent.detect.gaudi import detect_gaudi, gaudi_name, parse_hl_smi_csv, read_gaudi_metrics
from agent.detect.host import read_cpu_topology, simulated_topology
from agent.detect.metrics import read_amd_metrics, read_metrics, read_nvidia_metrics
from agent.detect.nvidia import cuda_version_text, nvlink_peers
from agent.detect.sysfs import parse_cpulist, read_pcie_root, read_render_node
from shared.wire import GpuDevice, GpuMetrics, Inventory
from tests.fakes import fake_amdsmi, fake_hl_smi, fake_nvml, fake_sysfs, load

GAUDI_FAILED = "Intel Gaudi: hl-smi failed: {} — accelerators on this host are not usable until it is fixed"


def gpu(index: int, bus: str) -> GpuDevice:
    return GpuDevice(index=index, vendor="nvidia", name="H100", memory_mib=81559, pci_bus_id=bus)


# --- NVLink ------------------------------------------------------------------------------------------------


def test_nvlink_peers_direct_through_a_switch_and_to_a_gpu_left_out() -> None:
    gpus = [
        gpu(0, "00000000:07:00.0"),
        gpu(1, "00000000:0B:00.0"),
        gpu(2, "00000000:48:00.0"),
        gpu(3, "0:4C:00.0"),
    ]
    remotes = {
        0: ["0000:0b:00.0", "0000:0b:00.0"],  # a bridge to GPU 1 (two links)
        1: ["0000:07:00.0", "0000:88:00.0"],  # back to GPU 0, and to GPU 4, which MIG left out
        2: ["0000:05:00.0"],  # an NVSwitch ...
        3: ["0000:05:00.0"],  # ... that GPU 3 is on too
    }

    peers = nvlink_peers(gpus, remotes, elsewhere={"0000:88:00.0"})

    assert peers == [(1,), (0,), (3,), (2,)]


def test_a_gpu_without_nvlink_has_no_links() -> None:
    nvml = fake_nvml(load("nvml", "a10g_4"))

    assert {g.links for g in detect_inventory_gpus(nvml)} == {()}


def detect_inventory_gpus(nvml: SimpleNamespace) -> tuple[GpuDevice, ...]:
    from agent.detect.nvidia import detect_nvidia

    return detect_nvidia(nvml, sysfs_root="/nonexistent").gpus


@pytest.mark.parametrize(("version", "text"), [(12040, "12.4"), (12020, "12.2"), (11080, "11.8"), (0, "")])
def test_cuda_version_text(version: int, text: str) -> None:
    assert cuda_version_text(version) == text


def test_an_old_driver_without_the_cuda_query_still_detects() -> None:
    fixture = load("nvml", "h100_sxm_8")
    del fixture["cuda_driver_version"]

    gpus = detect_inventory_gpus(fake_nvml(fixture))

    assert len(gpus) == 8 and {g.cuda_version for g in gpus} == {""}


# --- AMD -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("market_name", "target", "integrated"),
    [
        ("AMD Radeon 780M Graphics", "gfx1103", True),
        ("AMD Radeon(TM) Graphics", "gfx1036", True),
        ("AMD Radeon Graphics", "N/A", True),
        ("", "gfx90c", True),
        ("AMD Instinct MI300A", "gfx942", False),
        ("AMD Instinct MI300X", "gfx942", False),
        ("AMD Radeon PRO W7900", "gfx1100", False),
        ("AMD Radeon RX 7900 XTX", "gfx1100", False),
    ],
)
def test_integrated_amd_gpus(market_name: str, target: str, integrated: bool) -> None:
    assert is_integrated(market_name, target) is integrated


def test_xgmi_with_an_older_binding_numbering() -> None:
    # ROCm 6.0's binding numbers the link types from 0 (PCIe) and names the enum AmdSmiIoLinkType.
    amdsmi = fake_amdsmi(load("amdsmi", "mi300x_8"))
    del amdsmi.AmdSmiLinkType
    amdsmi.AmdSmiIoLinkType = SimpleNamespace(PCIEXPRESS=0, XGMI=1)
    amdsmi.amdsmi_topo_get_link_type = lambda a, b: {"hops": 1, "type": 1}

    result = detect_amd(amdsmi, sysfs_root="/nonexistent")

    assert all(len(g.links) == 7 for g in result.gpus)


def test_amd_gpus_over_pcie_only_have_no_links() -> None:
    fixture = load("amdsmi", "mi300x_8")
    del fixture["links"]

    result = detect_amd(fake_amdsmi(fixture), sysfs_root="/nonexistent")

    assert {g.links for g in result.gpus} == {()}


def test_an_older_amdsmi_without_the_newer_queries() -> None:
    amdsmi = fake_amdsmi(load("amdsmi", "mi300x_8"))
    for name in ("amdsmi_get_gpu_driver_info", "amdsmi_get_gpu_board_info", "amdsmi_topo_get_link_type"):
        delattr(amdsmi, name)

    result = detect_amd(amdsmi, sysfs_root="/nonexistent")

    assert result.warnings == ()
    assert {(g.name, g.driver_version, g.serial, g.links, g.render_node) for g in result.gpus} == {
        ("MI300X", "", "", (), "")
    }


# --- Intel Gaudi -----------------------------------------------------------------------------------------


def test_gaudi_is_queried_as_documented() -> None:
    run = fake_hl_smi(load("hlsmi", "gaudi2_8"))

    result = detect_gaudi(run, sysfs_root="/nonexistent")

    assert run.argv == [
        ["hl-smi", "-Q", "index,module_id,name,uuid,serial,bus_id,memory.total,driver_version", "-f", "csv"]
    ]
    assert result.info == ("Intel Gaudi: driver 1.17.0-fw-51.2.0, 8 accelerators",)
    assert [(g.index, g.name, g.memory_mib) for g in result.gpus][:2] == [
        (0, "GAUDI2", 98304),
        (1, "GAUDI2", 98304),
    ]


def test_no_hl_smi_is_only_info(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gaudi_module.shutil, "which", lambda name: None)

    result = detect_gaudi()

    assert (result.gpus, result.warnings, result.info) == (
        (),
        (),
        ("Intel Gaudi: hl-smi not found; no Gaudi accelerators",),
    )


def test_a_failing_hl_smi_is_loud() -> None:
    run = fake_hl_smi({"devices": []}, status=1, stderr="hl-smi: habanalabs driver is not loaded\n")

    assert detect_gaudi(run).warnings == (GAUDI_FAILED.format("hl-smi: habanalabs driver is not loaded"),)


def test_a_hanging_hl_smi_is_loud() -> None:
    def hang(argv: Sequence[str]) -> tuple[int, str, str]:
        raise subprocess.TimeoutExpired(list(argv), 30)

    assert detect_gaudi(hang).warnings == (
        GAUDI_FAILED.format(
            "Command '['hl-smi', '-Q', 'index,module_id,name,uuid,serial,bus_id,memory.total,driver_version', '-f', 'csv']' timed out after 30 seconds"
        ),
    )


@pytest.mark.parametrize(
    "output",
    [
        "index, name\n0, HL-225, extra\n",
        "index, module_id, name, uuid, serial, bus_id, memory.total [MiB], driver_version\nzero, 1, HL-225, u, s, 0000:19:00.0, 98304 MiB, 1.17\n",
    ],
)
def test_output_hl_smi_does_not_usually_print_is_loud(output: str) -> None:
    (warning,) = detect_gaudi(lambda argv: (0, output, "")).warnings

    assert warning.startswith("Intel Gaudi: hl-smi failed: output not understood: ")


def test_hl_smi_csv_drops_units_from_the_header() -> None:
    text = "index, memory.total [MiB], name\n0, 98304 MiB, HL-225\n\n1, 98304 MiB, HL-225\n"

    assert parse_hl_smi_csv(text) == [
        {"index": "0", "memory.total": "98304 MiB", "name": "HL-225"},
        {"index": "1", "memory.total": "98304 MiB", "name": "HL-225"},
    ]


@pytest.mark.parametrize(
    ("board", "product"),
    [
        ("HL-225", "GAUDI2"),
        ("HL-225B", "GAUDI2"),
        ("HL-325L", "GAUDI3"),
        ("HL-338", "GAUDI3"),
        ("HL-205", "GAUDI"),
        ("HL-999X", "HL-999X"),
    ],
)
def test_gaudi_names(board: str, product: str) -> None:
    assert gaudi_name(board) == product


# --- metrics -------------------------------------------------------------------------------------------


def test_nvidia_metrics() -> None:
    fixture = load("nvml", "h100_sxm_8")
    fixture["devices"][1].update(ecc_corrected=3, ecc_uncorrected=1)
    readings = read_nvidia_metrics(fake_nvml(fixture))

    assert readings[1] == GpuMetrics(
        index=1,
        utilization_pct=97.0,
        memory_used_mib=73728,
        temperature_c=62.0,
        power_w=655.12,
        uuid="GPU-2b8e4c6d-0f1a-3b5c-7d9e-e1f2a3b4c5d6",
        memory_total_mib=81559,
        sm_clock_mhz=1980.0,
        ecc_corrected=3,
        ecc_uncorrected=1,
    )
    assert len(readings) == 8


def test_nvidia_metrics_a_gpu_does_not_report_are_none() -> None:
    readings = read_nvidia_metrics(fake_nvml(load("nvml", "rtx4090_workstation")))

    (reading,) = readings
    assert (reading.utilization_pct, reading.temperature_c, reading.power_w, reading.sm_clock_mhz) == (
        None,
    ) * 4
    assert reading.memory_used_mib == 0


def test_metrics_of_a_broken_or_missing_library_are_empty() -> None:
    assert read_nvidia_metrics(fake_nvml(load("nvml", "version_mismatch"))) == ()
    assert read_amd_metrics(fake_amdsmi({}, init_error="AMDSMI_STATUS_DRIVER_NOT_LOADED")) == ()
    assert read_gaudi_metrics(fake_hl_smi({"devices": []}, status=1)) == ()


def test_amd_and_gaudi_metrics() -> None:
    mi300x = load("amdsmi", "mi300x_8")
    mi300x["devices"][1]["metrics"].update(gfx_clock_mhz=2100, ecc_correctable=2, ecc_uncorrectable=0)
    amd = read_amd_metrics(fake_amdsmi(mi300x))
    gaudi = read_gaudi_metrics(fake_hl_smi(load("hlsmi", "gaudi2_8")))

    assert amd[1] == GpuMetrics(
        index=1,
        utilization_pct=100.0,
        memory_used_mib=181000,
        temperature_c=71.0,
        power_w=735.0,
        uuid=mi300x["devices"][1]["uuid"],
        memory_total_mib=196592,
        sm_clock_mhz=2100.0,
        ecc_corrected=2,
        ecc_uncorrected=0,
    )
    assert (amd[0].sm_clock_mhz, amd[0].ecc_corrected) == (None, 0)  # no clock (N/A); the device counts ECC
    assert gaudi[1] == GpuMetrics(
        index=1,
        utilization_pct=93.0,
        memory_used_mib=97000,
        temperature_c=44.0,
        power_w=420.0,
        uuid=load("hlsmi", "gaudi2_8")["devices"][1]["uuid"],
        memory_total_mib=98304,
    )


def test_read_metrics_takes_every_vendor() -> None:
    readings = read_metrics(fake_nvml(load("nvml", "a10g_4")), fake_amdsmi({}), fake_hl_smi({"devices": []}))

    assert [(r.index, r.power_w) for r in readings] == [(i, 16.071) for i in range(4)]


def test_metrics_never_change_the_inventory(tmp_path: Path) -> None:
    # Live readings live apart: two detections of a busy host give the same inventory (and generation).
    fixture = load("nvml", "h100_sxm_8")

    def detect() -> Inventory:
        return detect_inventory(
            state_dir=str(tmp_path),
            blocks=1,
            simulate=None,
            nvml=fake_nvml(fixture),
            amdsmi=fake_amdsmi({}),
            hl_smi=fake_hl_smi({"devices": []}),
            sysfs_root=str(tmp_path),
        )

    first = detect()
    for device in fixture["devices"]:
        device["metrics"]["utilization_pct"] = 100
    second = detect()

    assert first == second


# --- sysfs and CPU topology ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "cpus"),
    [("0-3,8,10-11\n", (0, 1, 2, 3, 8, 10, 11)), ("5", (5,)), ("", ()), ("0-1,1-2", (0, 1, 2))],
)
def test_parse_cpulist(text: str, cpus: tuple[int, ...]) -> None:
    assert parse_cpulist(text) == cpus


def test_pcie_root_and_render_node_from_sysfs(tmp_path: Path) -> None:
    root = fake_sysfs(tmp_path, load("amdsmi", "mi300x_8"), "bdf")

    assert read_pcie_root("0000:c6:00.0", root) == "pci0000:c0"
    assert read_render_node("0000:c6:00.0", root) == "/dev/dri/renderD176"
    assert read_pcie_root("0000:c7:00.0", root) == ""  # no such device
    assert read_render_node("garbage", root) == ""


def test_a_device_folder_outside_a_root_complex_has_no_pcie_root(tmp_path: Path) -> None:
    (tmp_path / "bus" / "pci" / "devices" / "0000:18:00.0").mkdir(parents=True)

    assert read_pcie_root("00000000:18:00.0", str(tmp_path)) == ""


def test_cpu_topology_of_a_host_without_numa_in_sysfs(tmp_path: Path) -> None:
    assert read_cpu_topology((0, 1, 2), str(tmp_path)) == CpuTopology()


def test_affinity_limits_the_cpu_topology(tmp_path: Path) -> None:
    root = fake_sysfs(tmp_path, load("nvml", "a10g_4_two_numa"), "pci_bus_id")

    topology = read_cpu_topology((0, 16, 32), root)

    assert topology.numa_of == {0: 0, 16: 1, 32: 0}
    assert topology.core_of == {0: 0, 16: 16, 32: 0}


def test_simulated_blocks_are_numa_local(tmp_path: Path) -> None:
    inventory = detect_inventory(state_dir=str(tmp_path), blocks=2, simulate="4xH100:80GB")

    assert [(b.gpus, b.cpus, b.numa_node) for b in inventory.blocks] == [
        ((0, 1), tuple(range(16)), 0),
        ((2, 3), tuple(range(16, 32)), 1),
    ]
    assert simulated_topology(1) == CpuTopology(numa_of={0: 0})


def test_blocks_spill_over_when_a_node_runs_out_of_cores() -> None:
    # Three GPUs on node 0, one on node 1, and 4 + 4 cores: the third node-0 block takes node 1's spare cores.
    devices = [
        GpuDevice(index=i, vendor="nvidia", name="L4", memory_mib=23034, numa_node=0 if i < 3 else 1)
        for i in range(4)
    ]
    topology = CpuTopology(numa_of={c: 0 if c < 4 else 1 for c in range(8)})

    blocks = make_blocks(devices, range(8), 8000, 800, "auto", topology)

    assert [(b.gpus, b.cpus, b.numa_node) for b in blocks] == [
        ((0,), (0, 1), 0),
        ((1,), (2, 3), 0),
        ((2,), (6, 7), None),
        ((3,), (4, 5), 1),
    ]


def test_the_agent_prints_metrics_as_json(monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    import agent.detect
    from agent.main import main

    fixture = load("nvml", "a10g_4")
    monkeypatch.setattr(
        agent.detect,
        "read_metrics",
        lambda: read_metrics(fake_nvml(fixture), fake_amdsmi({}), fake_hl_smi({"devices": []})),
    )

    run = CliRunner().invoke(main, ["metrics"])

    assert run.exit_code == 0, run.output
    readings = msgspec.json.decode(run.output, type=list[GpuMetrics])
    assert [r.temperature_c for r in readings] == [24.0] * 4


def test_gpus_linked_only_through_a_mig_gpu_are_not_peers() -> None:
    # GPUs 0 and 2 have NVLinks to GPU 1 only; MIG leaves GPU 1 out. Its address is a GPU's, not an NVSwitch's.
    fixture = load("nvml", "a100_sxm4_2x4")
    middle = fixture["devices"][1]
    middle["mig_mode"] = [1, 1]
    fixture["devices"][0]["nvlinks"] = {middle["pci_bus_id"]: 4}
    fixture["devices"][2]["nvlinks"] = {middle["pci_bus_id"]: 4}
    del fixture["devices"][3]["nvlinks"]

    gpus = detect_inventory_gpus(fake_nvml(fixture))

    assert [(g.index, g.links) for g in gpus[:3]] == [(0, ()), (2, ()), (3, ())]


def test_simulated_nvidia_models_know_their_compute_capability() -> None:
    from agent.detect.simulate import parse_simulated_gpus

    gpus = parse_simulated_gpus("1xH100,1xA10G,1xMI300X,1xFuture9:10GB")

    assert [g.compute_capability for g in gpus] == ["9.0", "8.6", "", ""]

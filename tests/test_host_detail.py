"""`gpuctl hosts -v HOST` and `GET /api/v1/hosts/{name}`: every device with its attributes, every block with
the job holding it, and the topology matrix; a broken driver shows as a warning, never as a silent empty host."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import msgspec
import pytest
from rich.console import Console

from cli.api import ApiError
from cli.host_detail import host_detail, id_list
from cli.render import hosts_table
from shared.wire import HostAllocationView, HostDetail, HostView, Inventory
from tests.fakes import fixture_inventory
from tests.harness import cluster

NVML_FAILED = "NVIDIA: NVML failed: Driver/library version mismatch — GPUs on this host are not usable until it is fixed"


def text(renderable: object) -> str:
    console = Console(width=260, record=True, soft_wrap=False)
    console.print(renderable)
    return console.export_text()


def view(inventory: Inventory | None, busy: int = 0) -> HostView:
    return HostView(
        id="id-1",
        name="gpu-node-7",
        status="ready",
        inventory=inventory,
        busy_blocks=busy,
        total_blocks=len(inventory.blocks) if inventory else 0,
        last_seen=time.time(),
        simulated=False,
    )


def row(page: str, first: str, section: str = "") -> list[str]:
    """The words of the line that starts with `first`, in the page's `section` (devices, blocks, topology)."""
    if section:
        page = page[page.index(f"\n{section}\n") :]
        page = page[: page.find("\n\n", 1) if "\n\n" in page[1:] else len(page)]
    lines = [line for line in page.splitlines() if line.split()[:1] == [first]]
    return lines[-1].split()  # the topology matrix's header starts with GPU0 too


def test_an_nvswitch_host_in_full(tmp_path: Path) -> None:
    inventory = fixture_inventory(tmp_path, "nvml", "h100_sxm_8", hostname="gpu-node-7")
    job = HostAllocationView("a-1", "j0b1d", "train", "running", (0, 1), (0, 1))

    page = text(host_detail(HostDetail(view(inventory, busy=2), [job])))

    assert page.splitlines()[0].startswith("gpu-node-7  ready  2/8 blocks busy  seen ")
    assert "224 CPU, 1953.1GB memory, 6835.9GB disk; runtimes: process, docker" in page
    assert row(page, "2", "devices") == [
        "2", "H100", "79.6GB", "9.0", "550.90.07", "12.4", "00000000:3A:00.0", "0", "pci0000:37",
        "0-1,3-7", "-", "1654922004417", "GPU-c4d5e6f7-1a2b-4c3d-9e8f-0a1b2c3d4e5f",
    ]  # fmt: skip
    blocks = page[page.index("\nblocks") :]
    assert row(blocks, "0") == [
        "0",
        "0",
        "0-13,112-125",
        "244.1GB",
        "854.5GB",
        "0",
        "j0b1d",
        "(train)",
        "running",
    ]
    assert row(blocks, "5")[-1] == "-"
    assert row(page, "GPU3") == ["GPU3", "NV", "NV", "NV", "X", "NV", "NV", "NV", "NV", "0"]
    assert "NV = NVLink" in page


def test_mi300x_shows_render_nodes_and_xgmi(tmp_path: Path) -> None:
    inventory = fixture_inventory(tmp_path, "amdsmi", "mi300x_8")

    page = text(host_detail(HostDetail(view(inventory))))

    assert row(page, "1", "devices")[:5] == ["1", "MI300X", "192GB", "gfx942", "6.8.5"]
    assert "/dev/dri/renderD136" in row(page, "1", "devices")
    assert row(page, "GPU0")[1:4] == ["X", "XGMI", "XGMI"]


def test_a_pcie_host_says_phb_node_and_sys(tmp_path: Path) -> None:
    inventory = fixture_inventory(tmp_path, "nvml", "a10g_4_two_numa")

    page = text(host_detail(HostDetail(view(inventory))))

    assert row(page, "GPU0") == ["GPU0", "X", "PHB", "SYS", "SYS", "0"]
    assert row(page, "GPU2") == ["GPU2", "SYS", "SYS", "X", "NODE", "1"]


def test_a_failing_nvml_shows_as_a_warning_in_both_views() -> None:
    from agent.blocks import make_blocks

    inventory = Inventory(
        "gpu-node-7",
        4,
        16_000,
        1_000,
        (),
        make_blocks((), range(4), 16_000, 1_000, "auto"),
        warnings=(NVML_FAILED,),
    )

    listing = text(hosts_table([view(inventory)]))
    page = text(host_detail(HostDetail(view(inventory))))

    assert "no GPU" in listing and NVML_FAILED in listing.replace("\n", "")
    assert f"warning: {NVML_FAILED}" in page
    assert "devices" not in page and "topology" not in page


def test_a_host_without_an_inventory_yet() -> None:
    assert "no inventory yet" in text(host_detail(HostDetail(view(None))))


@pytest.mark.parametrize(
    ("ids", "listed"),
    [((0, 1, 2, 3, 8, 10, 11), "0-3,8,10-11"), ((), ""), ((5,), "5"), ((3, 1, 2, 2), "1-3"), ((0, 2), "0,2")],
)
def test_id_list(ids: tuple[int, ...], listed: str) -> None:
    assert id_list(ids) == listed


async def test_the_api_says_which_job_holds_which_blocks() -> None:
    async with cluster() as c:
        c.start_agent("host-v", "4xH100:80GB", blocks=2)
        job = await c.submit("name: holder\ncommands: ['sleep 300']\nresources: {gpu: 2}")
        await c.wait_for(job.id, "running")

        detail = await asyncio.to_thread(c.api.host_detail, "host-v")

        assert (detail.host.name, detail.host.busy_blocks, detail.host.total_blocks) == ("host-v", 1, 2)
        (held,) = detail.allocations
        assert (held.job_id, held.job_name, held.status, held.blocks, held.gpus) == (
            job.id,
            "holder",
            "running",
            (0,),
            (0, 1),
        )
        assert (await asyncio.to_thread(c.api.host_detail, detail.host.id)).host.name == "host-v"
        with pytest.raises(ApiError, match="no host 'nope'"):
            await asyncio.to_thread(c.api.host_detail, "nope")
        await asyncio.to_thread(c.api.stop, job.id)


def test_a_page_fits_an_80_column_terminal(tmp_path: Path) -> None:
    inventory = fixture_inventory(tmp_path, "nvml", "h100_sxm_8", hostname="gpu-node-7")
    job = HostAllocationView("a-1", "j0b1d", "train-a-rather-long-job-name", "running", (0, 1), (0, 1))
    console = Console(width=80, record=True, soft_wrap=False)

    console.print(host_detail(HostDetail(view(inventory, busy=2), [job]), console.width))

    page = console.export_text()
    assert max(map(len, page.splitlines())) <= 80
    assert "GPU-" in page and "00000000:3A:00.0" in page  # uuids and bus ids whole, in a part of their own


def test_names_and_warnings_print_as_text(tmp_path: Path) -> None:
    inventory = fixture_inventory(tmp_path, "nvml", "h100_sxm_8", hostname="[/]")
    inventory = msgspec.structs.replace(inventory, warnings=("\x1b[31mred[/] [bold]x",))
    job = HostAllocationView("a-1", "j0b1d", "[/]\x1b]0;title\x07", "running", (0, 1), (0, 1))

    page = text(host_detail(HostDetail(view(inventory, busy=2), [job])))

    assert "warning: red[/] [bold]x" in page and "j0b1d ([/]) running" in page
    assert "\x1b" not in page and "\x07" not in page

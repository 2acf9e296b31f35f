"""GPU health beyond NVIDIA: AMD through the fake amdsmi replaying reset events, lost devices and ECC counts;
Intel Gaudi through the fake hl-smi replaying a device gone from its listing and ECC counts. End to end, a
real coordinator and agent: the mark idles the device's block and `gpuctl hosts` says why."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path
from typing import Any

import msgspec
import pytest

from agent.agent import run_agent
from agent.detect import detect_inventory
from agent.health import health_loop, watch_for
from agent.health_amd import AmdSmiWatch, open_amdsmi_watch
from agent.health_gaudi import HlSmiWatch
from agent.health_nvidia import open_nvml_watch
from agent.health_watch import ECC_UNCORRECTED_LIMIT
from agent.state import SharedState
from shared.wire import GpuHealth
from tests.fakes import fake_amdsmi, fake_hl_smi, fixture_inventory, load
from tests.harness import FAST, cluster
from tests.test_arrays import cli
from tests.test_gpu_health import SLEEPER, wait_host, wait_reason

ECC_MARK = GpuHealth(index=2, reason=f"{ECC_UNCORRECTED_LIMIT} uncorrectable ECC errors")
PRE_RESET = "GPU_PRE_RESET (the driver is resetting the GPU)"
HL_SMI_GONE = "gone: hl-smi no longer lists it"
ECC_FIELD = "ecc.errors.uncorrected.volatile.total"


def test_amd_watch_marks_resets_ring_hangs_lost_devices_and_ecc_but_not_throttling() -> None:
    fixture = load("amdsmi", "mi300x_8")
    fixture["devices"][2]["ecc_uncorrectable"] = ECC_UNCORRECTED_LIMIT
    fixture["devices"][3]["ecc_uncorrectable"] = ECC_UNCORRECTED_LIMIT - 1
    amdsmi = fake_amdsmi(fixture)
    watch = AmdSmiWatch(amdsmi)
    # a job's bad memory access and a hot GPU say nothing about the device; more events than one read takes
    amdsmi.events.extend([(1, "VMFAULT")] + [(0, "THERMAL_THROTTLE")] * 12 + [(4, "GPU_PRE_RESET")])
    amdsmi.lost.add(5)
    assert watch.check() == (
        ECC_MARK,
        GpuHealth(index=4, reason=PRE_RESET),
        GpuHealth(index=5, reason="gone: amdsmi can no longer read it"),
    )
    amdsmi.lost.clear()  # readable again: a state, read again each time
    amdsmi.events.extend([(4, "GPU_POST_RESET"), (6, "RING_HANG")])
    assert watch.check() == (
        ECC_MARK,
        GpuHealth(index=4, reason=PRE_RESET),  # a device's first event stays its reason
        GpuHealth(index=6, reason="RING_HANG (a ring hung and the GPU is reset)"),
    )
    watch.close()
    assert amdsmi.calls == ["init", *(f"stop {i}" for i in range(8)), "shutdown"]


def test_an_amdsmi_without_event_readers_still_watches_ecc_and_lost_devices() -> None:
    fixture = load("amdsmi", "mi300x_8")
    fixture["devices"][2]["ecc_uncorrectable"] = ECC_UNCORRECTED_LIMIT
    amdsmi = fake_amdsmi(fixture)
    del amdsmi.AmdSmiEventReader, amdsmi.AmdSmiEvtNotificationType  # an amdsmi before event readers
    watch = open_amdsmi_watch(amdsmi)
    amdsmi.lost.add(7)
    assert watch.check() == (ECC_MARK, GpuHealth(index=7, reason="gone: amdsmi can no longer read it"))


def test_gaudi_watch_marks_devices_gone_from_the_listing_and_ecc_past_the_limit(tmp_path: Path) -> None:
    fixture = load("hlsmi", "gaudi2_8")
    watch = HlSmiWatch(fixture_inventory(tmp_path, "hlsmi", "gaudi2_8").gpus, fake_hl_smi(fixture))
    assert watch.check() == ()
    fixture["devices"][2][ECC_FIELD] = str(ECC_UNCORRECTED_LIMIT)
    fixture["devices"][3][ECC_FIELD] = str(ECC_UNCORRECTED_LIMIT - 1)
    fixture["devices"][4][ECC_FIELD] = "N/A"
    del fixture["devices"][5]
    marks = (ECC_MARK, GpuHealth(index=5, reason=HL_SMI_GONE))
    assert watch.check() == marks
    watch.run = fake_hl_smi(fixture, status=1, stderr="hl-smi: habanalabs driver is not loaded\n")
    assert watch.check() == marks  # a listing that fails is no verdict


async def test_marks_of_devices_the_inventory_leaves_out_are_not_sent(tmp_path: Path) -> None:
    """amdsmi enumerates an APU's integrated GPU, which detection leaves out: the coordinator would refuse
    a mark naming it."""
    amdsmi = fake_amdsmi(load("amdsmi", "radeon_780m_apu"))
    state = SharedState(inventory=fixture_inventory(tmp_path, "amdsmi", "radeon_780m_apu"))
    assert state.inventory is not None and not state.inventory.gpus
    loop = asyncio.create_task(health_loop(open_amdsmi_watch(amdsmi), state, 0.01))
    async with asyncio.timeout(30):
        for _ in range(2):  # the second is read only once the first check's marks were taken
            amdsmi.events.append((0, "GPU_PRE_RESET"))
            while True:
                if not amdsmi.events:
                    break
                await asyncio.sleep(0.01)
    loop.cancel()
    assert state.unhealthy == ()


def _amd(fixture: dict[str, Any]) -> dict[str, Any]:
    amdsmi = fake_amdsmi(fixture)
    amdsmi.events.append((3, "GPU_PRE_RESET"))
    return {"amdsmi": amdsmi}


def _gaudi(fixture: dict[str, Any]) -> dict[str, Any]:
    del fixture["devices"][3]
    return {"hl_smi": fake_hl_smi(fixture)}


@pytest.mark.parametrize(
    ("kind", "name", "replay", "reason"),
    [("amdsmi", "mi300x_8", _amd, PRE_RESET), ("hlsmi", "gaudi2_8", _gaudi, HL_SMI_GONE)],
)
async def test_an_unhealthy_device_idles_its_block_and_hosts_says_why(
    tmp_path: Path, kind: str, name: str, replay: Any, reason: str
) -> None:
    """The agent's inventory is what the real detector makes of the fixture's host, so indices and bus ids
    are the vendor's."""
    inventory = fixture_inventory(tmp_path, kind, name, hostname="h1")
    libraries = replay(load(kind, name))
    async with cluster() as c:
        config = c.agent_config("h1", None)
        c.agents["h1"] = asyncio.create_task(
            run_agent(config, inventory, redetect=lambda: inventory, health_interval_s=0.05, **libraries)
        )
        host = await wait_host(c.api, "h1", lambda h: bool(h.unhealthy))
        assert host.unhealthy == (GpuHealth(index=3, reason=reason),)
        code, out = await asyncio.to_thread(cli, c.api, tmp_path, "hosts")
        assert code == 0, out
        assert f"h1: 1 GPU unhealthy: {reason}" in " ".join(out.split())
        whole = await c.submit(SLEEPER.format(name="whole", gpus=8))
        assert await wait_reason(c, whole.id, f"h1: GPU 3 unhealthy: {reason}") == "pending"


async def test_amd_readings_go_through_the_session_the_health_watch_holds(tmp_path: Path) -> None:
    """amdsmi is started once for health and readings: a one-shot reading beside the watch would start and
    shut it down every interval under the watch's event readers."""
    inventory = fixture_inventory(tmp_path, "amdsmi", "mi300x_8", hostname="h1")
    amdsmi = fake_amdsmi(load("amdsmi", "mi300x_8"))
    async with cluster(replace(FAST, metrics_interval_s=0.1)) as c:
        config = c.agent_config("h1", None)
        c.agents["h1"] = asyncio.create_task(
            run_agent(config, inventory, redetect=lambda: inventory, health_interval_s=0.05, amdsmi=amdsmi)
        )
        async with asyncio.timeout(60):
            while True:
                if any(r.host == "h1" and r.gpus == 8 for r in await asyncio.to_thread(c.api.fleet_readings)):
                    break
                await asyncio.sleep(0.05)
        assert (amdsmi.calls.count("init"), amdsmi.calls.count("shutdown")) == (1, 0)


def test_the_watch_follows_the_vendor_of_the_real_devices(tmp_path: Path) -> None:
    gaudi = watch_for(fixture_inventory(tmp_path, "hlsmi", "gaudi2_8"))
    assert gaudi is not None and isinstance(gaudi(), HlSmiWatch)
    assert watch_for(fixture_inventory(tmp_path, "amdsmi", "mi300x_8")) is open_amdsmi_watch
    assert watch_for(fixture_inventory(tmp_path, "nvml", "h100_sxm_8")) is open_nvml_watch
    simulated = detect_inventory(state_dir=str(tmp_path), blocks="auto", simulate="2xGAUDI2:96GB")
    assert watch_for(simulated) is None  # nothing real to watch
    assert watch_for(msgspec.structs.replace(simulated, gpus=())) is None

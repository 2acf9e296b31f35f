"""One agent's inconsistent inventory stops nothing: it is refused on arrival with the field named and shown
on the host, a stored one is skipped by the scheduler, and a committed submit always answers 201."""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
from collections.abc import Callable, Sequence

import msgspec
import pytest

from agent.agent import detect, run_agent
from agent.config import AgentConfig
from agent.state import SharedState
from coordinator.safe_schedule import schedule_skipping
from coordinator.scheduler import HostCapacity, PendingJob, ScheduleResult, schedule
from coordinator.validate_inventory import inventory_problem
from shared.aio import cancel_and_wait
from shared.spec import parse_spec
from shared.wire import Inventory, generation_of, is_ip_address
from tests.agent_session import agent_session, sync_body
from tests.harness import FAST, Cluster, cluster, reachable_tmpdir

QUICK_POLL = dataclasses.replace(FAST, poll_timeout_s=0.5)
JOB = "type: task\ncommands: [sleep 1]\nresources: {gpu: H100:1}\n"


def _inventory(name: str = "h", simulate: str | None = "4xH100:80GB") -> Inventory:
    """What an agent detects: simulated GPUs, or this machine's own (simulate=None)."""
    root = reachable_tmpdir()
    try:
        return detect(AgentConfig(coordinator="https://x", state_dir=root, name=name, simulate=simulate))
    finally:
        shutil.rmtree(root)


def _with_block(inv: Inventory, position: int, **changes: object) -> Inventory:
    blocks = list(inv.blocks)
    blocks[position] = msgspec.structs.replace(blocks[position], **changes)
    return msgspec.structs.replace(inv, blocks=tuple(blocks))


SOUND = _inventory()


def test_a_detected_inventory_is_sound() -> None:
    assert inventory_problem(SOUND) is None
    assert inventory_problem(_inventory("this-machine", None)) is None


def test_a_detected_inventory_has_an_internal_ip_and_agent_yaml_overrides_it() -> None:
    root = reachable_tmpdir()
    try:
        config = AgentConfig(coordinator="https://127.0.0.1:1", state_dir=root, simulate="1xH100")
        assert is_ip_address(detect(config).internal_ip)  # the route's source, else a non-loopback address
        config = AgentConfig(
            coordinator="https://x", state_dir=root, simulate="1xH100", internal_ip="fd00::7"
        )
        assert detect(config).internal_ip == "fd00::7"
    finally:
        shutil.rmtree(root)
    assert inventory_problem(msgspec.structs.replace(SOUND, internal_ip="fd00::7")) is None
    assert inventory_problem(msgspec.structs.replace(SOUND, internal_ip="fe80::7%eth0.100")) is None


def test_blocks_that_share_cores_are_sound() -> None:
    """`blocks: auto` on a host with fewer cores than GPUs gives blocks a shared core: the agent's own
    inventory must pass, or such a host could never sync."""
    root = reachable_tmpdir()
    try:
        config = AgentConfig(coordinator="https://x", state_dir=root, simulate="4xH100:80GB", simulate_cpus=2)
        shared = detect(config)
    finally:
        shutil.rmtree(root)
    assert len({cpu for b in shared.blocks for cpu in b.cpus}) < sum(len(b.cpus) for b in shared.blocks)
    assert inventory_problem(shared) is None


@pytest.mark.parametrize(
    ("broken", "expected"),
    [
        (_with_block(SOUND, 3, index=5), "inventory.blocks[3].index: 5, expected 3"),
        (
            msgspec.structs.replace(SOUND, internal_ip="10.0.0"),
            "inventory.internal_ip: '10.0.0' is not an IP",
        ),
        (  # peers' ssh config, known_hosts and commands (${{ groups[i].nodes[j].IP_ADDRESS }}) hold it
            msgspec.structs.replace(SOUND, internal_ip="fe80::1%x\nProxyCommand=sh"),
            "inventory.internal_ip: 'fe80::1%x\\nProxyCommand=sh' is not an IP",
        ),
        (
            msgspec.structs.replace(SOUND, internal_ip="fe80::1%x;id>y"),
            "inventory.internal_ip: 'fe80::1%x;id>y' is not an IP",
        ),
        (_with_block(SOUND, 1, gpus=(7,)), "inventory.blocks[1].gpus: GPU 7 is not among the host's devices"),
        (_with_block(SOUND, 1, gpus=(0,)), "inventory.blocks[1].gpus: GPU 0 is also named by block 0"),
        (_with_block(SOUND, 2, cpus=(99, 99)), "inventory.blocks[2].cpus: CPU core 99 is also named by this"),
        (
            _with_block(SOUND, 0, cpus=SOUND.blocks[0].cpus + (900,)),
            "inventory.cpu_count: 32, but the blocks name 33",
        ),
        (
            _with_block(SOUND, 0, memory_mib=SOUND.memory_mib),
            "inventory.memory_mib: 524288, but the blocks' memory_mib adds up to 917504",
        ),
        (_with_block(SOUND, 0, disk_mib=SOUND.disk_mib), "inventory.disk_mib: "),
        (
            msgspec.structs.replace(SOUND, gpus=SOUND.gpus + SOUND.gpus[:1]),
            "inventory.gpus[4].index: 0 is named twice",
        ),
    ],
)
def test_each_inconsistency_is_named(broken: Inventory, expected: str) -> None:
    problem = inventory_problem(broken)
    assert problem is not None and problem.startswith(expected), problem


async def _hosts_warnings(c: Cluster) -> dict[str, tuple[str, ...]]:
    return {h.name: h.warnings for h in await asyncio.to_thread(c.api.hosts)}


async def test_a_bad_inventory_is_refused_with_the_field_and_shown_on_the_host() -> None:
    async with cluster(QUICK_POLL) as c, agent_session(c.coordinator, "bad", c.root) as bad:
        broken = msgspec.structs.replace(_with_block(SOUND, 3, index=5), hostname="bad")
        async with bad.post("/agent/v1/sync", data=sync_body(broken)) as resp:
            answer = await resp.json()
        assert resp.status == 400, answer
        assert answer["field"] == "inventory.blocks[3].index"
        assert answer["error"] == "inventory.blocks[3].index: 5, expected 3"
        warnings = await _hosts_warnings(c)
        assert warnings["bad"] == ("inventory refused: inventory.blocks[3].index: 5, expected 3",)
        c.start_agent("good", "2xH100:80GB")
        job = await c.submit(JOB)
        assert (await c.wait_for(job.id, "assigned", "running", "done")).host == "good"
        # the same agent, fixed: accepted, and the warning goes
        fixed = msgspec.structs.replace(SOUND, hostname="bad")
        async with bad.post("/agent/v1/sync", data=sync_body(fixed, 10**6)) as resp:
            assert resp.status == 200
        assert (await _hosts_warnings(c))["bad"] == ()


async def test_a_bad_stored_inventory_is_skipped_and_the_rest_is_placed() -> None:
    async with cluster() as c:
        coord = c.coordinator.coordinator
        c.start_agent("good", "2xH100:80GB")
        await _until(lambda: any(h.name == "good" and h.status == "ready" for h in coord.host_views()))
        broken = msgspec.structs.replace(_with_block(SOUND, 3, index=5), hostname="bad")
        coord.store.ensure_host("bad", "bad")
        coord.store.set_inventory("bad", broken, generation_of(broken))  # as if stored by an older version
        coord.last_seen["bad"] = coord.last_seen["good"]  # and ready
        jobs = [await c.submit(JOB) for _ in range(3)]  # 201 each: today's coordinator answered 500
        placed = [await c.wait_for(j.id, "assigned", "running", "done", "pending") for j in jobs]
        assert sorted(j.host or "" for j in placed)[-2:] == ["good", "good"]
        # A host stored behind the coordinator's back is seen at the housekeeping beat's re-sync, which
        # no longer raises either.
        assert coord.schedule_pass() >= 0
        assert (await _hosts_warnings(c))["bad"] == (
            "left out of scheduling, its stored inventory is unsound: inventory.blocks[3].index: 5, expected 3",
        )


async def test_a_submit_that_committed_answers_201_even_if_the_scheduling_kick_fails(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with cluster() as c:
        coord = c.coordinator.coordinator

        def broken_pass() -> int:
            raise RuntimeError("the scheduler broke")

        monkeypatch.setattr(coord, "schedule_pass", broken_pass)
        job = await c.submit(JOB)
        assert [j.id for j in coord.store.list_jobs(True)] == [job.id]  # once: no error, so no retry


def test_a_pass_that_raises_on_one_host_places_on_the_others() -> None:
    hosts = [HostCapacity("h1", "h1", SOUND), HostCapacity("h2", "h2", SOUND)]
    jobs = [PendingJob("j1", parse_spec(JOB), 1)]

    def fails_on_h1(js: Sequence[PendingJob], hs: Sequence[HostCapacity]) -> ScheduleResult:
        if any(h.host_id == "h1" for h in hs):
            raise IndexError("tuple index out of range")
        return schedule(js, hs)

    result, skipped = schedule_skipping(jobs, hosts, fails_on_h1)
    assert [p.host_id for p in result.placements] == ["h2"]
    assert skipped == {
        "h1": "left out of scheduling, a pass failed on it: IndexError: tuple index out of range"
    }


async def _until(condition: Callable[[], bool], timeout_s: float = 20.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():  # noqa: ASYNC110 - the coordinator's view, no event to wait on
            await asyncio.sleep(0.05)


async def test_an_agent_whose_inventory_is_refused_keeps_its_jobs_and_tries_again() -> None:
    """A 400 is a verdict on what a sync said, not on the host: only 401/403 stop an agent's jobs."""
    async with cluster(QUICK_POLL) as c:
        config = c.agent_config("h", "2xH100:80GB", "auto")
        state = SharedState()
        agent = asyncio.create_task(run_agent(config, detect(config), state))
        try:
            job = await c.submit("type: task\ncommands: [sleep 30]\nresources: {gpu: H100:1}\n")
            await c.wait_for(job.id, "running")
            good = state.inventory
            assert good is not None
            state.inventory = _with_block(good, 1, index=5)  # as a re-detection that went wrong would
            state.local_changed.set()
            await _until(lambda: bool(state.last_error))
            assert "inventory.blocks[1].index: 5, expected 1" in state.last_error
            await asyncio.sleep(1)
            assert not agent.done(), agent
            assert (await c.job(job.id)).status == "running"
            state.inventory = good
            state.local_changed.set()
            await _until(lambda: not state.last_error)
            assert (await c.job(job.id)).status == "running"
        finally:
            await cancel_and_wait(agent)

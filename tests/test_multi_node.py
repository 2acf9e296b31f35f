"""Multi-node jobs end to end: a real coordinator, real agents with simulated GPUs running plain processes.
Every node writes what it was told (its rank, the node count, the master's and the peers' addresses, its MPI
hostfile) to a file of its own in a folder the test reads."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from coordinator.store import AllocRow
from shared.spec import parse_spec, validate_spec
from shared.wire import FleetSet
from tests.faults import SHORT_LEASES
from tests.harness import Cluster, cluster
from tests.test_arrays import cli

pytestmark = pytest.mark.asyncio

GANG = """
name: {name}
nodes: 2
resources: {{gpu: 2}}
commands:
  - out={out}/node-$GPUCTL_NODE_RANK
  - echo "rank=$GPUCTL_NODE_RANK/$DSTACK_NODE_RANK of=$GPUCTL_NODES_NUM/$DSTACK_NODES_NUM" > $out
  - echo "master=$GPUCTL_MASTER_NODE_IP/$DSTACK_MASTER_NODE_IP" >> $out
  - echo "ips=$(echo "$GPUCTL_NODES_IPS" | paste -sd,) gpus=$GPUCTL_GPUS_PER_NODE/$GPUCTL_GPUS_NUM" >> $out
  - "sed 's/^/hostfile: /' $GPUCTL_MPI_HOSTFILE >> $out"
  - echo "node $GPUCTL_NODE_RANK done"
"""


def shared_folder(c: Cluster) -> Path:
    """A folder every node's job user may write to (jobs run as uids of their own)."""
    out = c.root / "out"
    out.mkdir()
    out.chmod(0o777)
    return out


async def until_nodes(c: Cluster, job_id: str, ready: Callable[[list[AllocRow]], bool]) -> None:
    """Wait until the job's allocations (every node of every attempt) are as `ready` wants them."""
    store = c.coordinator.coordinator.store
    async with asyncio.timeout(60):
        while True:
            if ready(store.allocations_of(job_id)):
                return
            await asyncio.sleep(0.1)


async def all_nodes_ended(c: Cluster, job_id: str) -> None:
    """Wait until every node's allocation has ended and reported its end."""
    await until_nodes(c, job_id, lambda allocs: all(a.state.terminal for a in allocs))


async def cluster_fleet(c: Cluster) -> None:
    """Make the default fleet a cluster fleet: multi-node jobs run only in one."""
    await asyncio.to_thread(c.api.set_fleet, FleetSet(name="default", placement="cluster"))


async def start_hosts(c: Cluster, *names: str) -> None:
    """Hosts of the default fleet, made a cluster fleet."""
    await cluster_fleet(c)
    for i, name in enumerate(names):
        c.start_agent(name, "2xH100:80GB", internal_ip=f"127.0.0.{i + 1}")


async def test_each_node_of_a_two_node_job_is_told_the_same_peers_and_its_own_rank(tmp_path: Path) -> None:
    async with cluster() as c:
        out = shared_folder(c)
        await start_hosts(c, "a", "b")
        job = await c.submit(GANG.format(name="pair", out=out))
        await c.wait_for(job.id, "done")
        await all_nodes_ended(c, job.id)
        seen = {rank: (out / f"node-{rank}").read_text().splitlines() for rank in (0, 1)}
        logs = [
            await asyncio.to_thread(cli, c.api, tmp_path, "logs", job.id, *n) for n in ((), ("--node", "1"))
        ]
        assert await asyncio.to_thread(cli, c.api, tmp_path, "logs", job.id, "--node", "2") == (
            1,
            f"Error: job {job.id} has no node 2 (nodes: 2)\n",
        )
    assert logs == [(0, "node 0 done\n"), (0, "node 1 done\n")]
    for rank in (0, 1):
        assert seen[rank] == [
            f"rank={rank}/{rank} of=2/2",
            "master=127.0.0.1/127.0.0.1",
            "ips=127.0.0.1,127.0.0.2 gpus=2/4",
            "hostfile: 127.0.0.1 slots=2",
            "hostfile: 127.0.0.2 slots=2",
        ]


async def test_a_two_node_job_waits_holding_nothing_while_one_host_is_busy() -> None:
    async with cluster() as c:
        out = shared_folder(c)
        await start_hosts(c, "a", "b")
        blocker = await c.submit("name: blocker\nresources: {gpu: 1}\ncommands: [sleep 600]\n")
        await c.wait_for(blocker.id, "running")
        job = await c.submit(GANG.format(name="pair", out=out))
        pending = await c.wait_for(job.id, "pending")
        assert "waiting for 2 hosts of one fleet with room at once; now 1" in pending.reason
        small = await c.submit("name: small\nresources: {gpu: 2}\ncommands: [echo small]\n")
        await c.wait_for(small.id, "done")  # the free host's blocks were not held for the pair
        assert c.coordinator.coordinator.store.allocations_of(job.id) == []
        await asyncio.to_thread(c.api.stop, blocker.id)
        await c.wait_for(job.id, "done")
        await all_nodes_ended(c, job.id)
        assert sorted(p.name for p in out.iterdir()) == ["node-0", "node-1"]


# Node 1 fails its first attempt once node 0 has marked its own: node 0 stopped before its mark would sleep
# again in the second attempt.
FIRST_ATTEMPT_FAILS = """
name: {name}
nodes: 2
resources: {{gpu: 2}}
retry: {{on_events: [error], duration: 1h}}
commands:
  - first={out}/first-attempt-$GPUCTL_NODE_RANK
  - if [ ! -e $first ] && [ $GPUCTL_NODE_RANK = 0 ]; then touch $first; sleep 600; fi
  - if [ ! -e $first ]; then touch $first; while [ ! -e {out}/first-attempt-0 ]; do sleep 0.05; done; exit 3; fi
  - echo "node $GPUCTL_NODE_RANK of attempt 2"
"""


async def run_on_two_hosts(text: str) -> tuple[str, list[AllocRow]]:
    """Run a two-node job (`text` formatted with its name and a shared `out` folder) on two fresh hosts
    until it and every node have ended: its state, and its allocations."""
    async with cluster() as c:
        out = shared_folder(c)
        await start_hosts(c, "a", "b")
        job = await c.submit(text.format(name="pair", out=out))
        done = await c.wait_for(job.id, "done", "failed", "stopped")
        await all_nodes_ended(c, job.id)
        return done.status, c.coordinator.coordinator.store.allocations_of(job.id)


async def test_a_failing_node_stops_its_peer_and_the_job_retries_as_one() -> None:
    status, allocs = await run_on_two_hosts(FIRST_ATTEMPT_FAILS)
    assert status == "done"
    assert [(a.attempt, a.node, a.state.value, a.exit_code) for a in allocs] == [
        (1, 0, "stopped", 143),  # its sleep was stopped (SIGTERM) when node 1 failed
        (1, 1, "exited", 3),
        (2, 0, "exited", 0),
        (2, 1, "exited", 0),
    ]
    assert allocs[0].interrupted == "node 1 failed"


async def test_ps_counts_the_running_nodes(tmp_path: Path) -> None:
    async with cluster() as c:
        await start_hosts(c, "a", "b")
        job = await c.submit("name: pair\nnodes: 2\nresources: {gpu: 2}\ncommands: [sleep 600]\n")
        await until_nodes(c, job.id, lambda allocs: [a.state.value for a in allocs] == ["running"] * 2)
        code, table = await asyncio.to_thread(cli, c.api, tmp_path, "ps")
        await asyncio.to_thread(c.api.stop, job.id)
        await c.wait_for(job.id, "stopped")
    assert code == 0
    (row,) = [line.split() for line in table.splitlines() if line.split()[:1] == [job.id]]
    assert row[2:4] == ["2/2", "running"]
    assert max(len(line) for line in table.splitlines()) <= 80


@pytest.mark.parametrize("runtime", ["image: busybox", "python: '3.11'"])
async def test_a_multi_node_job_may_run_in_a_container(runtime: str) -> None:
    text = f"type: task\nnodes: 2\n{runtime}\ncommands: [hostname]\n"
    spec = parse_spec(text)
    assert spec.nodes == 2
    assert validate_spec(spec) == spec  # the coordinator's check of a spec sent as JSON


async def test_a_lost_node_that_comes_back_after_its_peers_were_stopped_is_stopped_too() -> None:
    """Node 0's host falls silent past lost_after: the attempt ends and node 1 is stopped. When the host
    returns with node 0 still running, node 0 must not take the job back alone: it is stopped, and the job
    stays lost (one job, one fate)."""
    async with cluster(SHORT_LEASES) as c:
        await start_hosts(c, "a", "b")
        job = await c.submit(
            "name: pair\nnodes: 2\nresources: {gpu: 2}\n"
            "commands: ['for n in $(seq 0 99); do sleep 0.1; done; echo node $GPUCTL_NODE_RANK finished']\n"
        )
        await until_nodes(c, job.id, lambda allocs: [a.state.value for a in allocs] == ["running"] * 2)
        await c.stop_agent("a")  # node 0's host: its node runs on, unseen
        await c.wait_for(job.id, "lost", timeout_s=15)
        await until_nodes(c, job.id, lambda allocs: allocs[1].state.terminal)  # node 1 stopped
        c.start_agent("a", "2xH100:80GB", internal_ip="127.0.0.1")
        # node 0's end, whole, once its host has told what became of it
        await until_nodes(c, job.id, lambda allocs: allocs[0].final_log_size is not None)
        ended = await c.job(job.id)
        log = (await c.full_log(job.id, timeout_s=30)).decode()
    assert ended.status == "lost", (ended.status, ended.reason)
    assert "finished" not in log, log

"""dstack's newer multi-node forms end to end: `groups` (each its nodes and commands), `startup_order` and
`stop_criteria`, and dstack's own torchrun task file. A real coordinator, real agents with simulated GPUs,
plain processes; every node writes what it saw to a folder the test reads."""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec
import pytest

from agent.config import DockerConfig
from coordinator.node_order import waits_for
from coordinator.settings import Settings
from coordinator.store import AllocRow
from shared.spec import SpecError, parse_spec, validate_spec
from shared.states import AllocState
from tests.docker_engine import Engine
from tests.harness import FAST, Cluster, cluster
from tests.test_multi_node import (
    FIRST_ATTEMPT_FAILS,
    all_nodes_ended,
    cluster_fleet,
    run_on_two_hosts,
    shared_folder,
    start_hosts,
    until_nodes,
)


async def hosts_ready(c: Cluster, *names: str) -> None:
    async with asyncio.timeout(30):
        while True:
            if {h.name for h in await asyncio.to_thread(c.api.hosts) if h.status == "ready"} >= set(names):
                return
            await asyncio.sleep(0.1)


def by_node(c: Cluster, job_id: str) -> dict[int, AllocRow]:
    return {a.node: a for a in c.coordinator.coordinator.store.allocations_of(job_id)}


ORDERED = """
name: ordered
nodes: 2
startup_order: {order}
resources: {{gpu: 2}}
commands:
  - date +%s.%N > {out}/start-$GPUCTL_NODE_RANK
"""


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("order", "first", "then"),
    [("master-first", 0, 1), ("workers-first", 1, 0)],
)
async def test_a_node_that_starts_later_starts_only_once_the_first_has(
    order: str, first: int, then: int
) -> None:
    """The first node's host has no agent while the job is placed: the other node, placed with it, must wait.
    Its own clock reading at its start comes after the coordinator learned that the first node had started."""
    async with cluster() as c:
        out = shared_folder(c)
        await start_hosts(c, "a", "b")  # equal hosts: node 0 goes to a, node 1 to b
        await hosts_ready(c, "a", "b")
        host_of_first = "ab"[first]
        await c.stop_agent(host_of_first)  # still reachable for the coordinator: its lease runs
        job = await c.submit(ORDERED.format(order=order, out=out))
        await until_nodes(c, job.id, lambda allocs: len(allocs) == 2)
        waiting = await c.job(job.id)  # the coordinator holds `then` back, and says so
        c.start_agent(host_of_first, "2xH100:80GB", internal_ip=f"127.0.0.{first + 1}")
        await c.wait_for(job.id, "done")
        await all_nodes_ended(c, job.id)
        nodes = by_node(c, job.id)
        then_started = float((out / f"start-{then}").read_text())
        host = c.coordinator.coordinator.store.get_host(nodes[first].host_id)
    assert host is not None and host.name == host_of_first
    first_started = nodes[first].started_at
    assert first_started is not None
    assert then_started > first_started
    why = f"waiting for node {first} to start (startup_order: {order})"
    assert waiting.reason == f"node {then} {why}"
    assert [(a.status, a.reason) for a in waiting.attempts][then] == ("starting", why)


MASTER_DONE = """
name: master-done
nodes: 2
startup_order: workers-first
stop_criteria: master-done
resources: {{gpu: 2}}
commands:
  - if [ $GPUCTL_NODE_RANK = 0 ]; then echo master; exit {code}; fi
  - sleep 600
"""


@pytest.mark.asyncio
@pytest.mark.parametrize(("code", "status"), [(0, "done"), (3, "failed")])
async def test_under_master_done_the_master_ends_the_job_and_its_workers_are_stopped(
    code: int, status: str
) -> None:
    async with cluster() as c:
        await start_hosts(c, "a", "b")
        job = await c.submit(MASTER_DONE.format(code=code))
        ended = await c.wait_for(job.id, "done", "failed", "stopped")
        await all_nodes_ended(c, job.id)
        nodes = by_node(c, job.id)
    assert (ended.status, ended.exit_code) == (status, code)
    assert (nodes[0].state.value, nodes[0].exit_code) == ("exited", code)
    assert (nodes[1].state.value, nodes[1].exit_code) == ("stopped", 143)  # its sleep got SIGTERM
    assert nodes[1].interrupted == f"node 0 {'done' if code == 0 else 'failed'}"


# A head and workers, as dstack's node groups example (a Ray cluster) has them: the workers reach the head
# by `${{ groups[0].nodes[0].IP_ADDRESS }}`. OUT is the folder each node writes what it saw to.
GROUPS = """
name: ray
groups:
  - name: head
    nodes: 1
    commands:
      - out=OUT/head-$GPUCTL_NODE_RANK
      - echo "head rank=$GPUCTL_NODE_RANK of=$DSTACK_NODES_NUM master=$DSTACK_MASTER_NODE_IP" > $out
      - echo "ips=$(echo "$GPUCTL_NODES_IPS" | paste -sd,)" >> $out
    resources: {gpu: 2}
  - name: workers
    nodes: 2
    commands:
      - out=OUT/worker-$GPUCTL_NODE_RANK
      - echo "worker rank=$GPUCTL_NODE_RANK of=$DSTACK_NODES_NUM master=$DSTACK_MASTER_NODE_IP" > $out
      - echo "ips=$(echo "$GPUCTL_NODES_IPS" | paste -sd,)" >> $out
      - echo "head=${{ groups[0].nodes[0].IP_ADDRESS }} last=${{groups[1].nodes[1].IP_ADDRESS}}" >> $out
    resources: {gpu: 2}
"""


@pytest.mark.asyncio
async def test_each_group_runs_its_own_commands_with_ranks_in_group_order() -> None:
    async with cluster() as c:
        out = shared_folder(c)
        await start_hosts(c, "a", "b", "c")
        job = await c.submit(GROUPS.replace("OUT", str(out)))
        ended = await c.wait_for(job.id, "done", "failed")
        await all_nodes_ended(c, job.id)
        seen = {p.name: p.read_text().splitlines() for p in out.iterdir()}
    ips = "ips=127.0.0.1,127.0.0.2,127.0.0.3"
    refs = "head=127.0.0.1 last=127.0.0.3"
    assert ended.status == "done"
    assert seen == {
        "head-0": ["head rank=0 of=3 master=127.0.0.1", ips],
        "worker-1": ["worker rank=1 of=3 master=127.0.0.1", ips, refs],
        "worker-2": ["worker rank=2 of=3 master=127.0.0.1", ips, refs],
    }


@pytest.mark.asyncio
async def test_a_one_node_task_is_one_group_of_one_node() -> None:
    async with cluster() as c:
        c.start_agent("a", "1xH100:80GB", internal_ip="10.9.8.7")
        job = await c.submit("commands: ['echo ${{ groups[0].nodes[0].IP_ADDRESS }}']\n")
        assert await c.full_log(job.id) == b"10.9.8.7\n"


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("groups: []\n", "spec:1: groups: must not be empty"),
        ("groups: 3\n", "spec:1: groups: expected a list of groups, got '3'"),
        ("nodes: 2\ngroups: [{commands: [a]}]\n", "spec:1: nodes: not allowed with groups"),
        ("commands: [a]\ngroups:\n  - commands: [b]\n", "spec:1: commands: not allowed with groups"),
        ("groups:\n  - commands: [a]\n  - nodes: 0\n    commands: [b]\n", "spec:3: groups[1].nodes: must be"),
        ("groups:\n  - commands: [a]\n  - nodes: 2\n", "spec:3: groups[1].commands: missing"),
        (
            "groups:\n  - {name: w, commands: [a]}\n  - {name: w, commands: [b]}\n",
            "spec:3: groups[1].name: dup",
        ),
        ("groups:\n  - {name: Head, commands: [a]}\n", "spec:2: groups[0].name: expected lowercase"),
        ("groups:\n  - {commands: [a], ports: [8265]}\n", "spec:2: groups[0].ports: not supported yet"),
        (
            "groups:\n  - {commands: [a], node: 2}\n",
            "spec:2: groups[0].node: unknown field; did you mean 'nodes'",
        ),
        (
            "groups:\n  - {commands: [a], resources: {gpu: 1}}\n  - {commands: [b], resources: {gpu: 2}}\n",
            "spec:3: groups[1].resources: must be the same in every group",
        ),
        (
            "groups:\n  - commands: [a]\n  - nodes: 2\n    commands:\n      - b\n"
            "      - echo ${{ groups[1].nodes[2].IP_ADDRESS }}\n",
            "spec:6: groups[1].commands[1]: '${{ groups[1].nodes[2].IP_ADDRESS }}': no such node; group 1 has 2",
        ),
        (
            "nodes: 2\ncommands:\n  - echo ${{ groups[1].nodes[0].IP_ADDRESS }}\n",
            "spec:3: commands[0]: '${{ groups[1].nodes[0].IP_ADDRESS }}': no such node; 1 group(s)",
        ),
        (
            "nodes: 2\ncommands: ['echo ${{ groups[0].node[0].IP }}']\n",
            "spec:2: commands[0]: '${{ groups[0].node[0].IP }}': expected ${{ groups[I].nodes[J].IP_ADDRESS }}",
        ),
        (
            "nodes: 2\nstartup_order: master\ncommands: [a]\n",
            "spec:2: startup_order: expected one of any, master-",
        ),
        (
            "nodes: 2\nstop_criteria: master\ncommands: [a]\n",
            "spec:2: stop_criteria: expected one of all-done, ma",
        ),
    ],
)
def test_a_bad_group_or_order_is_one_line_naming_the_field(text: str, error: str) -> None:
    with pytest.raises(SpecError) as raised:
        parse_spec(text)
    assert str(raised.value).startswith(error)
    assert "\n" not in str(raised.value)


def test_the_coordinator_checks_a_spec_sent_as_json_the_same_way() -> None:
    spec = parse_spec("groups:\n  - {nodes: 1, commands: [a]}\n  - {nodes: 2, commands: [b]}\n")
    assert (spec.nodes, [g.name for g in spec.groups]) == (3, ["0", "1"])
    with pytest.raises(SpecError, match="^spec: nodes: must be the groups' nodes added up \\(3\\), got 2$"):
        validate_spec(msgspec.structs.replace(spec, nodes=2))
    with pytest.raises(SpecError, match="^spec: stop_criteria: expected one of"):
        validate_spec(msgspec.structs.replace(spec, stop_criteria="first-done"))


# dstack's examples/distributed-training/torchrun/.dstack.yml (dstackai/dstack at commit 511c318c), as it
# is there. What the test changes of it, and why, is in `runnable` below.
DSTACK_TORCHRUN = """\
type: task
name: train-distrib

nodes: 2

python: 3.12
env:
  - NCCL_DEBUG=INFO
commands:
  - git clone https://github.com/pytorch/examples.git pytorch-examples
  - cd pytorch-examples/distributed/ddp-tutorial-series
  - uv pip install -r requirements.txt
  - |
    torchrun \\
      --nproc-per-node=$DSTACK_GPUS_PER_NODE \\
      --node-rank=$DSTACK_NODE_RANK \\
      --nnodes=$DSTACK_NODES_NUM \\
      --master-addr=$DSTACK_MASTER_NODE_IP \\
      --master-port=12345 \\
      multinode.py 50 10

resources:
  gpu: 1..8
  shm_size: 16GB
"""

# Stands in for torchrun: prints the arguments it was started with, and NCCL_DEBUG, to a file per node.
FAKE_TORCHRUN = """\
#!/bin/sh
out="$(dirname "$0")/torchrun-$DSTACK_NODE_RANK"
echo "cwd=$(basename "$PWD") NCCL_DEBUG=$NCCL_DEBUG" > "$out"
for arg in "$@"; do echo "$arg" >> "$out"; done
"""


def runnable(text: str, torchrun: Path, *, container: bool = False) -> str:
    """dstack's file, changed only where this test machine differs: no internet (the clone becomes the folder
    it would make, the requirements' install goes), no PyTorch (`torchrun` is the script above). As plain
    processes, no `python:` (it picks the job's image); in containers, the folder of the script is mounted
    where the script is. Each change must find its text."""
    changes = [
        ("python: 3.12\n", f"volumes: [{torchrun.parent}:{torchrun.parent}]\n" if container else ""),
        (
            "git clone https://github.com/pytorch/examples.git pytorch-examples",
            "mkdir -p pytorch-examples/distributed/ddp-tutorial-series",
        ),
        ("  - uv pip install -r requirements.txt\n", ""),
        ("    torchrun \\", f"    {torchrun} \\"),
    ]
    if container:
        changes.append(("name: train-distrib\n", "name: train-distrib\npython: 3.12\n"))
    for old, new in changes:
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    return text


def fake_torchrun(c: Cluster) -> Path:
    out = shared_folder(c)
    torchrun = out / "torchrun"
    torchrun.write_text(FAKE_TORCHRUN)
    torchrun.chmod(0o755)
    return torchrun


async def torchrun_seen(c: Cluster, job_id: str, out: Path) -> dict[int, list[str]]:
    """What each node's torchrun was started with, once the job is done."""
    ended = await c.wait_for(job_id, "done", "failed", "stopped")
    await all_nodes_ended(c, job_id)
    assert ended.status == "done", (await c.full_log(job_id)).decode()
    return {rank: (out / f"torchrun-{rank}").read_text().splitlines() for rank in (0, 1)}


def torchrun_args(rank: int) -> list[str]:
    return [
        "cwd=ddp-tutorial-series NCCL_DEBUG=INFO",
        "--nproc-per-node=1",  # `gpu: 1..8` takes the range's least, 1 GPU per node
        f"--node-rank={rank}",
        "--nnodes=2",
        "--master-addr=127.0.0.1",
        "--master-port=12345",
        "multinode.py",
        "50",
        "10",
    ]


@pytest.mark.asyncio
async def test_dstacks_torchrun_task_file_runs_on_two_hosts() -> None:
    async with cluster() as c:
        torchrun = fake_torchrun(c)
        await start_hosts(c, "a", "b")
        job = await c.submit(runnable(DSTACK_TORCHRUN, torchrun))
        seen = await torchrun_seen(c, job.id, torchrun.parent)
    assert seen == {rank: torchrun_args(rank) for rank in (0, 1)}


@pytest.mark.asyncio
async def test_dstacks_torchrun_task_file_keeps_python_and_runs_in_containers_on_two_hosts(
    docker_engine: Engine,
) -> None:
    """With `python: 3.12` kept: the coordinator's python_image (here the test engine's local image, as no
    registry is reachable) is the image of both nodes, on the hosts' network."""
    settings = Settings(**{**FAST.__dict__, "python_image": docker_engine.image})
    async with cluster(settings) as c:
        torchrun = fake_torchrun(c)
        await cluster_fleet(c)
        for i, name in enumerate(("ta", "tb")):
            docker = DockerConfig(socket=docker_engine.socket, volume_prefixes=(str(torchrun.parent),))
            c.start_agent(name, "2xH100:80GB", internal_ip=f"127.0.0.{i + 1}", docker=docker)
        job = await c.submit(runnable(DSTACK_TORCHRUN, torchrun, container=True))
        assert (await c.job(job.id)).spec.image == docker_engine.image
        seen = await torchrun_seen(c, job.id, torchrun.parent)
    assert seen == {rank: torchrun_args(rank) for rank in (0, 1)}


@pytest.mark.asyncio
@pytest.mark.parametrize(("order", "down", "held"), [("workers-first", "b", 0), ("master-first", "a", 1)])
async def test_a_job_stopped_while_a_node_waits_for_its_peer_ends_every_node(
    order: str, down: str, held: int
) -> None:
    """The host of the node that starts first has no agent: the other node is placed but held, never sent
    to its agent. Stopping the job ends it there and then (as `gpuctl stop` does node 0, or as a node's end
    does its peers), and the other node when its agent is back; neither started."""
    async with cluster() as c:
        await start_hosts(c, "a", "b")
        await hosts_ready(c, "a", "b")
        await c.stop_agent(down)
        job = await c.submit(ORDERED.format(order=order, out="/nonexistent"))
        await until_nodes(c, job.id, lambda allocs: len(allocs) == 2)
        await asyncio.to_thread(c.api.stop, job.id)
        c.start_agent(down, "2xH100:80GB", internal_ip=f"127.0.0.{'ab'.index(down) + 1}")
        stopped = await c.wait_for(job.id, "stopped", "failed", "done")
        await all_nodes_ended(c, job.id)
        nodes = by_node(c, job.id)
    assert stopped.status == "stopped"
    assert [nodes[n].started_at for n in (0, 1)] == [None, None]
    assert (nodes[held].state.value, nodes[held].reason) == ("stopped", "stopped before it started")


@pytest.mark.asyncio
async def test_a_job_with_a_startup_order_retries_as_one_and_keeps_the_order() -> None:
    """master-first: node 1 fails in the first attempt and stops node 0; the second attempt starts in
    order again, node 1 once node 0 has started."""
    text = FIRST_ATTEMPT_FAILS.replace("nodes: 2\n", "nodes: 2\nstartup_order: master-first\n")
    status, allocs = await run_on_two_hosts(text)
    assert status == "done"
    assert [(a.attempt, a.node, a.state.value, a.exit_code) for a in allocs] == [
        (1, 0, "stopped", 143),
        (1, 1, "exited", 3),
        (2, 0, "exited", 0),
        (2, 1, "exited", 0),
    ]
    for master, worker in (allocs[0:2], allocs[2:4]):
        assert master.started_at is not None and worker.started_at is not None
        assert worker.started_at > master.started_at


def test_a_master_held_by_many_workers_names_a_few_and_counts_the_rest() -> None:
    """workers-first over 100 nodes: the reason stays one short line however many workers have not started."""
    spec = parse_spec("nodes: 100\nstartup_order: workers-first\ncommands: [x]\n")
    attempt = [
        AllocRow(f"a-{n}", "j", "h", (0,), (), (), 1, "run", AllocState.STARTING, None, "", None, node=n)
        for n in range(100)
    ]
    assert waits_for(spec, attempt[0], attempt) == (
        "waiting for node 1, 2, 3 and 96 more to start (startup_order: workers-first)"
    )
    assert waits_for(spec, attempt[0], attempt[:3]) == (
        "waiting for node 1, 2 to start (startup_order: workers-first)"
    )

"""Two coordinators (real processes, real TLS) on one real PostgreSQL with two real agents: what is submitted
through one runs and logs through the other, and `kill -9` of the leader during a burst of submissions loses
no acknowledged job, places none twice (no block held by two allocations at once), and the other replica
takes over scheduling (the takeover time is printed); a replica not given the others' keys refuses to start."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Iterator

import pytest

from tests.fault_cluster import REPO, until
from tests.replica_cluster import COORDINATOR, Replica, ReplicaCluster

LINES = 3
BURST_LINES = 20  # a second a job: the burst's 48 jobs queue for the agents' 16 GPUs


@pytest.fixture
def cluster(postgres_url: str) -> Iterator[ReplicaCluster]:
    c = ReplicaCluster(postgres_url)
    try:
        yield c
    finally:
        c.close()


def _two_replicas(c: ReplicaCluster) -> tuple[Replica, Replica]:
    """The first to start leads; the second, given its keys, follows."""
    first = c.add_replica()
    c.start(first)
    until(lambda: f":{first.port} " in c.leadership()[1], 30, "the first replica to lead")
    second = c.add_replica()
    c.start(second)
    return first, second


def _agents(
    c: ReplicaCluster, leader: Replica, follower: Replica, ha1: list[Replica], ha2: list[Replica]
) -> None:
    """Two agents, one enrolled through each replica, each syncing with the first of its list it reaches."""
    c.add_agent("ha1", leader, ha1)
    c.add_agent("ha2", follower, ha2)
    api = c.api(leader)
    until(lambda: len([h for h in api.hosts() if h.status == "ready"]) == 2, 60, "both agents")


@pytest.mark.timeout(300)
def test_jobs_submitted_through_one_replica_run_and_log_through_the_other(cluster: ReplicaCluster) -> None:
    c = cluster
    leader, follower = _two_replicas(c)
    _agents(c, leader, follower, [follower], [leader])  # each certificate accepted where it was not signed
    through_leader, through_follower = c.api(leader), c.api(follower)
    # each agent ships its logs to one replica (ha1 to the follower, ha2 to the leader); they are read
    # through the other, as the logs are in the database both share
    read_through = {"ha1": through_leader, "ha2": through_follower}
    ids = {c.submit(through_follower, f"f{i}", LINES): f"f{i}" for i in range(3)}  # placed by the leader
    ids |= {c.submit(through_leader, f"l{i}", LINES): f"l{i}" for i in range(3)}
    until(lambda: all(through_leader.job(i).status == "done" for i in ids), 120, "the jobs to end")
    for job_id, name in ids.items():
        log = c.full_log(read_through[through_leader.job(job_id).host or ""], job_id).decode()
        assert log.splitlines() == [f"{name} line {n}" for n in range(1, LINES + 1)]
        assert c.starts(name) == 1
    assert "leading the scheduler" not in c.log(follower)
    assert " placed on " not in c.log(follower)  # it took submissions and syncs, and scheduled nothing


@pytest.mark.timeout(300)
def test_kill_9_of_the_leader_during_a_burst_loses_nothing_and_places_nothing_twice(
    cluster: ReplicaCluster,
) -> None:
    c = cluster
    leader, follower = _two_replicas(c)
    both = [leader, follower]
    _agents(c, leader, follower, both, both)  # they sync with the leader, and must fail over to the survivor
    apis = [c.api(leader), c.api(follower)]
    acked: dict[str, str] = {}
    failed: list[str] = []
    lock = threading.Lock()

    def submitter(t: int) -> None:
        for i in range(12):
            for attempt in range(200):  # until acknowledged; each attempt a job of its own name
                name = f"b{t}x{i}r{attempt}"
                api = apis[(i + attempt) % 2]  # through both replicas, as long as both answer
                try:
                    job_id = c.submit(api, name, BURST_LINES)
                except Exception:
                    failed.append(name)  # it may or may not exist: not counted either way
                    continue
                with lock:
                    acked[job_id] = name
                break

    threads = [threading.Thread(target=submitter, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    until(lambda: len(acked) >= 32, 120, "submissions enough to queue for the GPUs")
    epoch, _ = c.leadership()
    c.kill(leader)
    killed_at = time.monotonic()
    until(lambda: c.leadership()[0] > epoch, 60, "the other replica to take over", every_s=0.02)
    takeover_s = time.monotonic() - killed_at
    for thread in threads:
        thread.join(timeout=180)
    assert len(acked) == 4 * 12
    survivor = apis[1]
    until(lambda: all(survivor.job(i).status in ("done", "failed", "lost") for i in acked), 180, "the jobs")
    statuses = {i: survivor.job(i).status for i in acked}
    twice = [name for name in acked.values() if c.starts(name) > 1]
    overlaps = c.overlapping_blocks()
    print(
        f"leader killed during a burst: {len(acked)} submissions acknowledged ({len(failed)} attempts failed),"
        f" takeover {takeover_s:.2f} s after kill -9 (leader_lease {c.leader_lease}),"
        f" jobs not done {sum(s != 'done' for s in statuses.values())}, run twice {len(twice)},"
        f" allocations sharing a block {len(overlaps)}"
    )
    assert set(statuses.values()) == {"done"}
    assert twice == [] and overlaps == []
    assert "leading the scheduler" in c.log(follower)


def test_a_replica_not_given_the_others_keys_refuses_to_start(cluster: ReplicaCluster) -> None:
    c = cluster
    c.start(c.add_replica())
    stranger = c.add_replica(given_keys=False)
    run = [*COORDINATOR, "run", "--config", str(stranger.config)]
    done = subprocess.run(run, capture_output=True, text=True, timeout=60, cwd=REPO)
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith("Error: pki/ca.pem and pki/ca-key.pem: not the ones the other coordinators")
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1

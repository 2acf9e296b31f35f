"""Faults lose nothing. Real processes: a coordinator killed with -9 and restarted on the same state and port,
agents killed with -9 and restarted, a host cut off by a network partition and healed, a coordinator restart
in the middle of a burst of submissions. Every case ends with counts computed from the jobs' states, the
markers each job leaves when it starts, and the logs, and asserts them:

    acknowledged jobs lost 0, jobs run twice 0, jobs stuck 0, log lines lost 0, log lines doubled 0

but for one named case: a partition longer than `lost_after` of a job that retries on `interruption`, whose
old copy runs on until the link is back and it is told to stop (jobs run twice 1).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator

import pytest

from tests.fault_cluster import Counts, FaultCluster, until
from tests.netns_pair import Namespace, require_netns


@pytest.fixture
def faults() -> Iterator[FaultCluster]:
    cluster = FaultCluster()
    try:
        yield cluster
    finally:
        cluster.close()


def _check(case: str, counts: Counts) -> None:
    print(f"{case}: {counts.line()}")
    assert counts == Counts(), counts.line()


def _submit_all(c: FaultCluster, prefix: str, count: int, lines: int) -> dict[str, str]:
    names = [f"{prefix}{i}" for i in range(count)]
    return {c.submit(name, lines): name for name in names}


def _running(c: FaultCluster, ids: dict[str, str], at_least: int) -> None:
    until(lambda: sum(c.api.job(i).status == "running" for i in ids) >= at_least, 60, "jobs running")


def _some_log(c: FaultCluster, job_id: str) -> None:
    until(lambda: c.api.logs(job_id, 0, False).data != b"", 60, "the first log bytes")


@pytest.mark.timeout(240)
def test_coordinator_killed_mid_run(faults: FaultCluster) -> None:
    c, lines = faults, 60
    c.start_coordinator()
    c.add_agent("fa1")
    c.add_agent("fa2")
    ids = _submit_all(c, "k", 6, lines)
    _running(c, ids, 4)
    _some_log(c, next(iter(ids)))
    c.kill_coordinator()
    until(lambda: "sync failed: " in c.agent_log("fa1"), 60, "the agent to notice")
    c.start_coordinator()
    c.wait_ended(list(ids), 120)
    _check("coordinator kill -9", c.tally(ids, lines))


@pytest.mark.timeout(240)
def test_agent_killed_mid_job_readopts(faults: FaultCluster) -> None:
    c, lines = faults, 60
    c.start_coordinator()
    c.add_agent("fb1")
    ids = _submit_all(c, "a", 3, lines)
    _running(c, ids, 3)
    _some_log(c, next(iter(ids)))
    c.kill_agent("fb1")
    c.start_agent("fb1")
    c.wait_ended(list(ids), 120)
    _check("agent kill -9", c.tally(ids, lines))
    assert "re-adopted allocation" in c.agent_log("fb1")


@pytest.mark.timeout(240)
def test_a_short_partition_of_one_host(request: pytest.FixtureRequest) -> None:
    """Shorter than the unreachable and lost timeouts: the host's jobs keep running through it, and their
    logs arrive once it heals."""
    require_netns()
    tag = os.getpid() % 250
    ns = Namespace.make(f"gpuctl-f{os.getpid()}", f"10.231.{tag}")
    c = FaultCluster(host=ns.host_addr)
    c.namespaces["fc1"] = ns  # torn down with the cluster
    request.addfinalizer(c.close)
    lines = 200
    c.start_coordinator()
    c.add_agent("fc1", netns=ns)
    c.add_agent("fc2")
    ids = _submit_all(c, "p", 6, lines)
    _running(c, ids, 6)
    _some_log(c, next(iter(ids)))
    ns.down()
    until(lambda: "sync failed: " in c.agent_log("fc1"), 60, "the cut-off agent to notice")
    ns.up()
    c.wait_ended(list(ids), 120)
    _check("partition of one host", c.tally(ids, lines))
    failures = [line for line in c.agent_log("fc1").splitlines() if "sync failed: " in line]
    print("the cut-off agent said:", failures[0].split("gpuctl.agent ", 1)[-1])
    assert all(line.split("sync failed: ", 1)[1].split(";")[0].strip() for line in failures), failures


@pytest.mark.timeout(300)
def test_a_partition_longer_than_lost_after_is_retried_elsewhere(request: pytest.FixtureRequest) -> None:
    """Longer than `lost_after`: the cut-off host's job is lost, its `interruption` retry places a new attempt
    (a new allocation) on the other host, and when the link is back the old copy is told to stop (desired
    `stop`). The one case where a job runs twice, for a while: the count names it; the final attempt's log
    is whole."""
    require_netns()
    ns = Namespace.make(f"gpuctl-l{os.getpid()}", f"10.232.{os.getpid() % 250}")
    c = FaultCluster(host=ns.host_addr, coordinator_flags=("--unreachable-after", "2s", "--lost-after", "4s"))
    c.namespaces["fe1"] = ns  # torn down with the cluster
    request.addfinalizer(c.close)
    lines = 300  # 15 s and more: the cut-off copy still runs when told to stop (about 6 s after the cut)
    c.start_coordinator()
    c.add_agent("fe1", "1xH100:80GB", netns=ns)
    ids = {c.submit("long", lines, retry_on="interruption"): "long"}
    (job_id,) = ids
    _running(c, ids, 1)
    c.add_agent("fe2", "1xH100:80GB")
    first = c.api.job(job_id)
    _some_log(c, job_id)
    ns.down()
    cut_at = time.monotonic()
    until(lambda: c.api.job(job_id).attempt == 2, 60, "a second attempt")
    second = c.api.job(job_id)
    assert (first.host, second.host) == ("fe1", "fe2")
    assert second.allocation_id != first.allocation_id
    assert second.attempts[0].status == "lost", second.attempts
    ns.up()
    cut_s = time.monotonic() - cut_at
    assert cut_s > 4, f"the link was cut for only {cut_s:.1f} s"
    stopped = f"stopping allocation {first.allocation_id}: stop requested"  # desired `stop`, not silence
    until(lambda: stopped in c.agent_log("fe1"), 90, "the cut-off host to stop its old copy")
    c.wait_ended(list(ids), 120)
    counts = c.tally(ids, lines)
    named = counts.line("the named long-partition case", "the final attempt")
    print(f"partition of {cut_s:.0f} s, longer than lost_after: {named}")
    assert counts == Counts(run_twice=1), counts.line()
    final = c.api.job(job_id)
    assert [(a.host, a.status) for a in final.attempts] == [("fe1", "lost"), ("fe2", "exited")]


@pytest.mark.timeout(300)
def test_coordinator_restart_during_a_burst_of_submissions(faults: FaultCluster) -> None:
    c, lines, per_thread = faults, 2, 25
    c.start_coordinator()
    c.add_agent("fd1", "8xH100:80GB")
    c.add_agent("fd2", "8xH100:80GB")
    acked: dict[str, str] = {}
    unacked: list[str] = []
    lock = threading.Lock()

    def submitter(t: int) -> None:
        for i in range(per_thread):
            for attempt in range(200):  # until acknowledged; each attempt is a job of its own name
                name = f"b{t}x{i}r{attempt}"
                try:
                    job_id = c.submit(name, lines)
                except Exception:
                    unacked.append(name)  # it may or may not exist: not counted either way
                    time.sleep(0.1)
                    continue
                with lock:
                    acked[job_id] = name
                break

    threads = [threading.Thread(target=submitter, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    until(lambda: len(acked) >= 40, 120, "the first submissions")
    c.kill_coordinator()
    c.start_coordinator()
    for thread in threads:
        thread.join(timeout=180)
    print(f"burst: {len(acked)} submissions acknowledged, {len(unacked)} attempts failed during the restart")
    assert len(acked) == 8 * per_thread
    c.wait_ended(list(acked), 180)
    _check("coordinator restart during a burst", c.tally(acked, lines))

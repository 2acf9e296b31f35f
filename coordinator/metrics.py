"""The coordinator's metrics, in Prometheus's families (served by api_metrics.py).

Two kinds of family. Events (syncs, placements, log bytes) are counted as they happen, in `Meters`. States
(jobs, hosts, blocks) are read at scrape time by `StateCollector`, from counts the coordinator already keeps:
one grouped count of the jobs table (an index covers it), one read of the hosts' stored states with their
liveness from memory, and the scheduler's in-memory fleet. No label takes a value beyond the projects, fleets,
and states that exist: no job or host ids on these families (the device families alone name the hosts, GPUs
and jobs that exist).
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from coordinator.service import Coordinator

# Queue waits run from seconds to days; a sync's own work (the long poll's wait left out) from ms to seconds.
WAIT_BUCKETS_S = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 3 * 3600, 12 * 3600, 86400, float("inf"))
SYNC_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, float("inf"))


class Meters:
    """The event families, in a registry of this coordinator's own (one process may run several: the tests).
    Observing is cheap and never fails the request it is observed in."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.queue_wait_s = Histogram(
            "gpuctl_job_queue_wait_seconds",
            "From a job's submission to each placement of it (a retried job's wait counts from its submission)",
            ["project"],
            buckets=WAIT_BUCKETS_S,
            registry=r,
        )
        self.submit_to_running_s = Histogram(
            "gpuctl_job_submit_to_running_seconds",
            "From a job's submission to its first report of running",
            ["project"],
            buckets=WAIT_BUCKETS_S,
            registry=r,
        )
        self.sync_s = Histogram(
            "gpuctl_agent_sync_seconds",
            "The coordinator's work on one agent sync, the long poll's wait left out",
            buckets=SYNC_BUCKETS_S,
            registry=r,
        )
        self.syncs = Counter("gpuctl_agent_syncs", "Agent syncs (heartbeats) answered", registry=r)
        self.log_bytes = Counter(
            "gpuctl_log_bytes", "Job log bytes shipped by agents to the coordinator", ["project"], registry=r
        )


class StateCollector(Collector):
    """The state families, read from the coordinator at each scrape. The agents' device readings, labelled
    `host`, `gpu` (its index), `uuid`, `job` and `project`, follow them in the scrape's body
    (coordinator/readings_metrics.py)."""

    def __init__(self, coordinator: Coordinator) -> None:
        self.coordinator = coordinator

    def collect(self) -> Iterator[Metric]:
        c = self.coordinator
        jobs = GaugeMetricFamily("gpuctl_jobs", "Jobs by state and project", labels=["state", "project"])
        for state, project, count in c.store.job_counts():
            jobs.add_metric([state, project], count)
        yield jobs
        hosts = GaugeMetricFamily(
            "gpuctl_hosts", "Hosts by state (unreachable: its lease ran out)", labels=["state"]
        )
        for state, count in sorted(Tally(c.host_states()).items()):
            hosts.add_metric([state], count)
        yield hosts
        total = GaugeMetricFamily(
            "gpuctl_blocks", "Blocks of the hosts with an inventory, per fleet", labels=["fleet"]
        )
        busy = GaugeMetricFamily(
            "gpuctl_blocks_busy", "Blocks held by allocations, per fleet", labels=["fleet"]
        )
        for fleet, (held, all_) in sorted(c.live.blocks_by_fleet().items()):
            busy.add_metric([fleet], held)
            total.add_metric([fleet], all_)
        yield total
        yield busy

"""The agents' device readings for users: a job's GPUs (`gpuctl metrics JOB`, the console's charts) and the
latest of every host's, summed up (`gpuctl top`). The samples come from memory (coordinator/readings.py); the store says
only which GPUs of which hosts the job holds."""

from __future__ import annotations

from aiohttp import web

from coordinator.http import COORDINATOR, json_response, project_scope
from coordinator.service import Coordinator
from coordinator.store import JobRow
from shared import constants as C
from shared.wire import GpuMetrics, HostReadings, JobGpuSeries, JobMetricsView


async def job_metrics(request: web.Request) -> web.Response:
    """The samples of the GPUs a job holds now, node by node; a job that holds none has no GPUs listed. Seen
    by whoever may read the job's logs: its project's members, and admins."""
    coord = request.app[COORDINATOR]
    job = coord.find_job(request.match_info["ref"], project_scope(request))
    return json_response(job_metrics_view(coord, job))


def job_metrics_view(coord: Coordinator, job: JobRow) -> JobMetricsView:
    """The GPUs of the job's latest attempt's allocations that have not ended, with their samples."""
    allocs = coord.store.allocations_of(job.id)
    attempt = allocs[-1].attempt if allocs else 0
    gpus = []
    for alloc in sorted(
        (a for a in allocs if a.attempt == attempt and not a.state.terminal), key=lambda a: a.node
    ):
        host = coord.store.get_host(alloc.host_id)
        uuids = {g.index: g.uuid for g in host.inventory.gpus} if host and host.inventory else {}
        for gpu in alloc.gpus:
            gpus.append(
                JobGpuSeries(
                    host=host.name if host else alloc.host_id,
                    node=alloc.node,
                    gpu=gpu,
                    uuid=uuids.get(gpu, ""),
                    samples=coord.device_readings.series(alloc.host_id, gpu),
                )
            )
    return JobMetricsView(job_id=job.id, name=job.name, status=job.status.value, gpus=gpus)


async def fleet_readings(request: web.Request) -> web.Response:
    """Every host's latest readings, summed up (`HostReadings`): counts of the fleet's devices, which every
    user may see (as `gpuctl hosts`), with no job named."""
    readings = request.app[COORDINATOR].device_readings
    return json_response(
        [
            summed_up(name, [sample.reading for sample in readings.latest(host_id).values()])
            for host_id, name in readings.hosts()
        ]
    )


def summed_up(host: str, found: list[GpuMetrics]) -> HostReadings:
    """A host's GPUs' readings as one line: mean utilization, memory used of all, the hottest, power. Pure."""
    utils = [r.utilization_pct for r in found if r.utilization_pct is not None]
    used = [r.memory_used_mib for r in found if r.memory_used_mib is not None]
    total = [r.memory_total_mib for r in found if r.memory_total_mib is not None]
    temps = [r.temperature_c for r in found if r.temperature_c is not None]
    power = [r.power_w for r in found if r.power_w is not None]
    return HostReadings(
        host=host,
        gpus=len(found),
        utilization_pct=sum(utils) / len(utils) if utils else None,
        memory_used_mib=sum(used) if used else None,
        memory_total_mib=sum(total) if total else None,
        temperature_c=max(temps) if temps else None,
        power_w=sum(power) if power else None,
    )


def add_routes(app: web.Application) -> None:
    app.router.add_get(f"{C.API_PREFIX}/jobs/{{ref}}/metrics", job_metrics)
    app.router.add_get(f"{C.API_PREFIX}/readings", fleet_readings)

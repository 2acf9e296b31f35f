"""The agents' device readings for users: a job's GPUs (`gpuctl metrics JOB`, the console's charts) and the
latest of every host's (`gpuctl top`). Read from memory (coordinator/readings.py), never from the store's
tables beyond the job's allocations."""

from __future__ import annotations

from aiohttp import web

from coordinator.http import COORDINATOR, json_response, project_scope
from coordinator.service import Coordinator
from coordinator.store import JobRow
from shared import constants as C
from shared.wire import JobGpuSeries, JobMetricsView


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
    """The latest sample of every GPU of every host, one series each: counts of the fleet's devices, which
    every user may see (as `gpuctl hosts`), with no job named."""
    readings = request.app[COORDINATOR].device_readings
    return json_response(
        [
            JobGpuSeries(host=name, gpu=index, uuid=sample.reading.uuid, samples=[sample])
            for host_id, name in readings.hosts()
            for index, sample in readings.latest(host_id).items()
        ]
    )


def add_routes(app: web.Application) -> None:
    app.router.add_get(f"{C.API_PREFIX}/jobs/{{ref}}/metrics", job_metrics)
    app.router.add_get(f"{C.API_PREFIX}/readings", fleet_readings)

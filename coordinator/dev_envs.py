"""Dev environments at the coordinator: how `gpuctl ssh` logs in to one (its user, its sshd's host key to
pin), and the stop of those idle past their `inactivity_duration`.

Idle is dstack's: no ssh session (and here no exec either) open for that long, counted from the latest of
the last session's end, the job's start and this coordinator's start. Every session passes through this
coordinator, so it sees them all; it counts them in memory, so a restarted coordinator gives each dev
environment one full duration again (as it gives each host a full lease).
"""

from __future__ import annotations

import asyncio
import logging
import time

from coordinator.secrets import Secrets
from coordinator.service import Coordinator
from coordinator.store import JobRow
from shared.job_keys import CONTAINER_LOGIN, JOB_LOGIN, job_keys
from shared.spec.dev_env import is_dev
from shared.states import JobState
from shared.units import format_duration_s
from shared.wire import SshHost

log = logging.getLogger("gpuctl.coordinator")

# Each check reads every running job from the store; its cost on a large fleet is not measured yet
IDLE_CHECK_S = 5.0


def ssh_host(job: JobRow, secrets: Secrets) -> SshHost:
    """Whom `gpuctl ssh` logs in as, and the host key it pins: the one the job's agent derives from the
    same seed (agent/job_ssh.py), so no key is ever taken on first sight."""
    user = CONTAINER_LOGIN if job.spec.image or job.spec.python else JOB_LOGIN
    return SshHost(job_id=job.id, user=user, host_key=job_keys(secrets.job_ssh_seed(job.id)).host_public)


class Sessions:
    """The ssh sessions and execs open on each job, and when each job's last one ended. The event loop
    only."""

    def __init__(self, now: float | None = None) -> None:
        self.open: dict[str, int] = {}
        self.last_end: dict[str, float] = {}
        self.since = time.time() if now is None else now  # this coordinator's start

    def opened(self, job_id: str) -> None:
        self.open[job_id] = self.open.get(job_id, 0) + 1

    def closed(self, job_id: str, now: float | None = None) -> None:
        self.open[job_id] -= 1
        if not self.open[job_id]:
            del self.open[job_id]
        self.last_end[job_id] = time.time() if now is None else now

    def forget_all_but(self, running: set[str]) -> None:
        """Forget when the sessions of jobs no longer running ended."""
        for job_id in [j for j in self.last_end if j not in running]:
            del self.last_end[job_id]

    def idle(self, job: JobRow, now: float) -> bool:
        """Whether a running dev environment has had no session for its `inactivity_duration`. Pure."""
        limit = job.spec.inactivity_duration_s
        if limit is None or not is_dev(job.spec) or job.id in self.open:
            return False
        since = max(self.since, job.started_at or 0.0, self.last_end.get(job.id, 0.0))
        return now - since >= limit


async def stop_idle(coord: Coordinator, sessions: Sessions) -> None:
    """Stop the dev environments idle past their `inactivity_duration`, every IDLE_CHECK_S, until
    cancelled."""
    while True:
        await asyncio.sleep(IDLE_CHECK_S)
        try:
            now, running = time.time(), coord.store.jobs_in(JobState.RUNNING)
            for job in running:
                if sessions.idle(job, now):
                    _stop(coord, job)
            sessions.forget_all_but({job.id for job in running})
        except Exception:
            log.exception("stopping idle dev environments failed")


def _stop(coord: Coordinator, job: JobRow) -> None:
    """Stop an idle dev environment, saying why where `gpuctl ps` shows it: its allocation is stopped from
    outside, as a drained host's are (a stop asked for is never retried)."""
    why = f"no ssh session for {format_duration_s(job.spec.inactivity_duration_s or 0)} (inactivity_duration)"
    log.info("job %s: %s; stopping it", job.id, why)
    coord.stop(job)
    alloc = coord.store.latest_allocation(job.id)
    if alloc is not None and not alloc.state.terminal:
        with coord.store.tx() as db:
            coord.store.set_interrupted(db, alloc.id, why)

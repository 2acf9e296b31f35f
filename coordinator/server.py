"""Start and stop a coordinator: store, CA, HTTP app and TLS listener, plus its housekeeping loop."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from coordinator.accounts import hash_secret
from coordinator.api_metrics import SCRAPE_TOKEN, ensure_scrape_token
from coordinator.app import make_app
from coordinator.conn_guard import ConnectionGuard, GuardedSite, raise_fd_limit
from coordinator.content import open_content
from coordinator.http import LIMITS
from coordinator.limits import ConnectionLimits
from coordinator.pki import PkiPaths, default_server_names, ensure_pki
from coordinator.replication import join_replicas
from coordinator.service import Coordinator, Settings
from coordinator.store import Store
from shared import tls
from shared.aio import cancel_and_wait
from shared.state_lock import hold_state_dir
from shared.states import JobState

log = logging.getLogger("gpuctl.coordinator")

LOCK_FILE = "coordinator.lock"  # held while a coordinator runs on the state dir: `restore` waits for none
HOUSEKEEPING_INTERVAL_S = 5.0
PRUNE_EVERY_BEATS = 60  # file archives: every 5 minutes
RESYNC_LOOP_SHARE = 0.005  # of the event loop's time, at most, for the beat's full re-sync (`Resync`)
LAST_SEEN_SAVE_S = (
    60.0  # liveness lives in memory; the store hears of it this often (`hosts` after a restart)
)


@dataclass(frozen=True)
class ServerConfig:
    state_dir: Path
    host: str = "127.0.0.1"
    port: int = 8443
    server_names: tuple[str, ...] = ()
    settings: Settings = field(default_factory=Settings)
    limits: ConnectionLimits = field(default_factory=ConnectionLimits)
    database: str = ""  # a URL (coordinator/db); "" is SQLite's `<state_dir>/coordinator.db`

    @property
    def store_at(self) -> Path | str:
        """What `Store` opens."""
        return self.database or self.state_dir / "coordinator.db"


@dataclass
class RunningCoordinator:
    coordinator: Coordinator
    runner: web.AppRunner
    pki: PkiPaths
    port: int
    background: list[asyncio.Task[None]]  # housekeeping; with other replicas, leadership and notifications
    held: contextlib.ExitStack  # the state dir's lock

    @property
    def url(self) -> str:
        return f"https://localhost:{self.port}"

    async def close(self) -> None:
        for task in self.background:
            await cancel_and_wait(task)
        # another replica takes over without waiting out the lease
        await self.coordinator.leadership.release()
        await self.runner.cleanup()
        await save_last_seen(self.coordinator)
        await self.coordinator.accounting.save()
        self.coordinator.logs.close()
        self.coordinator.files.close()
        self.coordinator.store.close()
        self.held.close()


async def start_coordinator(config: ServerConfig) -> RunningCoordinator:
    """Hold the state dir, open (or create) the state, then listen with TLS. Port 0 picks a free port.
    Raises StateDirBusy at once while another coordinator runs on the state dir."""
    config.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)  # its database holds jobs' secrets
    held = contextlib.ExitStack()
    held.enter_context(hold_state_dir(config.state_dir, LOCK_FILE, "gpuctl-coordinator"))
    try:
        return await _start(config, held)
    except BaseException:
        held.close()
        raise


async def _start(config: ServerConfig, held: contextlib.ExitStack) -> RunningCoordinator:
    pki = ensure_pki(config.state_dir, list(config.server_names) or default_server_names())
    store = Store(config.store_at)
    logs, files = open_content(config.state_dir, store.database_url)
    coordinator = Coordinator(store, logs, pki.ca(), config.settings, files=files, state_dir=config.state_dir)
    # before serving: a replica starts as a follower, with keys checked against the others'
    replication = join_replicas(coordinator, config.state_dir)
    guard = ConnectionGuard(config.limits)
    app = make_app(coordinator)
    app.middlewares.insert(0, guard.middleware)
    app[LIMITS] = config.limits
    app[SCRAPE_TOKEN] = ensure_scrape_token(config.state_dir)
    runner = web.AppRunner(
        app,
        access_log=None,
        shutdown_timeout=1.0,
        handler_cancellation=True,
        keepalive_timeout=config.limits.keepalive_timeout_s,
    )
    await runner.setup()
    context = tls.server_context(pki.server_cert, pki.server_key, pki.ca_cert)
    site = GuardedSite(runner, config.host, config.port, context, guard)
    await site.start()
    log.info("open files limit: %d", raise_fd_limit())
    port = runner.addresses[0][1]
    log.info(
        "coordinator listening on https://%s:%d (state %s, %s database)",
        config.host,
        port,
        config.state_dir,
        store.kind,
    )
    background = [asyncio.create_task(_housekeeping(coordinator), name="coordinator-housekeeping")]
    if replication is not None:
        background += replication.start(coordinator, port)
    return RunningCoordinator(coordinator, runner, pki, port, background, held)


async def _housekeeping(coordinator: Coordinator) -> None:
    """Tell the scheduler what time alone changed, so hosts that go away change placements and reasons,
    and mark lost the allocations of hosts silent too long (a beat is at most a quarter lease, so a short
    `unreachable_after` is kept to); submit the scheduled tasks whose time has come (a beat is at most
    5 s, so a run starts within seconds of its minute); less often, delete the file archives that no live job needs,
    and store the hosts' last-seen times and the device readings of running jobs (coordinator/accounting.py).
    Scheduling and housekeeping are the leader's alone (coordinator/leader.py); every replica stores what it
    heard from the agents that sync with it."""
    saved_at = readings_saved_at = time.monotonic()
    resync = Resync()
    for beat in itertools.count():
        await asyncio.sleep(min(HOUSEKEEPING_INTERVAL_S, coordinator.settings.unreachable_after_s / 4))
        try:
            if coordinator.leadership.leads:
                coordinator.expire_leases()
                coordinator.fire_schedules()
                resync.beat(coordinator)
                if beat % PRUNE_EVERY_BEATS == 0:
                    coordinator.prune_files()
            if time.monotonic() - saved_at >= LAST_SEEN_SAVE_S:
                saved_at = time.monotonic()
                await save_last_seen(coordinator)
            if time.monotonic() - readings_saved_at >= coordinator.settings.readings_save_s:
                readings_saved_at = time.monotonic()
                await coordinator.accounting.save()
        except Exception:
            log.exception("housekeeping failed")


class Resync:
    """The beat's scheduling. A full re-sync from the store (`schedule_pass`) corrects any drift and gives
    up on jobs that waited too long, but it reads every host: at 10,000 hosts it held the event loop
    330-800 ms, every 5 s beat, and each sync that arrived meanwhile waited (sync p99 1,446 ms against a
    p50 of 32 ms). So it runs at most `RESYNC_LOOP_SHARE` of the time (every beat for a small fleet, about
    every 100 s for 10,000 hosts), and the beats between tell the scheduler only what time changed: the
    hosts whose lease ran out, and the retrying jobs (whose back-off may be over), and plan backfill again."""

    def __init__(self) -> None:
        self.due_at = 0.0  # monotonic
        self.judged_at = time.time()

    def beat(self, coordinator: Coordinator) -> None:
        now = time.time()
        lapsed = coordinator.lapsed_hosts(self.judged_at, now)
        self.judged_at = now
        if lapsed is None or time.monotonic() >= self.due_at:
            started = time.monotonic()
            coordinator.schedule_pass()
            self.due_at = time.monotonic() + (time.monotonic() - started) / RESYNC_LOOP_SHARE
            return
        retrying = {job.id for job in coordinator.store.jobs_in(JobState.RETRYING)}
        if lapsed or retrying:  # a kick naming nothing would re-sync
            coordinator.kick(hosts=lapsed, jobs=retrying)
        coordinator.plan_backfill()


async def save_last_seen(coordinator: Coordinator) -> None:
    """Store when the hosts seen since the last save were seen, in a thread: the loop goes on serving."""
    await asyncio.to_thread(coordinator.store.set_last_seen, coordinator.unsaved_last_seen())


def ensure_admin_token(store: Store, token_file: Path) -> str:
    """The admin token, created once and kept in a 0600 file (only its hash goes into the store)."""
    if token_file.exists():
        token = token_file.read_text().strip()
    else:
        token = "gpuctl_" + secrets.token_urlsafe(32)
        tls.write_private(token_file, token.encode() + b"\n")
    store.add_token(hash_secret(token), "admin", "admin")
    return token

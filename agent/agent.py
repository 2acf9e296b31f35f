"""The agent: detect, then its loops under one TaskGroup: sync, executor, log shipping, re-detection, and the
channel that streams into jobs (exec, port-forward) travel on."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import msgspec

from agent.channel import channel_loop
from agent.client import CoordinatorClient
from agent.config import DEFAULT_DOCKER_SOCKET, JOINED_URLS, AgentConfig, ConfigError, DockerConfig
from agent.detect import detect_inventory
from agent.detect.gaudi import Runner
from agent.diskguard import disk_problem, is_disk_error
from agent.executor import Executor
from agent.fence import fence_reason
from agent.files import FilePrep
from agent.health import HEALTH_INTERVAL_S, OpenWatch, health_loop, open_watch, watch_for
from agent.health_watch import Reads, Watch
from agent.identity import JoinError, check_not_expired, finish_pending_pair, join, renew_loop
from agent.lock import hold_state_dir
from agent.peer_address import internal_ip
from agent.readings import device_reader, readings_loop
from agent.redetect import REDETECT_INTERVAL_S, Detect, redetect_loop
from agent.runtime.base import Runtime
from agent.runtime.cgroups import Cgroups
from agent.runtime.docker import DockerRuntime
from agent.runtime.engine import PROBE_TIMEOUT_S, EngineUnavailable, connect
from agent.runtime.jobuser import UidRange, UidRangeError, check_uid_range
from agent.runtime.process import ProcessRuntime, check_reachable
from agent.shipper import ship_loop
from agent.state import SharedState
from agent.sync import Revoked, sync_loop
from agent.transport import LinkDown, Transport, env_proxy, make_transport
from shared import tls
from shared.aio import cancel_and_wait
from shared.join import parse_join_string
from shared.wire import Inventory

log = logging.getLogger("gpuctl.agent")

EXEC_TICK_S = 0.2
JOIN_LINK_WAIT_S = 60.0  # how long `join` waits for a tunnel to come up before it gives up with the reason


def detect(config: AgentConfig) -> Inventory:
    """The host's inventory under the configured name, with the runtimes it has ("docker" only when the
    engine answers) and its container policy. Raises BlocksError / ValueError on bad settings."""
    config.state_dir.mkdir(parents=True, exist_ok=True)
    docker_problem = probe_docker(config.docker)
    inventory = detect_inventory(
        state_dir=str(config.state_dir),
        blocks=config.blocks,
        simulate=config.simulate,
        simulate_cpus=config.simulate_cpus,
        simulate_memory_mib=config.simulate_memory_mib,
        runtimes=("process",) if docker_problem is not None else ("process", "docker"),
    )
    return msgspec.structs.replace(
        inventory,
        hostname=config.name,
        volume_prefixes=config.docker.volume_prefixes,
        privileged_allowed=config.docker.allow_privileged,
        internal_ip=internal_ip(config.internal_ip, config.urls[0]),
        warnings=inventory.warnings + _docker_warning(config.docker, docker_problem) + _isolation_warning(),
    )


def _isolation_warning() -> tuple[str, ...]:
    """A host warning when jobs cannot get uids of their own: they then share the agent's user."""
    if os.geteuid() == 0:
        return ()
    import pwd

    user = pwd.getpwuid(os.geteuid()).pw_name
    return (f"job isolation is off: the agent runs as {user!r}, not root, so every job runs as {user!r}",)


def job_uids(config: AgentConfig) -> UidRange | None:
    """The range of per-allocation uids, when jobs get them (root, no `run_as`). Raises ConfigError when
    a user or group of the host lies in the range."""
    if os.geteuid() != 0 or config.effective_run_as() is not None:
        return None
    try:
        check_uid_range(config.job_uid_range)
    except UidRangeError as exc:
        raise ConfigError(f"job_uid_range: {exc}") from None
    return config.job_uid_range


def probe_docker(docker: DockerConfig) -> str | None:
    """None when the Docker engine answers at the configured socket, else why not (one line)."""
    try:
        connect(docker.socket, timeout_s=PROBE_TIMEOUT_S).close()
    except EngineUnavailable as exc:
        return str(exc)
    return None


def _docker_warning(docker: DockerConfig, problem: str | None) -> tuple[str, ...]:
    """A host warning (shown by `gpuctl hosts`) when an engine seems meant to be there but does not answer."""
    if problem is None:
        return ()
    meant = docker.socket != DEFAULT_DOCKER_SOCKET or os.path.exists(docker.socket.removeprefix("unix://"))
    log.info("no Docker runtime: %s", problem)
    return (f"{problem}; jobs with an image are not placed here",) if meant else ()


def make_runtimes(
    config: AgentConfig,
    inventory: Inventory,
    run_as: str | None,
    uids: UidRange | None = None,
    on_exit: Callable[[], None] | None = None,
) -> dict[str, Runtime]:
    """The plain-process runtime, and Docker when the inventory says the engine answered. `on_exit`: a
    plain-process job has ended (the executor should look now)."""
    cgroups = Cgroups() if os.geteuid() == 0 else None
    process = ProcessRuntime(run_as, uids, cgroups, inventory, config.docker.pids_limit, on_exit=on_exit)
    runtimes: dict[str, Runtime] = {"process": process}
    if "docker" in inventory.runtimes:
        try:
            client = connect(config.docker.socket)
        except EngineUnavailable as exc:
            log.warning("%s; jobs with an image will fail here until the agent restarts", exc)
        else:
            runtimes["docker"] = DockerRuntime(
                client, inventory, config.docker, config.name, config.state_dir
            )
    return runtimes


async def run_agent(
    config: AgentConfig,
    inventory: Inventory,
    state: SharedState | None = None,
    *,
    redetect: Detect | None = None,
    redetect_interval_s: float = REDETECT_INTERVAL_S,
    nvml: Any = None,
    amdsmi: Any = None,
    hl_smi: Runner | None = None,
    health_interval_s: float = HEALTH_INTERVAL_S,
) -> None:
    """Run until cancelled (or until the coordinator refuses this agent: sync.Revoked).

    The health of the host's real GPUs is watched through their vendor's library (agent/health.py); `nvml`,
    `amdsmi` or `hl_smi`, when given, is watched instead (a test's fake).

    Devices are detected again on SIGHUP and every `redetect_interval_s` with `redetect` (by default the
    same detection that produced `inventory`); a changed inventory is sent to the coordinator. Holds the
    state dir's lock throughout: raises StateDirBusy at once while another agent uses it.
    """
    with hold_state_dir(config.state_dir):
        transport = agent_transport(config)
        link = asyncio.create_task(transport.run(), name="link")  # before enrollment: join may need it
        try:
            await _run_agent(
                config,
                inventory,
                state or SharedState(),
                redetect,
                redetect_interval_s,
                transport,
                watch_for(inventory, nvml, amdsmi, hl_smi),
                health_interval_s,
            )
        finally:
            await cancel_and_wait(link)


def agent_transport(config: AgentConfig) -> Transport:
    """The way to the coordinator that the config asks for: its bastions, its proxy, else HTTPS_PROXY."""
    proxy = config.proxy if config.proxy is not None else env_proxy(config.urls[0], os.environ)
    return make_transport(
        config.urls, config.bastion, proxy or None, config.runtime_dir, config.docker.mirror_link()
    )


async def enroll(config: AgentConfig) -> str | None:
    """Join with `config.join` and stop there (`gpuctl-agent join --no-run`): returns the new host id, or None
    when this agent already holds a certificate (nothing is sent). Holds the state dir's lock meanwhile."""
    with hold_state_dir(config.state_dir):
        finish_pending_pair(config.pki_dir)
        _, cert, _ = config.tls_files()
        if cert.exists():
            return None
        transport = agent_transport(config)
        link = asyncio.create_task(transport.run(), name="link")
        try:
            return await _join(config, transport)
        finally:
            await cancel_and_wait(link)


async def _join(config: AgentConfig, transport: Transport) -> str:
    try:
        await transport.ready(JOIN_LINK_WAIT_S)
    except LinkDown as exc:
        raise JoinError(f"cannot reach the coordinator through {transport.description}: {exc}") from None
    assert config.join is not None
    join_string = parse_join_string(config.join)
    host_id = await join(config.urls, join_string, config.pki_dir, config.name, transport)
    if join_string.urls:  # for later runs whose agent.yaml names no coordinator
        (config.pki_dir / JOINED_URLS).write_text("\n".join(join_string.urls) + "\n")
    return host_id


async def _run_agent(
    config: AgentConfig,
    inventory: Inventory,
    state: SharedState,
    redetect: Detect | None,
    redetect_interval_s: float,
    transport: Transport,
    opener: OpenWatch | None,
    health_interval_s: float,
) -> None:
    state.inventory = inventory
    run_as, uids = config.effective_run_as(), job_uids(config)
    check_reachable(config.state_dir / "allocs", run_as or (f"uids {uids}" if uids else None))
    # A job's end wakes the executor at once, which reports it with the next sync (agent/sync.py)
    runtimes = make_runtimes(config, inventory, run_as, uids, on_exit=state.desired_changed.set)
    executor = Executor(config.state_dir, runtimes, inventory, config.stop_grace_s)
    try:
        executor.adopt()
        ca, cert, key = config.tls_files()
        finish_pending_pair(config.pki_dir)
        if not cert.exists() and config.join:
            await _join(config, transport)
        check_not_expired(cert)
        context = tls.client_context(ca, cert, key)
        client = CoordinatorClient(config.urls, context, transport)
    except BaseException:
        executor.close()
        raise
    log.info(
        "agent %s: %d GPUs, %d blocks%s; coordinator %s (%s)",
        config.name,
        len(inventory.gpus),
        len(inventory.blocks),
        " (SIMULATED)" if inventory.simulated else "",
        ", ".join(config.urls),
        transport.description,
    )

    def adopt(fresh: Inventory) -> None:
        executor.inventory = fresh  # new jobs see the devices as they are now, in every runtime
        for runtime in executor.runtimes.values():
            runtime.set_inventory(fresh)

    watch: Watch | None = None
    try:
        with _on_signal(signal.SIGHUP, state.redetect_requested.set):
            async with asyncio.TaskGroup() as tg:
                tg.create_task(sync_loop(client, executor, inventory, state, cert), name="sync")
                tg.create_task(
                    exec_loop(executor, state, client, config.stop_after_coordinator_lost_s), name="executor"
                )
                tg.create_task(ship_loop(client, executor, state), name="logs")
                tg.create_task(channel_loop(client, executor, state.synced_once), name="channel")
                tg.create_task(
                    redetect_loop(redetect or (lambda: detect(config)), state, redetect_interval_s, adopt),
                    name="redetect",
                )
                watch = await _device_loops(tg, inventory, state, executor, opener, health_interval_s)
                if cert.parent == config.pki_dir:  # a certificate this agent enrolled for, so it renews it
                    tg.create_task(
                        renew_loop(lambda: client.base_url, context, config.pki_dir, transport), name="renew"
                    )
    except* Revoked:
        await stop_everything(executor, "this host was removed from the coordinator")
        raise
    finally:
        if watch is not None:
            watch.close()
        executor.close()
        await client.close()


async def _device_loops(
    tg: asyncio.TaskGroup,
    inventory: Inventory,
    state: SharedState,
    executor: Executor,
    opener: OpenWatch | None,
    health_interval_s: float,
) -> Watch | None:
    """Start the devices' loops: health (the vendor's watch) and readings (every vendor, simulated devices
    too); NVIDIA's readings go through the health watch's NVML session. The caller closes the watch (returned;
    None when there is none)."""
    watch = await open_watch(opener) if opener is not None else None
    if watch is not None:
        tg.create_task(health_loop(watch, state, health_interval_s), name="health")
    reader = device_reader(inventory, watch if isinstance(watch, Reads) else None)
    if reader is not None:
        tg.create_task(readings_loop(reader, state, executor.busy_gpus), name="readings")
    return watch


async def stop_everything(executor: Executor, reason: str) -> None:
    """Stop every running job, each with its grace period: a host the coordinator refuses must not keep
    GPUs that the coordinator already counts as free."""
    log.warning("stopping every job: %s", reason)
    while True:
        if executor.stop_everything(reason, time.time()):
            return
        await asyncio.sleep(EXEC_TICK_S)


def _step(executor: Executor, prep: FilePrep, state: SharedState, fence: str) -> bool:
    """One executor step that a full or read-only state dir cannot end: the error becomes a host problem
    (no new work here) until the disk recovers; a half-done step is picked up again on the next tick."""
    error = ""
    try:
        changed = executor.step(prep.prepare(state.desired, set(executor.allocs)), time.time(), fence)
    except OSError as exc:
        if not is_disk_error(exc):
            raise
        changed, error = True, f"state dir: {exc.strerror}"
        log.error("state dir %s: %s; running jobs go on, no new work is taken", executor.root.parent, exc)
    problem = disk_problem(executor.root.parent) or error
    if problem != state.disk_problem:
        log.warning("state dir: %s", problem or "writable again; taking new work")
        state.disk_problem, changed = problem, True
    return changed


@contextlib.contextmanager
def _on_signal(signum: int, callback: Callable[[], None]) -> Iterator[None]:
    """`callback` on the running loop whenever `signum` arrives, while in the block; nothing where no
    handler can be installed (not the main thread, a platform without signals)."""
    loop = asyncio.get_running_loop()
    try:
        loop.add_signal_handler(signum, callback)
    except (NotImplementedError, RuntimeError, ValueError):
        yield
        return
    try:
        yield
    finally:
        loop.remove_signal_handler(signum)


async def exec_loop(
    executor: Executor, state: SharedState, client: CoordinatorClient, stop_after_s: float | None = None
) -> None:
    """Reconcile on every desired-state change and on a short tick (to notice jobs that ended). An
    allocation with `files:` reaches the reconciler once its files are fetched and unpacked (or failed).
    With `stop_after_s`, no successful sync for that long stops every job (agent/fence.py)."""
    # git (for repos) alone sees the agent's own environment, for its proxy variables; jobs never do
    prep = executor.file_prep = FilePrep(client, executor.root.parent, state.desired_changed.set, os.environ)
    fenced = ""
    try:
        while True:
            state.desired_changed.clear()
            fence = fence_reason(time.monotonic(), state.last_sync_at, stop_after_s)
            if fence != fenced:
                _say_fenced(fence, executor)
                fenced = fence
            # before the first answer nothing is known to be unwanted: only a fence acts
            if (state.synced_once.is_set() or fence) and _step(executor, prep, state, fence):
                state.local_changed.set()
                state.logs_written.set()
            try:
                async with asyncio.timeout(EXEC_TICK_S):
                    await state.desired_changed.wait()
            except TimeoutError:
                pass
    finally:
        prep.close()


def _say_fenced(fence: str, executor: Executor) -> None:
    if fence:
        running = sum(not a.observed.state.terminal for a in executor.allocs.values())
        log.warning(
            "%s: stopping every job (%d running), each with its grace period; still syncing", fence, running
        )
    else:
        log.warning("the coordinator answers again: no longer fenced; reporting what was stopped")

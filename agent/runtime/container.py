"""The container an allocation runs in, as the arguments of `containers.create`: a pure function of the
allocation, its environment, the host's GPUs and the agent's Docker settings.

The container is labelled with its allocation, job and host (a restarted agent finds it by label), runs
the job's commands under its shell (`/bin/sh -c` by default), or else the image's own entrypoint and cmd,
behind a small init (docker-init, which passes SIGTERM to the whole
process group), on the host's network (multi-node NCCL needs it, as in dstack), and gets exactly the share
of the host its blocks hold: their CPUs, their memory (no swap), `shm_size`, a pids limit, their GPUs.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from docker.types import DeviceRequest, LogConfig

from agent.env import MPI_HOSTFILE
from agent.job_ssh import container_prefix, wants_ssh
from agent.runtime.commands import job_script, shell_path
from agent.runtime.devices import DeviceGrant
from shared.spec.dev_env import job_commands
from shared.volumes import parse_volume
from shared.wire import AllocationSpec

LABEL_ALLOC = "gpuctl.allocation"
LABEL_JOB = "gpuctl.job"
LABEL_HOST = "gpuctl.host"
WORK_DIR = "/workflow"  # dstack's working directory in the container; the allocation's work folder
HOST_ONLY_VARS = ("PATH", "HOME", "LANG", "LC_ALL", "TZ")  # the image's own values fit it better


def container_name(alloc_id: str) -> str:
    """Deterministic, so creating twice (an agent that died mid-way) conflicts instead of running twice."""
    return f"gpuctl-{alloc_id}"


def container_env(env: Mapping[str, str], alloc: AllocationSpec, grant: DeviceGrant) -> dict[str, str]:
    """The job's environment as the container sees it: the host's PATH and HOME stay out (unless the spec
    sets them), the GPU variables are the container's own numbering, the MPI hostfile is in /workflow."""
    out = {k: v for k, v in env.items() if k not in HOST_ONLY_VARS or k in alloc.spec.env}
    for name in ("GPUCTL_MPI_HOSTFILE", "DSTACK_MPI_HOSTFILE"):
        if name in out:  # the work dir is /workflow in here
            out[name] = f"{WORK_DIR}/{MPI_HOSTFILE}"
    out.update(grant.env)
    out["TINI_KILL_PROCESS_GROUP"] = "1"  # docker-init sends SIGTERM to the commands, not only to sh
    return out


def create_kwargs(
    alloc: AllocationSpec,
    env: Mapping[str, str],
    grant: DeviceGrant,
    image: str,
    host: str,
    work_dir: Path,
    pids_limit: int,
) -> dict[str, Any]:
    """Keyword arguments for `client.containers.create`. Pure; the caller has checked the host's policy
    (volumes, privileged) already."""
    spec = alloc.spec
    memory = f"{alloc.memory_mib}m"
    kwargs: dict[str, Any] = {
        "image": image,
        "name": container_name(alloc.id),
        **_program(job_commands(spec), spec.shell, spec.working_dir, wants_ssh(alloc)),
        "environment": container_env(env, alloc, grant),
        "labels": {LABEL_ALLOC: alloc.id, LABEL_JOB: alloc.job_id, LABEL_HOST: host},
        "volumes": _binds(spec.volumes, work_dir),
        "network_mode": "host",
        "init": True,
        "mem_limit": memory,
        "memswap_limit": memory,
        "pids_limit": pids_limit,
        "privileged": spec.privileged,
        # Docker's default capabilities and nothing more; setuid binaries in the image cannot add any.
        # A privileged container (only where the host allows it) is root on the host anyway.
        "security_opt": [] if spec.privileged else ["no-new-privileges"],
        # Less NET_RAW: on the host's network a raw or packet socket sees every packet of the host, other
        # jobs' NCCL and MPI traffic included, and could forge theirs.
        "cap_drop": [] if spec.privileged else ["NET_RAW"],
        "log_config": LogConfig(type=LogConfig.types.JSON),  # the copier reads it back; journald could not
        "detach": True,
    }
    if alloc.cpus:
        kwargs["cpuset_cpus"] = ",".join(str(c) for c in alloc.cpus)
    if spec.resources.shm_size_mib:
        kwargs["shm_size"] = f"{spec.resources.shm_size_mib}m"
    if grant.nvidia_uuids:
        kwargs["device_requests"] = [
            DeviceRequest(driver="nvidia", device_ids=list(grant.nvidia_uuids), capabilities=[["gpu"]])
        ]
    if grant.device_nodes:
        kwargs["devices"] = [f"{node}:{node}:rwm" for node in grant.device_nodes]
    if grant.group_ids:
        kwargs["group_add"] = [str(gid) for gid in grant.group_ids]
    return kwargs


def _program(
    commands: tuple[str, ...], shell: str | None, working_dir: str | None, ssh: bool = False
) -> dict[str, Any]:
    """What the container runs, and where. Commands run under the job's shell in `/workflow` (or
    `working_dir`), as one stream: the engine reads stdout and stderr through two pipes and would lose their
    relative order; a node of a multi-node job (`ssh`) starts the image's sshd first (agent.job_ssh).
    Without commands the image's own entrypoint and cmd run, in the image's own working directory unless
    `working_dir` is set (its two streams then stay apart; both reach the log), and start no sshd."""
    if not commands:
        return {"working_dir": working_dir} if working_dir else {}
    first = container_prefix(WORK_DIR) if ssh else ""
    return {
        "entrypoint": [shell_path(shell), "-c", job_script(commands, merge_stderr=True, first=first)],
        "command": [],
        "working_dir": working_dir or WORK_DIR,
    }


def _binds(volumes: tuple[str, ...], work_dir: Path) -> list[str]:
    binds = [f"{work_dir}:{WORK_DIR}:rw"]
    for text in volumes:
        volume = parse_volume(text)
        binds.append(f"{volume.host_path}:{volume.container_path}:rw")
    return binds

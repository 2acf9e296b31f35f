"""The store's rows as the coordinator reads them (coordinator/store.py), and their decoding from a database
row (by column name: the same on SQLite and PostgreSQL)."""

from __future__ import annotations

from dataclasses import dataclass, field

import msgspec

from coordinator.db import Row
from shared.spec import TaskSpec
from shared.states import AllocState, JobState
from shared.wire import GpuHealth, Inventory


@dataclass(frozen=True)
class JobRow:
    seq: int
    id: str
    name: str
    spec: TaskSpec
    priority: int
    status: JobState
    reason: str
    exit_code: int | None
    stop_requested: bool
    submitted_at: float
    started_at: float | None
    finished_at: float | None
    project: str = "default"
    retry_since: float | None = None  # when the current run of failures began (see coordinator/retry.py)
    array_id: str | None = None  # a task of that array (coordinator/array_store.py)
    array_index: int | None = None


@dataclass(frozen=True)
class HostRow:
    id: str
    name: str
    inventory: Inventory | None
    generation: str
    desired_index: int
    last_seen: float | None
    status: str
    fleet: str = "default"
    labels: dict[str, str] = field(default_factory=dict)
    unhealthy: tuple[GpuHealth, ...] = ()  # held since the last undrain (coordinator/health.py)


@dataclass(frozen=True)
class AllocRow:
    id: str
    job_id: str
    host_id: str
    blocks: tuple[int, ...]
    gpus: tuple[int, ...]
    cpus: tuple[int, ...]
    memory_mib: int
    desired: str
    state: AllocState
    exit_code: int | None
    reason: str
    final_log_size: int | None
    attempt: int = 1
    created_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    interrupted: str = ""  # why the coordinator ended it from outside (a drain --stop): an interruption
    node: int = 0  # its rank among the nodes of a multi-node job's attempt
    ssh_port: int = 0  # a multi-node job's sshd port on every node of its attempt (0: none)


def _ints(text: str) -> tuple[int, ...]:
    return tuple(msgspec.json.decode(text, type=list[int]))


def _job(row: Row) -> JobRow:
    return JobRow(
        seq=row["seq"],
        id=row["id"],
        name=row["name"],
        spec=msgspec.json.decode(row["spec"], type=TaskSpec),
        priority=row["priority"],
        status=JobState(row["status"]),
        reason=row["reason"],
        exit_code=row["exit_code"],
        stop_requested=bool(row["stop_requested"]),
        submitted_at=row["submitted_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        project=row["project"],
        retry_since=row["retry_since"],
        array_id=row["array_id"],
        array_index=row["array_index"],
    )


def _host(row: Row, inventory: Inventory | None) -> HostRow:
    return HostRow(
        id=row["id"],
        name=row["name"],
        inventory=inventory,
        generation=row["generation"],
        desired_index=row["desired_index"],
        last_seen=row["last_seen"],
        status=row["status"],
        fleet=row["fleet"],
        labels=msgspec.json.decode(row["labels"], type=dict[str, str]),
        unhealthy=msgspec.json.decode(row["unhealthy"], type=tuple[GpuHealth, ...]),
    )


def _alloc(row: Row) -> AllocRow:
    return AllocRow(
        id=row["id"],
        job_id=row["job_id"],
        host_id=row["host_id"],
        blocks=_ints(row["blocks"]),
        gpus=_ints(row["gpus"]),
        cpus=_ints(row["cpus"]),
        memory_mib=row["memory_mib"],
        desired=row["desired"],
        state=AllocState(row["state"]),
        exit_code=row["exit_code"],
        reason=row["reason"],
        final_log_size=row["final_log_size"],
        attempt=row["attempt"],
        created_at=row["created_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        interrupted=row["interrupted"],
        node=row["node"],
        ssh_port=row["ssh_port"],
    )

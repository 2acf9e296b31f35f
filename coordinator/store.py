"""The coordinator's durable state in SQLite (WAL). Every write commits before the caller acknowledges it.

Calls are short and synchronous; the coordinator runs them on its event loop, which keeps them serialised.
The schema carries a version and migrations run in order at open.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from shared.spec import TaskSpec
from shared.states import AllocState, JobState, check_job_transition
from shared.wire import Inventory

MIGRATIONS: list[str] = [
    # 1: the walking skeleton
    """
    CREATE TABLE hosts (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        inventory TEXT,
        generation TEXT NOT NULL DEFAULT '',
        desired_index INTEGER NOT NULL DEFAULT 1,
        last_seen REAL,
        status TEXT NOT NULL DEFAULT 'ready',
        created_at REAL NOT NULL
    );
    CREATE TABLE jobs (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        name TEXT NOT NULL,
        spec TEXT NOT NULL,
        priority INTEGER NOT NULL,
        status TEXT NOT NULL,
        reason TEXT NOT NULL DEFAULT '',
        exit_code INTEGER,
        stop_requested INTEGER NOT NULL DEFAULT 0,
        submitted_at REAL NOT NULL,
        started_at REAL,
        finished_at REAL
    );
    CREATE INDEX jobs_status ON jobs(status);
    CREATE TABLE allocations (
        id TEXT PRIMARY KEY,
        job_id TEXT NOT NULL REFERENCES jobs(id),
        host_id TEXT NOT NULL REFERENCES hosts(id),
        blocks TEXT NOT NULL,
        gpus TEXT NOT NULL,
        cpus TEXT NOT NULL,
        memory_mib INTEGER NOT NULL,
        desired TEXT NOT NULL DEFAULT 'run',
        state TEXT NOT NULL DEFAULT 'starting',
        exit_code INTEGER,
        reason TEXT NOT NULL DEFAULT '',
        final_log_size INTEGER,
        created_at REAL NOT NULL
    );
    CREATE INDEX allocations_host ON allocations(host_id, state);
    CREATE INDEX allocations_job ON allocations(job_id);
    CREATE TABLE tokens (
        hash TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        role TEXT NOT NULL,
        created_at REAL NOT NULL
    );
    """,
    # 2: identity: projects, users (their tokens), join tokens, issued certificates, fleets
    """
    CREATE TABLE projects (name TEXT PRIMARY KEY, created_at REAL NOT NULL);
    INSERT INTO projects(name, created_at) VALUES ('default', 0);
    ALTER TABLE tokens ADD COLUMN project TEXT;
    ALTER TABLE jobs ADD COLUMN project TEXT NOT NULL DEFAULT 'default';
    CREATE INDEX jobs_project ON jobs(project, seq);
    CREATE TABLE join_tokens (
        id TEXT PRIMARY KEY,
        secret_hash TEXT NOT NULL,
        fleet TEXT NOT NULL,
        labels TEXT NOT NULL,
        expires_at REAL NOT NULL,
        uses_left INTEGER,
        deleted INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL
    );
    CREATE TABLE certs (
        serial TEXT PRIMARY KEY,
        host_id TEXT NOT NULL,
        not_after REAL NOT NULL,
        revoked INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX certs_host ON certs(host_id);
    ALTER TABLE hosts ADD COLUMN fleet TEXT NOT NULL DEFAULT 'default';
    ALTER TABLE hosts ADD COLUMN labels TEXT NOT NULL DEFAULT '{}';
    CREATE TABLE fleets (name TEXT PRIMARY KEY, projects TEXT NOT NULL DEFAULT '[]', created_at REAL NOT NULL)
    """,
    # 3: which project stored which files archive (its upload quota); project secrets, encrypted
    """
    CREATE TABLE uploads (
        project TEXT NOT NULL,
        archive_id TEXT NOT NULL,
        size INTEGER NOT NULL,
        uploaded_at REAL NOT NULL,
        PRIMARY KEY (project, archive_id)
    );
    CREATE INDEX uploads_archive ON uploads(archive_id);
    CREATE TABLE secrets (
        project TEXT NOT NULL,
        name TEXT NOT NULL,
        ciphertext BLOB NOT NULL,
        updated_at REAL NOT NULL,
        PRIMARY KEY (project, name)
    )
    """,
]

TERMINAL_ALLOC_STATES = tuple(s.value for s in AllocState if s.terminal)


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


def _ints(text: str) -> tuple[int, ...]:
    return tuple(msgspec.json.decode(text, type=list[int]))


class Store:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("PRAGMA foreign_keys=ON")
        self._migrate()

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """One transaction; committed (durably) when the block ends without an exception."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def _migrate(self) -> None:
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            with self.tx() as db:
                for statement in script.split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute(f"PRAGMA user_version={number}")

    @property
    def schema_version(self) -> int:
        return int(self.db.execute("PRAGMA user_version").fetchone()[0])

    # --- tokens ------------------------------------------------------------------------------------

    def add_token(self, token_hash: str, name: str, role: str) -> None:
        with self.tx() as db:
            db.execute(
                "INSERT OR IGNORE INTO tokens(hash, name, role, created_at) VALUES (?,?,?,?)",
                (token_hash, name, role, time.time()),
            )

    # --- jobs --------------------------------------------------------------------------------------

    def insert_job(
        self, job_id: str, name: str, spec: TaskSpec, reason: str, project: str = "default"
    ) -> JobRow:
        with self.tx() as db:
            db.execute(
                "INSERT INTO jobs(id, name, spec, priority, status, reason, submitted_at, project)"
                " VALUES (?,?,?,?,?,?,?,?)",
                (
                    job_id,
                    name,
                    msgspec.json.encode(spec).decode(),
                    spec.priority,
                    "submitted",
                    reason,
                    time.time(),
                    project,
                ),
            )
        job = self.get_job(job_id)
        assert job is not None
        return job

    def get_job(self, job_id: str) -> JobRow | None:
        row = self.db.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()
        return _job(row) if row else None

    def find_jobs(self, ref: str, project: str | None = None) -> list[JobRow]:
        """Jobs whose id starts with `ref` or whose name is `ref`, newest first; only `project`'s if given."""
        pattern = ref.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        rows = self.db.execute(
            "SELECT * FROM jobs WHERE (id LIKE ? ESCAPE '\\' OR name=?) AND (? IS NULL OR project=?)"
            " ORDER BY seq DESC LIMIT 20",
            (pattern, ref, project, project),
        ).fetchall()
        return [_job(r) for r in rows]

    def list_jobs(
        self, include_finished: bool, limit: int = 1000, project: str | None = None
    ) -> list[JobRow]:
        where = "WHERE (? IS NULL OR project=?)"
        if not include_finished:
            where += f" AND status NOT IN ({', '.join(repr(s.value) for s in JobState if s.terminal)})"
        rows = self.db.execute(
            f"SELECT * FROM jobs {where} ORDER BY seq DESC LIMIT ?", (project, project, limit)
        ).fetchall()
        return [_job(r) for r in rows]

    def jobs_in(self, *states: JobState) -> list[JobRow]:
        marks = ",".join("?" * len(states))
        rows = self.db.execute(
            f"SELECT * FROM jobs WHERE status IN ({marks}) ORDER BY seq", states
        ).fetchall()
        return [_job(r) for r in rows]

    def set_job_state(
        self,
        db: sqlite3.Connection,
        job: JobRow,
        state: JobState,
        reason: str = "",
        exit_code: int | None = None,
    ) -> None:
        """Move a job through the one transition table; timestamps follow the state."""
        if state == job.status and reason == job.reason:
            return
        check_job_transition(job.status, state)
        now = time.time()
        started = now if state is JobState.RUNNING and job.started_at is None else job.started_at
        finished = now if state.terminal else None
        db.execute(
            "UPDATE jobs SET status=?, reason=?, exit_code=?, started_at=?, finished_at=? WHERE id=?",
            (state.value, reason, exit_code, started, finished, job.id),
        )

    def request_stop(self, db: sqlite3.Connection, job_id: str) -> None:
        db.execute("UPDATE jobs SET stop_requested=1 WHERE id=?", (job_id,))

    # --- hosts -------------------------------------------------------------------------------------

    def get_host(self, host_id: str) -> HostRow | None:
        row = self.db.execute("SELECT * FROM hosts WHERE id=?", (host_id,)).fetchone()
        return _host(row) if row else None

    def list_hosts(self) -> list[HostRow]:
        return [_host(r) for r in self.db.execute("SELECT * FROM hosts ORDER BY name").fetchall()]

    def ensure_host(self, host_id: str, name: str) -> HostRow:
        with self.tx() as db:
            db.execute(
                "INSERT OR IGNORE INTO hosts(id, name, created_at) VALUES (?,?,?)",
                (host_id, name, time.time()),
            )
        host = self.get_host(host_id)
        assert host is not None
        return host

    def set_inventory(self, host_id: str, inventory: Inventory, generation: str) -> None:
        with self.tx() as db:
            db.execute(
                "UPDATE hosts SET inventory=?, generation=?, name=? WHERE id=?",
                (msgspec.json.encode(inventory).decode(), generation, inventory.hostname, host_id),
            )

    def set_last_seen(self, host_id: str, when: float) -> None:
        with self.tx() as db:
            db.execute("UPDATE hosts SET last_seen=? WHERE id=?", (when, host_id))

    def set_membership(self, host_id: str, fleet: str, labels: dict[str, str]) -> None:
        with self.tx() as db:
            db.execute(
                "UPDATE hosts SET fleet=?, labels=? WHERE id=?",
                (fleet, msgspec.json.encode(labels).decode(), host_id),
            )

    def set_host_status(self, db: sqlite3.Connection, host_id: str, status: str) -> None:
        db.execute("UPDATE hosts SET status=? WHERE id=?", (status, host_id))

    def bump_index(self, db: sqlite3.Connection, host_id: str) -> None:
        db.execute("UPDATE hosts SET desired_index=desired_index+1 WHERE id=?", (host_id,))

    # --- allocations -------------------------------------------------------------------------------

    def insert_allocation(
        self,
        db: sqlite3.Connection,
        alloc_id: str,
        job_id: str,
        host_id: str,
        blocks: tuple[int, ...],
        gpus: tuple[int, ...],
        cpus: tuple[int, ...],
        memory_mib: int,
    ) -> None:
        db.execute(
            "INSERT INTO allocations(id, job_id, host_id, blocks, gpus, cpus, memory_mib, created_at)"
            " VALUES (?,?,?,?,?,?,?,?)",
            (alloc_id, job_id, host_id, _json(blocks), _json(gpus), _json(cpus), memory_mib, time.time()),
        )

    def get_allocation(self, alloc_id: str) -> AllocRow | None:
        row = self.db.execute("SELECT * FROM allocations WHERE id=?", (alloc_id,)).fetchone()
        return _alloc(row) if row else None

    def active_allocations(self, host_id: str | None = None) -> list[AllocRow]:
        """Allocations not yet terminal: they hold their blocks."""
        marks = ",".join("?" * len(TERMINAL_ALLOC_STATES))
        sql = f"SELECT * FROM allocations WHERE state NOT IN ({marks})"
        args: tuple[str, ...] = TERMINAL_ALLOC_STATES
        if host_id is not None:
            sql += " AND host_id=?"
            args += (host_id,)
        return [_alloc(r) for r in self.db.execute(sql + " ORDER BY created_at", args).fetchall()]

    def latest_allocation(self, job_id: str) -> AllocRow | None:
        row = self.db.execute(
            "SELECT * FROM allocations WHERE job_id=? ORDER BY created_at DESC LIMIT 1", (job_id,)
        ).fetchone()
        return _alloc(row) if row else None

    def update_allocation(
        self,
        db: sqlite3.Connection,
        alloc_id: str,
        state: AllocState,
        exit_code: int | None,
        reason: str,
        final_log_size: int | None,
    ) -> None:
        db.execute(
            "UPDATE allocations SET state=?, exit_code=?, reason=?, final_log_size=? WHERE id=?",
            (state.value, exit_code, reason, final_log_size, alloc_id),
        )

    def set_desired(self, db: sqlite3.Connection, alloc_id: str, desired: str) -> None:
        db.execute("UPDATE allocations SET desired=? WHERE id=?", (desired, alloc_id))


def _json(values: tuple[int, ...]) -> str:
    return msgspec.json.encode(list(values)).decode()


def _job(row: sqlite3.Row) -> JobRow:
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
    )


def _host(row: sqlite3.Row) -> HostRow:
    inventory = msgspec.json.decode(row["inventory"], type=Inventory) if row["inventory"] else None
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
    )


def _alloc(row: sqlite3.Row) -> AllocRow:
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
    )

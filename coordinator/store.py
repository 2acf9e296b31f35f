"""The coordinator's durable state, in SQLite (WAL) or PostgreSQL (coordinator/db). Every write commits
before the caller acknowledges it.

Calls are short and synchronous; the coordinator runs them on its event loop, which keeps them serialised.
The schema carries a version and migrations run in order at open.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from contextlib import AbstractContextManager
from dataclasses import replace
from pathlib import Path

import msgspec

from coordinator.db import BadDatabase, Connection, Row, open_backend
from coordinator.migrations import MIGRATIONS
from coordinator.rows import AllocRow, HostRow, JobRow, _alloc, _host, _job
from shared.spec import TaskSpec
from shared.states import AllocState, HostState, JobState, check_host_transition, check_job_transition
from shared.wire import GpuHealth, Inventory

BACKGROUND_BATCH = 1000  # rows per transaction written off the loop: short, so the loop never waits long
TERMINAL_ALLOC_STATES = tuple(s.value for s in AllocState if s.terminal)
_LISTED = "id, name, generation, desired_index, last_seen, status, fleet, labels, unhealthy"  # a HostRow but its inventory
INVENTORIES_PER_READ = 500  # host ids in one query (both databases' limits on parameters are higher)


class Store:
    """Opened from a database URL (coordinator/db): `sqlite:///ABSOLUTE/PATH`, or `postgresql://...` for
    several coordinators on one state; a Path is an SQLite file. Raises BadDatabase (one line naming
    `database`) for a bad URL, a database that does not answer, or a schema newer than this code's."""

    def __init__(self, database: Path | str) -> None:
        self._backend = open_backend(database)
        self.kind = self._backend.kind
        self.database_url = self._backend.url
        self.path: Path | None = getattr(self._backend, "path", None)  # SQLite's file
        self.db: Connection = self._backend.db
        self._inventories: dict[str, tuple[str, Inventory]] = {}  # by host id: (generation, decoded)
        try:
            self._migrate()
        except BaseException:
            self._backend.close()
            raise

    def close(self) -> None:
        self._backend.close()

    def reader(self) -> AbstractContextManager[Connection]:
        """A connection of its own for a long read in a worker thread (a report), closed after."""
        return self._backend.reader()

    def tx(self) -> AbstractContextManager[Connection]:
        """One transaction; committed (durably) when the block ends without an exception. It is the only
        writer from its start, across coordinators too (coordinator/db/postgres.py)."""
        return self._backend.tx()

    def _migrate(self) -> None:
        with self._backend.migration_lock():
            version = self._backend.schema_version()
            if version > len(MIGRATIONS):
                raise BadDatabase(
                    f"database: schema version {version} is newer than this coordinator's {len(MIGRATIONS)}:"
                    " run a release at least as new as the one that last opened it"
                )
            for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
                with self.tx() as db:
                    for statement in script.split(";"):
                        if statement.strip():
                            db.execute(self._backend.ddl(statement))
                    self._backend.set_schema_version(db, number)

    @property
    def schema_version(self) -> int:
        return self._backend.schema_version()

    # --- tokens ------------------------------------------------------------------------------------

    def add_token(self, token_hash: str, name: str, role: str) -> None:
        with self.tx() as db:
            db.execute(
                "INSERT OR IGNORE INTO tokens(hash, name, role, created_at) VALUES (?,?,?,?)",
                (token_hash, name, role, time.time()),
            )

    # --- jobs --------------------------------------------------------------------------------------

    def insert_job(
        self, job_id: str, name: str, spec: TaskSpec, reason: str, project: str = "default", user: str = ""
    ) -> JobRow:
        """`user`: who submitted it (accounting, `gpuctl usage`)."""
        with self.tx() as db:
            db.execute(
                "INSERT INTO jobs(id, name, spec, priority, status, reason, submitted_at, project, submitted_by)"
                " VALUES (?,?,?,?,?,?,?,?,?)",
                (
                    job_id,
                    name,
                    msgspec.json.encode(spec).decode(),
                    spec.priority,
                    "submitted",
                    reason,
                    time.time(),
                    project,
                    user,
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
        self, include_finished: bool, limit: int = 1000, project: str | None = None, tasks: bool = True
    ) -> list[JobRow]:
        """Newest first; without `tasks`, no task of an array (a listing shows each array as one line)."""
        where = "WHERE (? IS NULL OR project=?)" + ("" if tasks else " AND array_id IS NULL")
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

    def job_counts(self) -> list[tuple[str, str, int]]:
        """(state, project, jobs) for each pair with jobs: one pass over the index jobs_project_status."""
        rows = self.db.execute("SELECT status, project, COUNT(*) FROM jobs GROUP BY project, status")
        return [(r[0], r[1], int(r[2])) for r in rows.fetchall()]

    def set_job_state(
        self,
        db: Connection,
        job: JobRow,
        state: JobState,
        reason: str = "",
        exit_code: int | None = None,
    ) -> JobRow:
        """Move a job through the one transition table; timestamps follow the state (an end with an exit
        code ran: one the agent saw start and end between two syncs starts when it is heard of). Answers
        the job as it is now."""
        if state == job.status and reason == job.reason:
            return job
        check_job_transition(job.status, state)
        now = time.time()
        ran = state is JobState.RUNNING or (state.terminal and exit_code is not None)
        started = now if ran and job.started_at is None else job.started_at
        finished = now if state.terminal else None
        db.execute(
            "UPDATE jobs SET status=?, reason=?, exit_code=?, started_at=?, finished_at=? WHERE id=?",
            (state.value, reason, exit_code, started, finished, job.id),
        )
        return replace(
            job, status=state, reason=reason, exit_code=exit_code, started_at=started, finished_at=finished
        )

    def set_retry_since(self, db: Connection, job_id: str, when: float | None) -> None:
        db.execute("UPDATE jobs SET retry_since=? WHERE id=?", (when, job_id))

    def request_stop(self, db: Connection, job_id: str) -> None:
        db.execute("UPDATE jobs SET stop_requested=1 WHERE id=?", (job_id,))

    # --- hosts -------------------------------------------------------------------------------------

    def get_host(self, host_id: str) -> HostRow | None:
        """The host, its inventory read only when its generation is not the one decoded already: a sync
        reads its host three times, and on PostgreSQL the 3.6 KiB inventory crossed the socket each time
        (a read 0.17 ms against 0.13 ms without it)."""
        row = self.db.execute(f"SELECT {_LISTED} FROM hosts WHERE id=?", (host_id,)).fetchone()
        if row is None:
            return None
        if row["generation"] == self._decoded(host_id):  # "" == "": no inventory yet
            return self._listed_host(row)
        full = self.db.execute("SELECT * FROM hosts WHERE id=?", (host_id,)).fetchone()
        return self._host(full) if full else None

    def list_hosts(self) -> list[HostRow]:
        """Every host, by name. An inventory (3.6 KiB of JSON for 8 GPUs) is read only where its generation
        is not the one decoded already: reading them all was 100-270 ms of the 250-340 ms that listing
        10,000 hosts took, once per re-sync of the scheduler."""
        rows = self.db.execute(f"SELECT {_LISTED} FROM hosts ORDER BY name").fetchall()
        self._read_inventories([r["id"] for r in rows if r["generation"] != self._decoded(r["id"])])
        return [self._listed_host(r) for r in rows]

    def _decoded(self, host_id: str) -> str:
        """The generation of the host's inventory decoded already ("" when none: no inventory either)."""
        return self._inventories.get(host_id, ("", None))[0]

    def _read_inventories(self, host_ids: list[str]) -> None:
        for start in range(0, len(host_ids), INVENTORIES_PER_READ):
            chunk = host_ids[start : start + INVENTORIES_PER_READ]
            sql = f"SELECT id, generation, inventory FROM hosts WHERE id IN ({','.join('?' * len(chunk))})"
            for row in self.db.execute(sql, chunk).fetchall():
                if row["inventory"]:
                    inventory = msgspec.json.decode(row["inventory"], type=Inventory)
                    self._inventories[row["id"]] = (row["generation"], inventory)

    def _listed_host(self, row: Row) -> HostRow:
        if not row["generation"]:
            return _host(row, None)
        generation, inventory = self._inventories.get(row["id"], ("", None))
        if generation != row["generation"]:  # a new inventory came between the two reads: read it whole
            return self.get_host(row["id"]) or _host(row, None)
        return _host(row, inventory)

    def _host(self, row: Row) -> HostRow:
        """A host row, its inventory decoded once per generation: a generation names one inventory (it is
        its hash), and decoding every host's inventory on every read was a quarter of the coordinator's
        CPU under ten thousand agents. Inventories are frozen, so sharing one is safe."""
        inventory = None
        if row["inventory"]:
            generation, inventory = self._inventories.get(row["id"], ("", None))
            if inventory is None or generation != row["generation"]:
                inventory = msgspec.json.decode(row["inventory"], type=Inventory)
                self._inventories[row["id"]] = (row["generation"], inventory)
        return _host(row, inventory)

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

    def set_unhealthy(self, db: Connection, host_id: str, held: tuple[GpuHealth, ...]) -> None:
        db.execute("UPDATE hosts SET unhealthy=? WHERE id=?", (msgspec.json.encode(held).decode(), host_id))

    def count_hosts(self) -> int:
        """Hosts not removed, without reading their rows (a lease's length depends on it)."""
        return int(self.db.execute("SELECT COUNT(*) FROM hosts WHERE status != 'removed'").fetchone()[0])

    def host_statuses(self) -> list[tuple[str, str]]:
        """(host id, stored status) of every host, from the index hosts_status alone."""
        return [(r[0], r[1]) for r in self.db.execute("SELECT id, status FROM hosts").fetchall()]

    def host_status(self, host_id: str) -> str | None:
        """A host's status alone (None if unknown), for a check made on every agent request."""
        row = self.db.execute("SELECT status FROM hosts WHERE id=?", (host_id,)).fetchone()
        return row[0] if row else None

    def set_inventories(self, rows: list[tuple[str, Inventory, str]]) -> None:
        """`set_inventory` for many hosts (host id, inventory, generation) at once, from any thread."""
        self.write_in_background(
            "UPDATE hosts SET inventory=?, generation=?, name=? WHERE id=?",
            [(msgspec.json.encode(inv).decode(), gen, inv.hostname, host_id) for host_id, inv, gen in rows],
        )

    def set_last_seen(self, seen: dict[str, float]) -> None:
        """When each host was last seen, from any thread."""
        self.write_in_background(
            "UPDATE hosts SET last_seen=? WHERE id=?", [(when, host_id) for host_id, when in seen.items()]
        )

    def write_in_background(self, sql: str, rows: list[tuple[object, ...]]) -> None:
        """Run `sql` for every row, committed (durably) before it returns, in transactions of at most
        `BACKGROUND_BATCH` rows. Made for a thread other than the event loop's, so it writes through a
        connection of its own, one caller at a time: the loop's reads go on meanwhile, and a write of the
        loop's waits at most one batch."""
        self._backend.write_batches(sql, rows, BACKGROUND_BATCH)

    def set_membership(self, host_id: str, fleet: str, labels: dict[str, str]) -> None:
        with self.tx() as db:
            db.execute(
                "UPDATE hosts SET fleet=?, labels=? WHERE id=?",
                (fleet, msgspec.json.encode(labels).decode(), host_id),
            )

    def set_host_status(self, db: Connection, host: HostRow, status: HostState) -> None:
        """Move a host through the one transition table (shared/states.py)."""
        check_host_transition(HostState(host.status), status)
        db.execute("UPDATE hosts SET status=? WHERE id=?", (status.value, host.id))

    def bump_index(self, db: Connection, host_id: str) -> None:
        db.execute("UPDATE hosts SET desired_index=desired_index+1 WHERE id=?", (host_id,))

    # --- allocations -------------------------------------------------------------------------------

    def insert_allocation(
        self,
        db: Connection,
        alloc_id: str,
        job_id: str,
        host_id: str,
        blocks: tuple[int, ...],
        gpus: tuple[int, ...],
        cpus: tuple[int, ...],
        memory_mib: int,
        node: int = 0,
        ssh_port: int = 0,
    ) -> None:
        """A new attempt of the job: numbered one past its latest. The nodes of a multi-node job's attempt
        are written in one transaction, rank 0 first, the others in the same attempt."""
        (attempt,) = db.execute(
            "SELECT COALESCE(MAX(attempt), 0) + ? FROM allocations WHERE job_id=?", (node == 0, job_id)
        ).fetchone()
        db.execute(
            "INSERT INTO allocations(id, job_id, host_id, blocks, gpus, cpus, memory_mib, created_at, attempt,"
            " node, ssh_port) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (
                alloc_id,
                job_id,
                host_id,
                _json(blocks),
                _json(gpus),
                _json(cpus),
                memory_mib,
                time.time(),
                attempt,
                node,
                ssh_port,
            ),
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

    def allocations_of(self, job_id: str) -> list[AllocRow]:
        """Every attempt of a job, first to last."""
        rows = self.db.execute(
            "SELECT * FROM allocations WHERE job_id=? ORDER BY attempt, created_at", (job_id,)
        ).fetchall()
        return [_alloc(r) for r in rows]

    def ssh_ports_in_use(self, db: Connection, host_ids: Iterable[str]) -> set[int]:
        """The sshd ports of the live allocations on these hosts, in the caller's transaction (which sees
        the nodes it has just written)."""
        ids = list(host_ids)
        marks, states = ",".join("?" * len(ids)), ",".join("?" * len(TERMINAL_ALLOC_STATES))
        rows = db.execute(
            f"SELECT DISTINCT ssh_port FROM allocations WHERE ssh_port > 0 AND host_id IN ({marks})"
            f" AND state NOT IN ({states})",
            (*ids, *TERMINAL_ALLOC_STATES),
        ).fetchall()
        return {int(row[0]) for row in rows}

    def allocations_in(self, state: AllocState, host_id: str) -> list[AllocRow]:
        rows = self.db.execute(
            "SELECT * FROM allocations WHERE state=? AND host_id=? ORDER BY created_at",
            (state.value, host_id),
        ).fetchall()
        return [_alloc(r) for r in rows]

    def latest_allocation(self, job_id: str) -> AllocRow | None:
        """Its last attempt's allocation (node 0's, for a multi-node job: what `logs` shows by default)."""
        row = self.db.execute(
            "SELECT * FROM allocations WHERE job_id=? ORDER BY attempt DESC, node, created_at DESC LIMIT 1",
            (job_id,),
        ).fetchone()
        return _alloc(row) if row else None

    def update_allocation(
        self,
        db: Connection,
        alloc_id: str,
        state: AllocState,
        exit_code: int | None,
        reason: str,
        final_log_size: int | None,
    ) -> None:
        """Its times follow the state: started when first running (or when it ends with an exit code, as
        a job does), finished when terminal (a lost one that comes back is running again, unfinished)."""
        now = time.time()
        ran = state is AllocState.RUNNING or (state.terminal and exit_code is not None)
        db.execute(
            "UPDATE allocations SET state=?, exit_code=?, reason=?, final_log_size=?,"
            " started_at=COALESCE(started_at, ?),"
            " finished_at=CASE WHEN ? = 1 THEN COALESCE(finished_at, ?) END WHERE id=?",
            (
                state.value,
                exit_code,
                reason,
                final_log_size,
                now if ran else None,
                state.terminal,
                now,
                alloc_id,
            ),
        )

    def set_interrupted(self, db: Connection, alloc_id: str, why: str) -> None:
        db.execute("UPDATE allocations SET interrupted=? WHERE id=?", (why, alloc_id))

    def set_desired(self, db: Connection, alloc_id: str, desired: str) -> None:
        db.execute("UPDATE allocations SET desired=? WHERE id=?", (desired, alloc_id))


def _json(values: tuple[int, ...]) -> str:
    return msgspec.json.encode(list(values)).decode()

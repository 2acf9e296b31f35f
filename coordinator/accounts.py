"""Who may do what: projects, users and their bearer tokens, join tokens for new hosts, and the deny list of
revoked agent certificates. Secrets are stored hashed; the revoked serials are also kept in memory, since
every agent request checks them."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass

import msgspec

from coordinator.queue_policy import Quota
from coordinator.store import Store
from shared.wire import FleetView

NAME = re.compile(r"^[a-z][a-z0-9-]{0,62}$")
ROLES = ("admin", "member")
PLACEMENTS = ("any", "cluster")  # dstack's fleet `placement:`


class Refused(Exception):
    """A request the caller may not make; one line, safe to show."""


class Invalid(ValueError):
    """Bad input; one line naming the field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass(frozen=True)
class Principal:
    name: str
    role: str
    project: str | None  # None: an admin of every project

    @property
    def admin(self) -> bool:
        return self.role == "admin"


@dataclass(frozen=True)
class FleetPolicy:
    """What a fleet's settings ask of the scheduler."""

    projects: frozenset[str] | None = None  # the projects it is limited to; None: open to all
    cluster: bool = False  # `placement: cluster`: its hosts share one fast network; multi-node jobs run here
    preemption: bool = False  # higher-priority work may stop lower-priority work on its hosts

    @property
    def placement(self) -> str:
        return "cluster" if self.cluster else "any"


OPEN_FLEET = FleetPolicy()


@dataclass(frozen=True)
class JoinGrant:
    """What a used join token gives the new host."""

    fleet: str
    labels: dict[str, str]


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def check_name(field: str, value: str) -> str:
    if not NAME.match(value):
        raise Invalid(
            field, f"expected lowercase letters, digits and '-', starting with a letter; got {value!r}"
        )
    return value


class Accounts:
    def __init__(self, store: Store) -> None:
        self.store = store
        rows = store.db.execute("SELECT serial FROM certs WHERE revoked=1").fetchall()
        self._revoked = {row["serial"] for row in rows}

    # --- users and projects ------------------------------------------------------------------------

    def authenticate(self, token: str) -> Principal | None:
        row = self.store.db.execute(
            "SELECT name, role, project FROM tokens WHERE hash=?", (hash_secret(token),)
        ).fetchone()
        return Principal(row["name"], row["role"], row["project"]) if row else None

    def create_project(self, name: str) -> None:
        check_name("name", name)
        with self.store.tx() as db:
            if db.execute("SELECT 1 FROM projects WHERE name=?", (name,)).fetchone():
                raise Invalid("name", f"project {name!r} exists")
            db.execute("INSERT INTO projects(name, created_at) VALUES (?,?)", (name, time.time()))

    def projects(self) -> list[str]:
        return [r["name"] for r in self.store.db.execute("SELECT name FROM projects ORDER BY name")]

    def set_quota(self, project: str, gpus: int | None, jobs: int | None) -> None:
        """The project's quota (None: no limit on that count); both None: no quota."""
        for field, value in (("gpus", gpus), ("jobs", jobs)):
            if value is not None and value < 0:
                raise Invalid(field, f"expected a count of 0 or more; got {value}")
        with self.store.tx() as db:
            changed = db.execute(
                "UPDATE projects SET quota_gpus=?, quota_jobs=? WHERE name=?", (gpus, jobs, project)
            ).rowcount
        if not changed:
            raise Invalid("project", f"no project {project!r}; create it first")

    def quotas(self) -> dict[str, Quota]:
        """The projects that have a quota."""
        rows = self.store.db.execute(
            "SELECT name, quota_gpus, quota_jobs FROM projects"
            " WHERE quota_gpus IS NOT NULL OR quota_jobs IS NOT NULL"
        ).fetchall()
        return {r["name"]: Quota(r["quota_gpus"], r["quota_jobs"]) for r in rows}

    def create_user(self, name: str, project: str, role: str) -> str:
        """A new user of `project`; returns their bearer token (shown once, stored hashed)."""
        check_name("name", name)
        if role not in ROLES:
            raise Invalid("role", f"expected one of {', '.join(ROLES)}; got {role!r}")
        if project not in self.projects():
            raise Invalid("project", f"no project {project!r}; create it first")
        token = "gpuctl_" + secrets.token_urlsafe(32)
        with self.store.tx() as db:
            if db.execute("SELECT 1 FROM tokens WHERE name=?", (name,)).fetchone():
                raise Invalid("name", f"user {name!r} exists")
            db.execute(
                "INSERT INTO tokens(hash, name, role, project, created_at) VALUES (?,?,?,?,?)",
                (hash_secret(token), name, role, project, time.time()),
            )
        return token

    # --- fleets -----------------------------------------------------------------------------------

    def set_fleet_projects(self, fleet: str, projects: list[str]) -> None:
        check_name("fleet", fleet)
        unknown = sorted(set(projects) - set(self.projects()))
        if unknown:
            raise Invalid("projects", f"no project {unknown[0]!r}")
        with self.store.tx() as db:
            db.execute(
                "INSERT INTO fleets(name, projects, created_at) VALUES (?,?,?)"
                " ON CONFLICT(name) DO UPDATE SET projects=excluded.projects",
                (fleet, msgspec.json.encode(sorted(projects)).decode(), time.time()),
            )

    def set_fleet(self, fleet: str, placement: str | None, preemption: bool | None) -> FleetPolicy:
        """Change the fleet's `placement` and `preemption` (None: leave as is); answers its settings now."""
        check_name("name", fleet)
        if placement is not None and placement not in PLACEMENTS:
            raise Invalid("placement", f"expected one of {', '.join(PLACEMENTS)}; got {placement!r}")
        with self.store.tx() as db:
            db.execute(
                "INSERT INTO fleets(name, created_at) VALUES (?,?) ON CONFLICT(name) DO NOTHING",
                (fleet, time.time()),
            )
            if placement is not None:
                db.execute("UPDATE fleets SET placement=? WHERE name=?", (placement, fleet))
            if preemption is not None:
                db.execute("UPDATE fleets SET preemption=? WHERE name=?", (int(preemption), fleet))
        return self.fleets()[fleet]

    def fleets(self) -> dict[str, FleetPolicy]:
        """Every fleet with a setting; a fleet absent here is open to all, `placement: any`, no preemption."""
        rows = self.store.db.execute("SELECT name, projects, placement, preemption FROM fleets").fetchall()
        return {
            r["name"]: FleetPolicy(
                frozenset(msgspec.json.decode(r["projects"], type=list[str])) or None,
                r["placement"] == "cluster",
                bool(r["preemption"]),
            )
            for r in rows
        }

    def fleet_views(self) -> list[FleetView]:
        """Every fleet that has a setting or a host, by name."""
        rows = self.store.db.execute(
            "SELECT fleet, COUNT(*) AS hosts FROM hosts WHERE status != 'removed' GROUP BY fleet"
        ).fetchall()
        hosts = {r["fleet"]: r["hosts"] for r in rows}
        fleets = self.fleets()
        views = []
        for name in sorted(hosts.keys() | fleets.keys()):
            policy = fleets.get(name, OPEN_FLEET)
            projects = sorted(policy.projects or ())
            views.append(FleetView(name, policy.placement, policy.preemption, projects, hosts.get(name, 0)))
        return views

    # --- join tokens -------------------------------------------------------------------------------

    def create_join_token(
        self, fleet: str, ttl_s: int, uses: int | None, labels: dict[str, str]
    ) -> tuple[str, str, float]:
        """(token id, secret, expires at). The secret is shown once and stored hashed."""
        check_name("fleet", fleet)
        if ttl_s <= 0:
            raise Invalid("ttl", "must be positive")
        if uses is not None and uses < 1:
            raise Invalid("uses", "must be at least 1")
        token_id, secret = secrets.token_hex(6), secrets.token_urlsafe(24)
        expires_at = time.time() + ttl_s
        with self.store.tx() as db:
            db.execute(
                "INSERT INTO join_tokens(id, secret_hash, fleet, labels, expires_at, uses_left, created_at)"
                " VALUES (?,?,?,?,?,?,?)",
                (
                    token_id,
                    hash_secret(secret),
                    fleet,
                    msgspec.json.encode(labels).decode(),
                    expires_at,
                    uses,
                    time.time(),
                ),
            )
        return token_id, secret, expires_at

    def join_tokens(self) -> list[dict[str, object]]:
        rows = self.store.db.execute(
            "SELECT id, fleet, labels, expires_at, uses_left FROM join_tokens WHERE deleted=0 ORDER BY created_at"
        ).fetchall()
        return [dict(r) | {"labels": msgspec.json.decode(r["labels"])} for r in rows]

    def delete_join_token(self, token_id: str) -> bool:
        with self.store.tx() as db:
            return db.execute("UPDATE join_tokens SET deleted=1 WHERE id=?", (token_id,)).rowcount > 0

    def use_join_token(self, token_id: str, secret: str) -> JoinGrant:
        """Spend one use of a join token. Raises Refused for an unknown, wrong, expired, used-up or deleted one."""
        with self.store.tx() as db:
            row = db.execute("SELECT * FROM join_tokens WHERE id=?", (token_id,)).fetchone()
            if row is None or not hmac.compare_digest(row["secret_hash"], hash_secret(secret)):
                raise Refused("join token refused: unknown token")
            if row["deleted"]:
                raise Refused("join token refused: it was deleted")
            if row["expires_at"] < time.time():
                raise Refused("join token refused: it expired; create a new one with `gpuctl token create`")
            if row["uses_left"] is not None:
                if row["uses_left"] < 1:
                    raise Refused(
                        "join token refused: it is used up; create a new one with `gpuctl token create`"
                    )
                db.execute("UPDATE join_tokens SET uses_left=uses_left-1 WHERE id=?", (token_id,))
        return JoinGrant(row["fleet"], msgspec.json.decode(row["labels"], type=dict[str, str]))

    # --- agent certificates ------------------------------------------------------------------------

    def record_cert(self, serial: int, host_id: str, not_after: float) -> None:
        with self.store.tx() as db:
            db.execute(
                "INSERT OR IGNORE INTO certs(serial, host_id, not_after) VALUES (?,?,?)",
                (str(serial), host_id, not_after),
            )

    def revoke_host(self, host_id: str) -> int:
        """Deny every certificate issued to the host. Idempotent; returns how many were revoked now."""
        with self.store.tx() as db:
            rows = db.execute("SELECT serial FROM certs WHERE host_id=? AND revoked=0", (host_id,)).fetchall()
            db.execute("UPDATE certs SET revoked=1 WHERE host_id=?", (host_id,))
        self._revoked.update(r["serial"] for r in rows)
        return len(rows)

    def is_revoked(self, serial: int) -> bool:
        return str(serial) in self._revoked

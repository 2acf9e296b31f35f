"""The structs of a task spec (also its wire form) and the error every problem raises."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import msgspec


class Range(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """An inclusive range; None on a side means unbounded. `Range(2, 2)` is exactly 2."""

    min: float | None = None
    max: float | None = None

    def contains(self, value: float) -> bool:
        return (self.min is None or value >= self.min) and (self.max is None or value <= self.max)


class GpuRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """dstack's `vendor:name(s):memory:count` grammar, parsed, plus DRA-style attributes of the mapping form.

    `memory_mib` is per GPU. `count` defaults to exactly 1 when a gpu is named without a count. A
    `compute_capability` range implies NVIDIA (only NVIDIA GPUs have one).
    """

    count: Range = Range(1, 1)
    vendor: str | None = None  # "nvidia" | "amd" | "intel"
    names: tuple[str, ...] = ()  # ("A10G", "A100"): any of them; empty means any model
    memory_mib: Range | None = None
    compute_capability: Range | None = None  # NVIDIA's CUDA compute capability, `8.0..` → Range(8.0, None)


class Resources(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    gpu: GpuRequest | None = None  # None: the job asks for no GPU
    cpu: Range | None = None  # cores
    memory_mib: Range | None = None
    disk_mib: Range | None = None
    shm_size_mib: int | None = None


class RegistryAuth(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Credentials for pulling the job's image. Only the agent that runs the job sees the password: every
    view of the job shows it as `REDACTED` (see `redacted`)."""

    username: str
    password: str


class Repo(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A remote git repository that the agent clones (through its proxy) before the commands run. A local
    repository never travels as a `Repo`: the CLI packs it into the job's files archive, like `files:`."""

    url: str
    branch: str | None = None  # None: the remote's default branch
    hash: str | None = None  # a commit to check out after the clone
    path: str = "."  # where, relative to the working directory


RETRY_EVENTS = ("no-capacity", "error", "interruption")
DEFAULT_RETRY_DURATION_S = 3600  # dstack's default: `retry: true` retries for an hour


class RetryPolicy(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """dstack's `retry:`. `no-capacity`: while nothing fits, keep waiting (pending) up to `duration_s`, then
    fail with the reason; `error`: the job exited non-zero (or failed to start); `interruption`: its host
    was lost, removed, or drained with `--stop`. Each retry is a new attempt (a new allocation)."""

    on_events: tuple[str, ...] = RETRY_EVENTS
    duration_s: int = DEFAULT_RETRY_DURATION_S


class Schedule(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """dstack's `schedule: {cron: ...}`: the spec is submitted as a job at each of these times (UTC). A
    spec with one is a schedule, not a job (coordinator/schedules.py)."""

    cron: tuple[str, ...]  # five-field cron lines (shared/cron.py)


class PortMapping(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One of dstack's `ports:`: the job's `port`, forwarded from `local_port` (None: any free one)."""

    port: int
    local_port: int | None = None


class ServiceSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """dstack's service fields (shared/spec/service.py): the coordinator serves the service's `replicas`
    jobs' `port` at `/services/PROJECT/NAME/`, to its project's members only unless `auth` is false, with
    that prefix taken off the path the application sees unless `strip_prefix` is false."""

    port: int
    replicas: int = 1
    auth: bool = True
    strip_prefix: bool = True


STARTUP_ORDERS = ("any", "master-first", "workers-first")
STOP_CRITERIA = ("all-done", "master-done")


class NodeGroup(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One of dstack's `groups:` of a multi-node job: `nodes` nodes that run `commands`. Ranks go to the
    groups in order (the first group's first node is the master, rank 0); every node takes the job's
    `resources` (a gang's nodes take alike blocks)."""

    name: str  # as written, else its position ("0", "1", ...), as dstack names it
    nodes: int = 1
    commands: tuple[str, ...] = ()


class TaskSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    # Empty only for a job with an image: it runs the image's own entrypoint and command (as dstack does).
    commands: tuple[str, ...] = ()
    type: str = "task"
    name: str | None = None
    image: str | None = None
    env: dict[str, str] = {}
    resources: Resources = Resources()
    nodes: int = 1
    volumes: tuple[str, ...] = ()
    working_dir: str | None = None
    max_duration_s: int | None = None
    priority: int = 0
    fleets: tuple[str, ...] = ()
    stop_duration_s: int | None = None  # SIGTERM, then SIGKILL after this; None: the agent's default (10 s)
    privileged: bool = False  # containers only; a host runs it only if its agent config allows it
    # sha256 (hex) of a tar.gz the coordinator stores, unpacked into the working directory before the
    # commands start; the local paths it was packed from never leave the CLI (see `TaskFile.files`)
    files_archive: str | None = None
    registry_auth: RegistryAuth | None = None
    # The shell that runs `commands`: "sh", "bash" or an absolute path; None: /bin/sh
    shell: str | None = None
    # dstack's `python: "3.11"`: the coordinator sets `image` from its `python_image` setting at submit
    python: str | None = None
    repos: tuple[Repo, ...] = ()  # remote repositories only (see `Repo`)
    # sha256 (hex) of a tar.gz whose member paths are absolute paths in the container with the leading "/"
    # dropped (`files: [~/.ssh/id_rsa:/root/.ssh/id_rsa]`); copied into the container before it starts.
    # Containers only: a plain-process job with one is refused.
    root_files_archive: str | None = None
    retry: RetryPolicy | None = None  # None: an attempt that ends badly ends the job
    # How long its host may be silent before the job's allocation is `lost` (None: the fleet's or the
    # coordinator's `lost_after`)
    lost_after_s: int | None = None
    schedule: Schedule | None = None  # None: one job, now
    # dstack's node groups; when set, `nodes` is their sum and `commands` is empty (each group has its own)
    groups: tuple[NodeGroup, ...] = ()
    # Of a multi-node job: which nodes start first (the others wait, placed, until those run), and whether
    # the job ends when the master (node 0) does, its peers stopped, or when every node has
    startup_order: str = "any"  # STARTUP_ORDERS
    stop_criteria: str = "all-done"  # STOP_CRITERIA
    ports: tuple[PortMapping, ...] = ()  # what `gpuctl port-forward JOB` forwards when it names no port
    # A dev environment's (shared/spec/dev_env.py): its IDE (None: ssh only), and how long it may go with
    # no ssh session or exec before it is stopped (None: off)
    ide: str | None = None
    inactivity_duration_s: int | None = None
    service: ServiceSpec | None = None  # set exactly when `type` is "service"

    def group_of(self, rank: int) -> NodeGroup | None:
        """The group node `rank` belongs to (None without groups)."""
        first = 0
        for group in self.groups:
            if rank < first + group.nodes:
                return group
            first += group.nodes
        return None


@dataclass(frozen=True)
class TaskFile:
    """A parsed task file: the wire spec, and what only the CLI needs. `files` holds (local path, path
    relative to the working directory) pairs, in order, local repositories included; `root_files` holds
    (local path, absolute path in the container) pairs, for a job with an image. Local paths are as written
    (relative ones are resolved by the CLI against the task file's folder, `~` is expanded). `warnings`
    are one line each: fields accepted but without effect here (dstack's cloud-only ones)."""

    spec: TaskSpec
    files: tuple[tuple[str, str], ...] = ()
    root_files: tuple[tuple[str, str], ...] = ()
    warnings: tuple[str, ...] = ()


class SpecError(ValueError):
    """A spec the user must fix. `str()` is one line per problem: `<source>:<line>: <field>: <what>`.

    One problem has `errors == (self,)`; `SpecError.of` joins several found in one pass (sorted by line,
    `field`/`message`/`line` those of the first), so a user fixes them all at once.
    """

    def __init__(self, field: str, message: str, line: int | None = None, source: str = "spec") -> None:
        self.field = field
        self.message = message
        self.line = line
        self.source = source
        self.errors: tuple[SpecError, ...] = (self,)
        where = f"{source}:{line}" if line is not None else source
        super().__init__(f"{where}: {field}: {message}" if field else f"{where}: {message}")

    @classmethod
    def of(cls, errors: Iterable[SpecError]) -> SpecError:
        """One error carrying `errors` (each flattened, duplicates dropped); ValueError if there are none."""
        found: list[SpecError] = []
        for error in errors:
            found += [e for e in error.errors if str(e) not in map(str, found)]
        if not found:
            raise ValueError("no errors to join")
        found.sort(key=lambda e: -1 if e.line is None else e.line)
        if len(found) == 1:
            return found[0]
        first = found[0]
        joined = cls(first.field, first.message, first.line, first.source)
        joined.errors = tuple(found)
        joined.args = ("\n".join(str(e) for e in found),)
        return joined

    def where(self, line: int | None = None, source: str | None = None) -> SpecError:
        """The same problem(s), with `line` filled in where none was known and/or another `source`."""
        copies = [
            SpecError(e.field, e.message, e.line if e.line is not None else line, source or e.source)
            for e in self.errors
        ]
        return SpecError.of(copies)


class Problems:
    """Problems collected while a walk goes on past them: `with problems.collect(): ...` records a
    SpecError raised in the block and continues after it; `raise_any()` raises them all as one."""

    def __init__(self) -> None:
        self.found: list[SpecError] = []

    @contextmanager
    def collect(self) -> Iterator[None]:
        try:
            yield
        except SpecError as error:
            self.found.append(error)

    def raise_any(self) -> None:
        if self.found:
            raise SpecError.of(self.found)

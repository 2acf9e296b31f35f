"""The rules of a spec, shared by `parse_spec` and `validate_spec`: each raises `SpecError(field, message)`
without a line (the parser adds it)."""

from __future__ import annotations

import math
import posixpath
import re
from collections.abc import Callable
from typing import Any

from shared.spec.gpu_names import _gpu_name, _gpu_vendor
from shared.spec.limits import (
    _ARCHIVE_ID_RE,
    ENV_KEY_RE,
    GPU_VENDORS,
    MAX_COMMAND_BYTES,
    MAX_COMPUTE_CAPABILITY,
    MAX_CREDENTIAL_BYTES,
    MAX_DURATION_S,
    MAX_ENV_ENTRIES,
    MAX_ENV_VALUE_BYTES,
    MAX_GPU_NAMES,
    MAX_IMAGE_CHARS,
    MAX_LIST_ITEMS,
    MAX_NODES,
    MAX_PATH_BYTES,
    MAX_PRIORITY,
    MAX_RANGE_VALUE,
    MAX_STOP_DURATION_S,
    MIN_LOST_AFTER_S,
    MIN_PRIORITY,
    NAME_RE,
)
from shared.spec.model import (
    RETRY_EVENTS,
    STARTUP_ORDERS,
    STOP_CRITERIA,
    GpuRequest,
    NodeGroup,
    Range,
    RegistryAuth,
    Repo,
    Resources,
    RetryPolicy,
    Schedule,
    SpecError,
)
from shared.spec.node_refs import check_node_refs, group_sizes
from shared.spec.nodes import _child, _quote
from shared.units import format_mib

_PYTHON_RE = re.compile(r"3\.\d{1,2}", re.ASCII)
_URL_RE = re.compile(r"(https?|ssh)://[A-Za-z0-9._~%@:\[\]-]+(/\S*)?", re.ASCII)
_SCP_URL_RE = re.compile(
    r"[A-Za-z0-9][A-Za-z0-9._-]*@[A-Za-z0-9.-]+:[^\s-]\S*", re.ASCII
)  # git@host:org/repo.git
_BRANCH_RE = re.compile(r"[A-Za-z0-9._+][A-Za-z0-9._+/-]{0,254}", re.ASCII)
_HASH_RE = re.compile(r"[0-9a-fA-F]{4,64}", re.ASCII)
_GROUP_NAME_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,39}", re.ASCII)  # dstack's node group names


def _check_text(path: str, value: str, max_bytes: int, *, allow_empty: bool = True) -> None:
    """Valid UTF-8, no NUL, at most `max_bytes` bytes, and not empty unless `allow_empty`."""
    try:
        size_bytes = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise SpecError(path, "contains characters that cannot be encoded as UTF-8") from None
    if "\x00" in value:
        raise SpecError(path, "must not contain NUL characters")
    if size_bytes > max_bytes:
        raise SpecError(path, f"too long: {size_bytes} bytes, at most {max_bytes}")
    if not allow_empty and not value.strip():
        raise SpecError(path, "must not be empty")


def _check_count(path: str, items: tuple[Any, ...] | dict[str, str], max_items: int) -> None:
    if len(items) > max_items:
        raise SpecError(path, f"too many entries: {len(items)}, at most {max_items}")


SPEC_TYPES = ("task", "service", "dev-environment")


def _check_type(value: str) -> None:
    if value not in SPEC_TYPES:
        raise SpecError("type", f"expected one of {', '.join(SPEC_TYPES)}, got {_quote(value)}")


def _check_name(name: str) -> None:
    if not NAME_RE.fullmatch(name):
        raise SpecError(
            "name",
            f"expected lowercase letters, digits and '-', starting with a letter, at most 60 characters, "
            f"got {_quote(name)}",
        )


def _check_image(image: str) -> None:
    _check_text("image", image, MAX_IMAGE_CHARS, allow_empty=False)
    if len(image) > MAX_IMAGE_CHARS:
        raise SpecError("image", f"too long: {len(image)} characters, at most {MAX_IMAGE_CHARS}")
    if any(c.isspace() for c in image):
        raise SpecError("image", f"must not contain whitespace, got {_quote(image)}")


def _check_command(index: int, command: str) -> None:
    _check_text(f"commands[{index}]", command, MAX_COMMAND_BYTES)


def _check_commands(commands: tuple[str, ...]) -> None:
    """Each command; none at all is a task that runs its image's own entrypoint (see `_check_work`)."""
    _check_count("commands", commands, MAX_LIST_ITEMS)
    for index, command in enumerate(commands):
        _check_command(index, command)


def _check_env_key(key: str) -> None:
    if not ENV_KEY_RE.fullmatch(key) or len(key) > 256:
        raise SpecError(
            _child("env", key),
            "invalid variable name; expected letters, digits and '_', not starting with a digit",
        )


def _check_env_entry(key: str, value: str) -> None:
    _check_env_key(key)
    _check_text(_child("env", key), value, MAX_ENV_VALUE_BYTES)


def _check_env(env: dict[str, str]) -> None:
    _check_count("env", env, MAX_ENV_ENTRIES)
    for key, value in env.items():
        _check_env_entry(key, value)


def _check_nodes(nodes: int) -> None:
    if not 1 <= nodes <= MAX_NODES:
        raise SpecError("nodes", f"must be between 1 and {MAX_NODES}, got {nodes}")


def _check_groups(
    groups: tuple[NodeGroup, ...], nodes: int, commands: tuple[str, ...], image: str | None
) -> None:
    """dstack's node groups: unique names, each with its nodes and commands (or the job's image's own), the
    job's `nodes` their sum and no commands of its own (each group runs its own)."""
    if not groups:
        return
    _check_count("groups", groups, MAX_LIST_ITEMS)
    for index, group in enumerate(groups):
        _check_group(index, group, image is not None)
    _check_group_names(groups)
    total = sum(group.nodes for group in groups)
    if not 1 <= total <= MAX_NODES:
        raise SpecError("groups", f"the groups' nodes must add up to at most {MAX_NODES}, got {total}")
    if nodes != total:
        raise SpecError("nodes", f"must be the groups' nodes added up ({total}), got {nodes}")
    if commands:
        raise SpecError("commands", GROUP_COMMANDS)


def _check_group_names(groups: tuple[NodeGroup, ...]) -> None:
    names = [group.name for group in groups]
    for index, name in enumerate(names):
        if name in names[:index]:
            raise SpecError(f"groups[{index}].name", f"duplicate group name {_quote(name)}")


GROUP_COMMANDS = "not allowed with groups: each group runs its own commands; move them into the groups"


def _check_group(index: int, group: NodeGroup, has_image: bool) -> None:
    path = f"groups[{index}]"
    if not _GROUP_NAME_RE.fullmatch(group.name):
        raise SpecError(
            f"{path}.name",
            f"expected lowercase letters, digits and '-', at most 40 characters, got {_quote(group.name)}",
        )
    if not 1 <= group.nodes <= MAX_NODES:
        raise SpecError(f"{path}.nodes", f"must be between 1 and {MAX_NODES}, got {group.nodes}")
    if not group.commands and not has_image:
        raise SpecError(f"{path}.commands", "missing; a group needs commands, unless the task has an image")
    _check_count(f"{path}.commands", group.commands, MAX_LIST_ITEMS)
    for number, command in enumerate(group.commands):
        _check_text(f"{path}.commands[{number}]", command, MAX_COMMAND_BYTES)


def _check_node_refs(commands: tuple[str, ...], groups: tuple[NodeGroup, ...], nodes: int) -> None:
    """Every `${{ groups[i].nodes[j].IP_ADDRESS }}` in the task's or a group's commands names a node."""
    sizes = group_sizes(groups, nodes)
    for index, command in enumerate(commands):
        check_node_refs(f"commands[{index}]", command, sizes)
    for number, group in enumerate(groups):
        for index, command in enumerate(group.commands):
            check_node_refs(f"groups[{number}].commands[{index}]", command, sizes)


def _check_startup_order(order: str) -> None:
    if order not in STARTUP_ORDERS:
        raise SpecError("startup_order", f"expected one of {', '.join(STARTUP_ORDERS)}, got {_quote(order)}")


def _check_stop_criteria(criteria: str) -> None:
    if criteria not in STOP_CRITERIA:
        raise SpecError(
            "stop_criteria", f"expected one of {', '.join(STOP_CRITERIA)}, got {_quote(criteria)}"
        )


def _check_volume(index: int, volume: str) -> None:
    path = f"volumes[{index}]"
    _check_text(path, volume, 2 * MAX_PATH_BYTES + 1)
    parts = volume.split(":")
    if len(parts) != 2 or not all(part.strip() for part in parts):
        raise SpecError(path, f"expected /host/path:/container/path, got {_quote(volume)}")
    if not parts[1].startswith("/"):
        raise SpecError(path, f"the container path must be absolute, got {_quote(parts[1])}")


def _check_volumes(volumes: tuple[str, ...]) -> None:
    _check_count("volumes", volumes, MAX_LIST_ITEMS)
    for index, volume in enumerate(volumes):
        _check_volume(index, volume)


def _check_working_dir(working_dir: str) -> None:
    _check_text("working_dir", working_dir, MAX_PATH_BYTES, allow_empty=False)


def _check_files_archive(archive: str | None, field: str = "files") -> None:
    if archive is not None and not _ARCHIVE_ID_RE.fullmatch(archive):
        raise SpecError(
            field, f"the archive id must be 64 lowercase hex digits (a sha256), got {_quote(archive)}"
        )


def _check_shell(shell: str) -> None:
    _check_text("shell", shell, MAX_PATH_BYTES, allow_empty=False)
    if shell not in ("sh", "bash") and not (shell.startswith("/") and not any(c.isspace() for c in shell)):
        raise SpecError(
            "shell", f"expected sh, bash or an absolute path like /usr/bin/zsh, got {_quote(shell)}"
        )


def _check_python(python: str) -> None:
    if not _PYTHON_RE.fullmatch(python):
        raise SpecError("python", f"expected a Python version like 3.11, got {_quote(python)}")


def _check_repos(repos: tuple[Repo, ...]) -> None:
    _check_count("repos", repos, MAX_LIST_ITEMS)
    for index, repo in enumerate(repos):
        _check_repo(f"repos[{index}]", repo)


def _check_repo(path: str, repo: Repo) -> None:
    """A remote repository the agent clones: a git URL that cannot pass for an option, plain branch and
    commit text, and a path inside the working directory."""
    _check_text(f"{path}.url", repo.url, MAX_PATH_BYTES, allow_empty=False)
    if not (_URL_RE.fullmatch(repo.url) or _SCP_URL_RE.fullmatch(repo.url)):
        raise SpecError(
            f"{path}.url",
            f"expected a git URL (https://, http://, ssh:// or git@host:path), got {_quote(repo.url)}",
        )
    if repo.branch is not None and (not _BRANCH_RE.fullmatch(repo.branch) or ".." in repo.branch):
        raise SpecError(
            f"{path}.branch", f"expected a branch name like main or release/1.2, got {_quote(repo.branch)}"
        )
    if repo.hash is not None and not _HASH_RE.fullmatch(repo.hash):
        raise SpecError(
            f"{path}.hash", f"expected a commit hash (4 to 64 hex digits), got {_quote(repo.hash)}"
        )
    _check_text(f"{path}.path", repo.path, MAX_PATH_BYTES, allow_empty=False)
    normal = posixpath.normpath(repo.path)
    if normal.startswith("/") or normal == ".." or normal.startswith("../") or normal != repo.path:
        raise SpecError(
            f"{path}.path",
            f"expected a normalized path inside the working directory, got {_quote(repo.path)}",
        )


def _check_registry_auth(auth: RegistryAuth | None, image: str | None) -> None:
    if auth is None:
        return
    if image is None:
        raise SpecError(
            "registry_auth", "only a job with an image pulls one; add image or drop registry_auth"
        )
    _check_credential("registry_auth.username", auth.username)
    _check_credential("registry_auth.password", auth.password)


def _check_credential(path: str, value: str) -> None:
    _check_text(path, value, MAX_CREDENTIAL_BYTES, allow_empty=False)


def _check_max_duration(max_duration_s: int | None) -> None:
    if max_duration_s is not None and not 1 <= max_duration_s <= MAX_DURATION_S:
        raise SpecError("max_duration", f"must be between 1s and 10 years, or off, got {max_duration_s}s")


def _check_stop_duration(stop_duration_s: int | None) -> None:
    if stop_duration_s is not None and not 0 <= stop_duration_s <= MAX_STOP_DURATION_S:
        raise SpecError("stop_duration", f"must be between 0s and 1h, got {stop_duration_s}s")


def _check_retry(retry: RetryPolicy | None) -> None:
    if retry is None:
        return
    if not retry.on_events:
        raise SpecError("retry.on_events", f"must name at least one of {', '.join(RETRY_EVENTS)}")
    for index, event in enumerate(retry.on_events):
        if event not in RETRY_EVENTS:
            raise SpecError(
                f"retry.on_events[{index}]", f"expected one of {', '.join(RETRY_EVENTS)}, got {event!r}"
            )
    if not 1 <= retry.duration_s <= MAX_DURATION_S:
        raise SpecError("retry.duration", f"must be between 1s and 10 years, got {retry.duration_s}s")


def _check_lost_after(lost_after_s: int | None) -> None:
    if lost_after_s is not None and not MIN_LOST_AFTER_S <= lost_after_s <= MAX_DURATION_S:
        raise SpecError(
            "lost_after", f"must be between {MIN_LOST_AFTER_S}s and 10 years, got {lost_after_s}s"
        )


def _check_priority(priority: int) -> None:
    if not MIN_PRIORITY <= priority <= MAX_PRIORITY:
        raise SpecError("priority", f"must be between {MIN_PRIORITY} and {MAX_PRIORITY}, got {priority}")


def _check_fleet(index: int, fleet: str) -> None:
    _check_text(f"fleets[{index}]", fleet, MAX_PATH_BYTES, allow_empty=False)


def _check_fleets(fleets: tuple[str, ...]) -> None:
    _check_count("fleets", fleets, MAX_LIST_ITEMS)
    for index, fleet in enumerate(fleets):
        _check_fleet(index, fleet)


def _check_resources(resources: Resources) -> None:
    if resources.gpu is not None:
        _check_gpu(resources.gpu, "resources.gpu")
    if resources.cpu is not None:
        _check_range("resources.cpu", resources.cpu)
    if resources.memory_mib is not None:
        _check_memory(resources.memory_mib)
    if resources.disk_mib is not None:
        _check_disk(resources.disk_mib)
    if resources.shm_size_mib is not None:
        _check_shm_size(resources.shm_size_mib)


def _check_memory(memory_mib: Range) -> None:
    _check_range("resources.memory", memory_mib, show=_show_mib)


def _check_disk(disk_mib: Range) -> None:
    _check_range("resources.disk", disk_mib, show=_show_mib)


def _check_shm_size(shm_size_mib: int) -> None:
    if not 0 <= shm_size_mib <= MAX_RANGE_VALUE:
        raise SpecError(
            "resources.shm_size", f"must be between 0 and {MAX_RANGE_VALUE} MiB, got {shm_size_mib}"
        )


def _check_gpu(gpu: GpuRequest, path: str) -> None:
    if gpu.vendor is not None and gpu.vendor not in GPU_VENDORS:
        raise SpecError(path, f"vendor must be one of {', '.join(GPU_VENDORS)}, got {_quote(gpu.vendor)}")
    _check_count(path, gpu.names, MAX_GPU_NAMES)
    try:
        for name in gpu.names:
            _gpu_name(name)
        _gpu_vendor(gpu.vendor, gpu.names)
    except ValueError as error:
        raise SpecError(path, str(error)) from None
    _check_range(path, gpu.count, what="count ", whole=True)
    if gpu.memory_mib is not None:
        _check_range(path, gpu.memory_mib, what="memory ", show=_show_mib)
    if gpu.compute_capability is not None:
        _check_capability(gpu, path)


def _check_capability(gpu: GpuRequest, path: str) -> None:
    assert gpu.compute_capability is not None
    if gpu.vendor not in (None, "nvidia"):
        raise SpecError(path, f"compute_capability applies to NVIDIA GPUs only, not {gpu.vendor}")
    _check_range(path, gpu.compute_capability, what="compute_capability ", show=lambda v: f"{v:.1f}")
    for side in (gpu.compute_capability.min, gpu.compute_capability.max):
        if side is not None and side > MAX_COMPUTE_CAPABILITY:
            raise SpecError(
                path, f"compute_capability must be at most {MAX_COMPUTE_CAPABILITY}, got {side:.1f}"
            )


def _check_range(
    path: str,
    bounds: Range,
    *,
    what: str = "",
    show: Callable[[float], str] | None = None,
    whole: bool = False,
) -> None:
    """Both sides finite, non-negative, at most MAX_RANGE_VALUE (whole numbers if `whole`), and min <= max.
    `what` prefixes the message ("count "); `show` formats a side for it."""
    show = show or _show_number
    for value in (bounds.min, bounds.max):
        if value is None:
            continue
        if isinstance(value, float) and not math.isfinite(value):
            raise SpecError(path, f"{what}must be a finite number")
        if value < 0:
            raise SpecError(path, f"{what}must not be negative, got {_show_range(bounds, _show_number)}")
        if value > MAX_RANGE_VALUE:
            raise SpecError(path, f"{what}too large (at most {MAX_RANGE_VALUE})")
        if whole and value != int(value):
            raise SpecError(path, f"{what}must be a whole number, got {_show_range(bounds, _show_number)}")
    if bounds.min is not None and bounds.max is not None and bounds.min > bounds.max:
        raise SpecError(path, f"{what}range {_show_range(bounds, show)} is empty: min is greater than max")


def _show_range(bounds: Range, show: Callable[[float], str]) -> str:
    if bounds.min is not None and bounds.min == bounds.max:
        return show(bounds.min)
    low = "" if bounds.min is None else show(bounds.min)
    high = "" if bounds.max is None else show(bounds.max)
    return f"{low}..{high}"


def _show_number(value: float) -> str:
    return str(int(value)) if value == int(value) else repr(value)


def _show_mib(value: float) -> str:
    return format_mib(int(value)) if value >= 0 and value == int(value) else f"{value}MB"


def _check_schedule(schedule: Schedule | None) -> None:
    if schedule is None:
        return
    if not schedule.cron:
        raise SpecError("schedule.cron", 'must name at least one cron line, such as "0 3 * * *" (UTC)')
    _check_count("schedule.cron", schedule.cron, MAX_LIST_ITEMS)
    for index, line in enumerate(schedule.cron):
        _check_cron_line(index, line)


def _check_cron_line(index: int, line: str) -> None:
    """Five valid fields (shared/cron.py, imported only for a spec with a schedule)."""
    _check_text(f"schedule.cron[{index}]", line, MAX_COMMAND_BYTES, allow_empty=False)
    from shared.cron import cron_problem

    problem = cron_problem(line)
    if problem is not None:
        raise SpecError(f"schedule.cron[{index}]", problem)

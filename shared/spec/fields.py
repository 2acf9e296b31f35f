"""Every top-level field of dstack's task files, in exactly one group: what gpuctl does with it.

A dstack task file must never be half-run in silence: a field either acts, or is accepted with a warning
that says it has no effect here, or is refused with advice. `TASK_FIELD_GROUPS` is the one table; the
parser walks it, and a test checks it against dstack's task reference.
"""

from __future__ import annotations

import difflib
import enum
from collections.abc import Iterable


class FieldGroup(enum.Enum):
    ACTS = "acts"  # parsed, checked and acted on
    CLOUD_ONLY = "cloud-only"  # accepted with a warning: it chooses, prices or tags cloud machines
    DEPRECATED = "deprecated"  # accepted with a warning: dstack itself gives it no effect in a task
    REFUSED = "refused"  # refused with advice, unless its value asks for nothing (null, false, empty)


_ACTS = (
    "type name image commands env resources nodes volumes working_dir max_duration stop_duration priority "
    "fleets privileged files registry_auth python shell repos retry schedule groups startup_order stop_criteria "
    "ports "
    "lost_after"  # gpuctl's own: how long a job's host may be silent before its allocation is lost
)
_CLOUD_ONLY = (
    "backends regions availability_zones instance_types reservation spot_policy max_price creation_policy "
    "idle_duration utilization_policy tags backend_options"
)
_DEPRECATED = "home_dir setup pool_name instance_name retry_policy termination_policy termination_idle_time"

# Why each refused field is refused, and what to do instead.
REFUSED_ADVICE = {
    "entrypoint": "not supported yet; remove it and put the program in commands",
    "user": "not supported yet; remove it (the image's own user runs the job)",
    "single_branch": "not supported yet, except true (a repository is cloned on one branch); remove it",
    "docker": "not supported: docker: true; use an image with dockerd and `privileged: true` on a host "
    "that allows it",
    "nvcc": "not supported: nvcc: true; use an image that has nvcc "
    "(e.g. nvcr.io/nvidia/cuda:12.4.1-devel-ubuntu22.04)",
    "dstack": "not supported: there is no dstack server here for the job to reach; remove it",
    # Ignoring it would run the job on a host the user ruled out.
    "instances": "not supported yet; remove it (use fleets to choose the hosts a job may run on)",
}


def _grouped(groups: dict[FieldGroup, Iterable[str]]) -> dict[str, FieldGroup]:
    """field -> group; a field named in two groups is a mistake in this module, caught at import."""
    table: dict[str, FieldGroup] = {}
    for group, names in groups.items():
        for name in names:
            if name in table:
                raise ValueError(f"{name} is in both {table[name].value} and {group.value}")
            table[name] = group
    return table


TASK_FIELD_GROUPS = _grouped(
    {
        FieldGroup.ACTS: _ACTS.split(),
        FieldGroup.CLOUD_ONLY: _CLOUD_ONLY.split(),
        FieldGroup.DEPRECATED: _DEPRECATED.split(),
        FieldGroup.REFUSED: REFUSED_ADVICE,
    }
)

# The value of a refused field that asks for nothing, besides null and empty: dstack's default, else false.
REFUSED_DEFAULTS = {"single_branch": True}

_WARNINGS = {
    FieldGroup.CLOUD_ONLY: "ignored on-prem (cloud-only)",
    FieldGroup.DEPRECATED: "ignored (deprecated in dstack, no effect)",
}
_SUGGESTION_NOTES = {
    FieldGroup.CLOUD_ONLY: " (a cloud-only field: accepted, but ignored on-prem)",
    FieldGroup.DEPRECATED: " (deprecated in dstack: accepted, but ignored)",
    FieldGroup.REFUSED: " (not supported yet)",
}
_RESOURCE_KEYS = ("gpu", "cpu", "memory", "disk", "shm_size")
_OTHER_KINDS = {
    "dev-environment": "ide version init inactivity_duration",
}


def warnings(keys: Iterable[str]) -> tuple[str, ...]:
    """One line per group of fields that are accepted without effect, naming them in file order."""
    lines = []
    for group, label in _WARNINGS.items():
        names = [key for key in keys if TASK_FIELD_GROUPS.get(key) is group]
        if names:
            lines.append(f"{label}: {', '.join(names)}")
    return tuple(lines)


def unknown_field_message(key: str) -> str:
    """Why a top-level `key` is not a task field, with the closest field when one is near; a suggestion of
    a field without effect says so, so that a typo never leads to a field that silently does nothing."""
    if key in _RESOURCE_KEYS:
        return f"unknown field; {key} belongs under resources (resources: {{{key}: ...}})"
    if key in _OTHER_KINDS["dev-environment"].split():
        return f"unknown field; {key} is for type: dev-environment"
    for kind, names in _OTHER_KINDS.items():
        if key in names.split():
            return f"unknown field; {key} belongs to dstack's {kind} configurations, gpuctl runs tasks"
    matches = difflib.get_close_matches(key, TASK_FIELD_GROUPS, n=1)
    if not matches:
        return "unknown field"
    note = _SUGGESTION_NOTES.get(TASK_FIELD_GROUPS[matches[0]], "")
    return f"unknown field; did you mean {matches[0]!r}?{note}"

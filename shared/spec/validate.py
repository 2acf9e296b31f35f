"""`validate_spec`: every rule of a spec, for one decoded from JSON as for one parsed from YAML, and the
rules that tie fields together."""

from __future__ import annotations

from collections.abc import Callable

import msgspec

from shared.spec.checks import (
    _check_commands,
    _check_env,
    _check_files_archive,
    _check_fleets,
    _check_groups,
    _check_image,
    _check_lost_after,
    _check_max_duration,
    _check_name,
    _check_node_refs,
    _check_nodes,
    _check_priority,
    _check_python,
    _check_registry_auth,
    _check_repos,
    _check_resources,
    _check_retry,
    _check_schedule,
    _check_shell,
    _check_startup_order,
    _check_stop_criteria,
    _check_stop_duration,
    _check_type,
    _check_volumes,
    _check_working_dir,
)
from shared.spec.dev_env import check_dev, is_dev
from shared.spec.limits import REDACTED
from shared.spec.model import Problems, SpecError, TaskSpec
from shared.spec.ports import _check_ports
from shared.spec.service import check_service

NO_WORK = "a task without an image needs at least one command"
PYTHON_WITH_IMAGE = "python and image cannot be used together: python picks the image; drop one of them"
ROOT_FILES_NEED_IMAGE = "an absolute path needs a container (image:); a plain process can only take paths in its working directory"


def validate_spec(spec: TaskSpec) -> TaskSpec:
    """Check a `TaskSpec` decoded from JSON (types already checked by msgspec) against the rules `parse_spec`
    enforces; returns it normalized (a GPU request for exactly 0 GPUs becomes `gpu=None`).

    Raises `SpecError` naming the field, without a line, carrying every problem found (`SpecError.errors`).
    """
    problems = Problems()
    for check in _checks(spec):
        with problems.collect():
            check()
    problems.raise_any()
    gpu = spec.resources.gpu
    if gpu is not None and gpu.count.max == 0:
        return msgspec.structs.replace(spec, resources=msgspec.structs.replace(spec.resources, gpu=None))
    return spec


def redacted(spec: TaskSpec) -> TaskSpec:
    """`spec` as users may see it: the registry password hidden."""
    if spec.registry_auth is None:
        return spec
    return msgspec.structs.replace(
        spec, registry_auth=msgspec.structs.replace(spec.registry_auth, password=REDACTED)
    )


def _checks(spec: TaskSpec) -> list[Callable[[], None]]:
    """Each rule as a thunk, so that one failing does not hide the others."""
    optional: list[tuple[str | None, Callable[[str], None]]] = [
        (spec.name, _check_name),
        (spec.image, _check_image),
        (spec.working_dir, _check_working_dir),
        (spec.shell, _check_shell),
        (spec.python, _check_python),
    ]
    return [
        lambda: _check_type(spec.type),
        *(lambda value=value, check=check: check(value) for value, check in optional if value is not None),
        lambda: _check_commands(spec.commands),
        lambda: _check_env(spec.env),
        lambda: _check_resources(spec.resources),
        lambda: _check_nodes(spec.nodes),
        lambda: _check_volumes(spec.volumes),
        lambda: _check_max_duration(spec.max_duration_s),
        lambda: _check_priority(spec.priority),
        lambda: _check_fleets(spec.fleets),
        lambda: _check_stop_duration(spec.stop_duration_s),
        lambda: _check_files_archive(spec.files_archive),
        lambda: _check_files_archive(spec.root_files_archive),
        lambda: _check_registry_auth(spec.registry_auth, spec.image),
        lambda: _check_repos(spec.repos),
        lambda: _check_retry(spec.retry),
        lambda: _check_lost_after(spec.lost_after_s),
        lambda: _check_schedule(spec.schedule),
        lambda: _check_ports(spec.ports),
        lambda: check_service(spec.type, spec.service, spec.nodes, spec.schedule is not None),
        lambda: _check_groups(spec.groups, spec.nodes, spec.commands, spec.image),
        lambda: _check_node_refs(spec.commands, spec.groups, spec.nodes),
        lambda: _check_startup_order(spec.startup_order),
        lambda: _check_stop_criteria(spec.stop_criteria),
        lambda: _check_work(spec.commands or spec.groups or is_dev(spec), spec.image),
        lambda: check_dev(spec),
        lambda: _check_python_without_image(spec.python, spec.image),
        lambda: _check_root_files(spec.root_files_archive is not None, spec.image, spec.python),
    ]


def _check_work(commands: object, image: str | None) -> None:
    """Something to run: commands (or groups, which have their own, or a dev environment, which stays up),
    or an image's own entrypoint."""
    if not commands and image is None:
        raise SpecError("commands", f"missing; {NO_WORK}")


def _check_python_without_image(python: str | None, image: str | None) -> None:
    if python is not None and image is not None:
        raise SpecError("python", PYTHON_WITH_IMAGE)


def _check_root_files(has_root_files: bool, image: str | None, python: str | None) -> None:
    """Files at absolute paths go into a container: an image, or the one `python` picks."""
    if has_root_files and image is None and python is None:
        raise SpecError("files", ROOT_FILES_NEED_IMAGE)

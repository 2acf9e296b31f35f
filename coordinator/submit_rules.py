"""What the coordinator adds to a spec at submit, beyond the spec's own checks: dstack's `python:` becomes an
image (from the coordinator's `python_image` setting), and what only a container can do is refused for a
plain-process job before it could ever reach an agent. Pure: a spec in, a spec out or a SpecError.
"""

from __future__ import annotations

import re

import msgspec

from shared.spec import SpecError, TaskSpec

DEFAULT_PYTHON_IMAGE = "python:{version}-slim"  # `{version}` is the job's `python:` ("3.11")
_PYTHON_VERSION_RE = re.compile(r"3(\.\d{1,2}){0,2}", re.ASCII)


def python_image_for(template: str, version: str) -> str:
    """The image a `python: VERSION` job runs in. Plain replacement, not str.format: other braces in the
    template stay as they are."""
    return template.replace("{version}", version)


def apply_submit_rules(spec: TaskSpec, python_image: str = DEFAULT_PYTHON_IMAGE) -> TaskSpec:
    """`spec` with its image set from `python` (which stays, for display). Raises SpecError naming the field
    for `python` with `image`, and for a job without an image that has no commands or has files at
    absolute paths (both need a container)."""
    if spec.python is not None:
        if spec.image is not None:
            raise SpecError("python", "give either image or python, not both (python picks the image)")
        if not _PYTHON_VERSION_RE.fullmatch(spec.python):
            raise SpecError("python", f"expected a Python version like 3.11, got {spec.python!r}")
        spec = msgspec.structs.replace(spec, image=python_image_for(python_image, spec.python))
    if spec.image is None:
        if not spec.commands:
            raise SpecError("commands", "a job without an image needs at least one command")
        if spec.root_files_archive is not None:
            raise SpecError("files", "an absolute path needs a container (image:)")
    return spec


def archive_ids(spec: TaskSpec) -> tuple[str, ...]:
    """The uploaded archives a job needs: its working-directory files and its absolute-path files."""
    return tuple(a for a in (spec.files_archive, spec.root_files_archive) if a is not None)

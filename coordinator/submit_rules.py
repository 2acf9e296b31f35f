"""What the coordinator adds to a spec at submit, beyond the spec's own checks: dstack's `python:` becomes an
image (from the coordinator's `python_image` setting). What only a container can do is refused for a
plain-process job by `validate_spec`, before it could ever reach an agent. Pure.
"""

from __future__ import annotations

import msgspec

from shared.spec import TaskSpec

DEFAULT_PYTHON_IMAGE = "python:{version}-slim"  # `{version}` is the job's `python:` ("3.11")


def python_image_for(template: str, version: str) -> str:
    """The image a `python: VERSION` job runs in. Plain replacement, not str.format: other braces in the
    template stay as they are."""
    return template.replace("{version}", version)


def apply_submit_rules(spec: TaskSpec, python_image: str = DEFAULT_PYTHON_IMAGE) -> TaskSpec:
    """`spec`, already through `validate_spec` (which refuses `python` with `image`, a bad version, and a
    job without an image that has no commands or has files at absolute paths), with its image set from
    `python`, which stays for display."""
    if spec.python is None:
        return spec
    return msgspec.structs.replace(spec, image=python_image_for(python_image, spec.python))


def archive_ids(spec: TaskSpec) -> tuple[str, ...]:
    """The uploaded archives a job needs: its working-directory files and its absolute-path files."""
    return tuple(a for a in (spec.files_archive, spec.root_files_archive) if a is not None)

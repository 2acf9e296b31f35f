"""dstack's dev environments (`type: dev-environment`): a job that runs its `init` commands, then stays up
for people to work in over ssh (`gpuctl ssh`, VS Code's Remote-SSH), until stopped, or idle for its
`inactivity_duration`.

Their own fields: `ide` (absent, or `vscode`: Remote-SSH installs its own server over ssh, so nothing is
pre-installed; another IDE is refused), `version` (the IDE's; accepted, and ignored with a warning), `init`
(the job's commands) and `inactivity_duration` (how long with no ssh session or exec before the job is
stopped; `off` by default). A dev environment has `init`, not `commands`, and one node, as in dstack.
"""

from __future__ import annotations

import yaml

from shared.spec.checks import _check_commands, _check_text
from shared.spec.limits import MAX_COMMAND_BYTES, MAX_DURATION_S
from shared.spec.model import SpecError, TaskSpec
from shared.spec.nodes import _checked, _Parser, _quote, _text
from shared.spec.values import _parse_max_duration, _parse_text_list

DEV_ENVIRONMENT = "dev-environment"
IDES = ("vscode",)
DEV_FIELDS = ("ide", "version", "init", "inactivity_duration")
VERSION_IGNORED = "ignored: version (VS Code's Remote-SSH installs its own server over ssh)"
USE_INIT = "a dev-environment runs init, then stays up; put these commands in init"
# The job script's last command: the job stays up, in the background of its own shell, until stopped
STAY_UP = "while :; do sleep 3600; done"


def is_dev(spec: TaskSpec) -> bool:
    return spec.type == DEV_ENVIRONMENT


def job_commands(spec: TaskSpec) -> tuple[str, ...]:
    """What the job runs: a task's commands; a dev environment's `init`, then staying up. Pure."""
    return (*spec.commands, STAY_UP) if is_dev(spec) else spec.commands


def dev_parsers() -> dict[str, tuple[str | None, _Parser]]:
    """YAML key -> (TaskSpec field, or None for one without effect; parser), for a dev environment's own
    fields."""
    return {
        "ide": ("ide", _checked(_text, check_ide)),
        "version": (None, _text),
        "init": ("commands", _parse_init),
        "inactivity_duration": ("inactivity_duration_s", _checked(_parse_max_duration, check_inactivity)),
    }


def _parse_init(node: yaml.Node, path: str) -> tuple[str, ...]:
    def check_item(index: int, text: str) -> None:
        _check_text(f"init[{index}]", text, MAX_COMMAND_BYTES)

    return _parse_text_list(node, path, check_item, _check_commands)


def check_ide(ide: str) -> None:
    if ide not in IDES:
        raise SpecError("ide", f"only vscode (or no ide: ssh only) is supported, got {_quote(ide)}")


def check_inactivity(seconds: int | None) -> None:
    if seconds is not None and not 1 <= seconds <= MAX_DURATION_S:
        raise SpecError("inactivity_duration", f"must be between 1s and 10 years, or off, got {seconds}s")


def check_dev(spec: TaskSpec) -> None:
    """The rules of a dev environment's fields, and that a task has none of them."""
    if not is_dev(spec):
        for field, value in (("ide", spec.ide), ("inactivity_duration", spec.inactivity_duration_s)):
            if value is not None:
                raise SpecError(field, "only for type: dev-environment")
        return
    if spec.ide is not None:
        check_ide(spec.ide)
    check_inactivity(spec.inactivity_duration_s)
    if spec.nodes != 1 or spec.groups:
        raise SpecError("nodes", f"a dev-environment runs on one node, got {spec.nodes}")

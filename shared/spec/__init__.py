"""The task spec: the YAML a user submits, compatible with dstack's task files.

`parse_spec` turns YAML text into a `TaskSpec`; every error is a `SpecError` whose one-line message names the
field and the YAML line. The structs are also the wire form of a spec (the CLI parses, the coordinator
re-validates the decoded JSON with `validate_spec`).

The modules follow the grammar: `model` (the structs and `SpecError`), `document` (the file and its top-level
fields), `resources` (resources and the GPU grammar), `inputs` (env, files, registry_auth), `checks` (the rules
both the parser and `validate_spec` apply), with `nodes`, `limits` and `gpu_names` beneath them.

Importing the package loads none of them: a name is loaded from its module when it is first asked for, so
what reads only the structs (the wire models, the CLI's `ps`) loads `model` and not the YAML grammar, whose
modules and PyYAML cost a CLI call ~30 ms.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from shared.spec.document import parse_spec, parse_task
    from shared.spec.fields import TASK_FIELD_GROUPS, FieldGroup
    from shared.spec.limits import (
        ENV_KEY_RE,
        GPU_NAME_RE,
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
        MIN_PRIORITY,
        NAME_RE,
        REDACTED,
        WORKFLOW_DIR,
    )
    from shared.spec.model import (
        RETRY_EVENTS,
        STARTUP_ORDERS,
        STOP_CRITERIA,
        GpuRequest,
        NodeGroup,
        PortMapping,
        Range,
        RegistryAuth,
        Repo,
        Resources,
        RetryPolicy,
        Schedule,
        ServiceSpec,
        SpecError,
        TaskFile,
        TaskSpec,
    )
    from shared.spec.resources import parse_gpu
    from shared.spec.validate import ROOT_FILES_NEED_IMAGE, redacted, validate_spec

__all__ = [
    "ENV_KEY_RE",
    "GPU_NAME_RE",
    "GPU_VENDORS",
    "TASK_FIELD_GROUPS",
    "FieldGroup",
    "MAX_COMMAND_BYTES",
    "MAX_COMPUTE_CAPABILITY",
    "MAX_CREDENTIAL_BYTES",
    "MAX_DURATION_S",
    "MAX_ENV_ENTRIES",
    "MAX_ENV_VALUE_BYTES",
    "MAX_GPU_NAMES",
    "MAX_IMAGE_CHARS",
    "MAX_LIST_ITEMS",
    "MAX_NODES",
    "MAX_PATH_BYTES",
    "MAX_PRIORITY",
    "MAX_RANGE_VALUE",
    "MAX_STOP_DURATION_S",
    "MIN_PRIORITY",
    "NAME_RE",
    "REDACTED",
    "RETRY_EVENTS",
    "STARTUP_ORDERS",
    "STOP_CRITERIA",
    "ROOT_FILES_NEED_IMAGE",
    "WORKFLOW_DIR",
    "GpuRequest",
    "NodeGroup",
    "Range",
    "RegistryAuth",
    "Repo",
    "Resources",
    "PortMapping",
    "RetryPolicy",
    "Schedule",
    "ServiceSpec",
    "SpecError",
    "TaskFile",
    "TaskSpec",
    "parse_gpu",
    "parse_spec",
    "parse_task",
    "redacted",
    "validate_spec",
]

# Where __getattr__ looks for a name of __all__, the light modules first.
_MODULES = ("model", "limits", "fields", "resources", "validate", "document")


def __getattr__(name: str) -> object:
    if name in __all__:
        for module_name in _MODULES:
            module = importlib.import_module(f"{__name__}.{module_name}")
            if hasattr(module, name):
                value = getattr(module, name)
                globals()[name] = value  # the next lookup finds it without __getattr__
                return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

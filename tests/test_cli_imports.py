"""The CLI's import rule: it starts fast and stays a client. Every module of cli/ imports only cli/, shared/
and libraries, except cli/dev.py, the composition root of `gpuctl dev`, which starts a coordinator and an
agent in-process. And `import cli.main` loads no coordinator, agent, Docker or aiohttp module."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUR_PARTS = {"agent", "cli", "coordinator", "shared", "tests"}
ALLOWED_PARTS = {"cli", "shared"}
COMPOSITION_ROOTS = {"dev.py"}


def imported_modules(source: str) -> set[str]:
    """Every module an `import` or `from ... import` names, at any depth of the file (lazy imports too)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_cli_modules_import_only_cli_and_shared() -> None:
    offenders = []
    for path in sorted((ROOT / "cli").glob("*.py")):
        if path.name in COMPOSITION_ROOTS:
            continue
        for module in imported_modules(path.read_text()):
            part = module.split(".")[0]
            if part in OUR_PARTS and part not in ALLOWED_PARTS:
                offenders.append(f"cli/{path.name} imports {module}")
    assert offenders == []


def test_the_rule_sees_lazy_imports() -> None:
    assert "coordinator.scheduler" in imported_modules("def f():\n    from coordinator.scheduler import x\n")


def test_importing_the_cli_loads_no_server_agent_or_docker_module() -> None:
    probe = "import json, sys; import cli.main; print(json.dumps(sorted(sys.modules)))"
    run = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True, timeout=60
    )
    loaded = json.loads(run.stdout)
    heavy = [m for m in loaded if m.split(".")[0] in ("coordinator", "agent", "docker", "aiohttp")]
    assert heavy == []

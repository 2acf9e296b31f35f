"""The CLI's import rule: it starts fast and stays a client. Every module of cli/ imports only cli/, shared/
and libraries, except cli/dev.py, the composition root of `gpuctl dev`, which starts a coordinator and an
agent in-process. And `import cli.main` loads no coordinator, agent, Docker or aiohttp module; each command
run loads only what it needs."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

from tests.test_cli import ROOT, dev

__all__ = ["dev"]
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


def test_every_name_of_the_spec_package_is_found_in_its_modules() -> None:
    """shared.spec loads a name's module on first use (so that `ps` loads no YAML grammar): each name it
    lists must live in one of the modules it looks in."""
    import shared.spec

    assert [name for name in shared.spec.__all__ if getattr(shared.spec, name, None) is None] == []


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


# What each command must not load: a user pays for every import on every call (issue 13: `submit -d` and
# `ps` under 150 ms, Python's start-up included). The real command runs and reports sys.modules as it exits,
# so a top-level import put back anywhere on the path fails here. (-X importtime would miss the modules
# loaded by importlib.import_module: the lazy commands and shared.spec's names.)
NEVER = {"coordinator", "agent", "docker", "aiohttp", "cryptography"}
REPORT = "modules loaded:"
PROBE = (
    "import atexit, sys; "
    f"atexit.register(lambda: print({REPORT!r}, *sorted(sys.modules), file=sys.stderr)); "
    "from cli.main import main; main()"
)


def loaded_by(env: dict[str, str], *args: str) -> set[str]:
    """Every module loaded by the time a real `gpuctl ARGS` exits."""
    run = subprocess.run(
        [sys.executable, "-c", PROBE, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr[-2000:]
    (report,) = [line for line in run.stderr.splitlines() if line.startswith(REPORT)]
    return set(report.removeprefix(REPORT).split())


def packages(modules: set[str]) -> set[str]:
    return {m.split(".")[0] for m in modules}


def test_version_loads_click_and_nothing_that_reaches_a_coordinator() -> None:
    loaded = loaded_by(dict(os.environ), "--version")

    assert packages(loaded) & (NEVER | {"rich", "yaml", "msgspec", "shared", "http", "ssl"}) == set()
    assert {m for m in loaded if m.startswith("cli.")} == {"cli.main", "cli.shell"}


def test_queue_loads_no_yaml_or_cryptography_and_rich_for_people_only(dev: dict[str, str]) -> None:
    table, as_json = loaded_by(dev, "queue"), loaded_by(dev, "queue", "--json")

    assert "rich.table" in table and "rich" not in packages(as_json)
    for loaded in (table, as_json):
        assert packages(loaded) & (NEVER | {"yaml"}) == set()


def test_ps_loads_no_yaml_spec_grammar_or_cryptography(dev: dict[str, str]) -> None:
    table, as_json = loaded_by(dev, "ps"), loaded_by(dev, "ps", "--json")

    assert "rich.table" in table and "rich" not in packages(as_json)  # rich for people only
    for loaded in (table, as_json):
        assert packages(loaded) & (NEVER | {"yaml"}) == set()
        assert "shared.spec.model" in loaded and "shared.spec.document" not in loaded


def test_submit_detached_loads_no_rich_or_cryptography(dev: dict[str, str], tmp_path: Path) -> None:
    spec = tmp_path / "job.yaml"
    spec.write_text("commands: ['true']\n")

    loaded = loaded_by(dev, "submit", "-d", "-f", str(spec))

    assert "shared.spec.document" in loaded  # it reads the file
    assert packages(loaded) & (NEVER | {"rich"}) == set()
    assert "cli.files" not in loaded  # nothing to pack

"""`files:`: the spec's form, the CLI's packing, the agent's safe unpacking (pure and local, no server)."""

from __future__ import annotations

import msgspec
import pytest

from shared.spec import SpecError, TaskSpec, parse_task, validate_spec


def files_of(text: str) -> tuple[tuple[str, str], ...]:
    return parse_task("commands: [x]\n" + text, source="t.yaml").files


def test_files_take_dstack_forms_and_land_relative_to_the_working_dir() -> None:
    assert files_of("files: [src/, train.py]") == (("src/", "src"), ("train.py", "train.py"))
    assert files_of("files: [.:/workflow]") == ((".", "."),)
    assert files_of("files: [../data, /etc/hosts, ~/.ssh/id]") == (
        ("../data", "data"),
        ("/etc/hosts", "hosts"),
        ("~/.ssh/id", "id"),
    )
    assert files_of("files:\n  - local_path: conf/a.yaml\n    path: cfg/a.yaml\n") == (
        ("conf/a.yaml", "cfg/a.yaml"),
    )
    assert files_of("files: train.py") == (("train.py", "train.py"),)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("files: [a:/root/x]", "t.yaml:2: files[0]: the path must be relative to the working directory"),
        ("files: [a:../b]", "t.yaml:2: files[0]: the path must stay inside the working directory"),
        ("files:\n  - {path: x}", "t.yaml:3: files[0]: expected a mapping with local_path"),
        ("files:\n  - {local_path: a, dest: x}", "t.yaml:3: files[0].dest: unknown field"),
        ("files: {a: b}", "t.yaml:2: files: expected a list, got a mapping"),
        ("files: ['']", "t.yaml:2: files[0]: must not be empty"),
    ],
)
def test_bad_files_are_one_line_errors_naming_the_field_and_line(text: str, message: str) -> None:
    with pytest.raises(SpecError) as caught:
        files_of(text)
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)


def test_the_wire_spec_carries_an_archive_id_and_never_local_paths() -> None:
    task = parse_task("commands: [x]\nfiles: [/home/me/secret.txt]\n")
    wire = msgspec.json.encode(task.spec)
    assert b"secret" not in wire and b"files_archive" in wire
    old = msgspec.json.decode(b'{"commands": ["x"]}', type=TaskSpec)  # what older code sends still decodes
    assert old.files_archive is None
    good = "ab" * 32
    assert validate_spec(TaskSpec(commands=("x",), files_archive=good)).files_archive == good
    with pytest.raises(SpecError, match="^spec: files: the archive id must be 64 lowercase hex"):
        validate_spec(TaskSpec(commands=("x",), files_archive="../../etc/passwd"))

"""`files:`: the spec's form, the CLI's packing, the agent's safe unpacking (pure and local, no server)."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import msgspec
import pytest

from agent.files import FilesError, unpack
from cli.files import pack
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
        ("files: [a:/root/x]", "t.yaml:2: files: an absolute path needs a container (image:)"),
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


# --- the CLI packs ---------------------------------------------------------------------------------------


def names_in(archive: bytes) -> set[str]:
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        return {m.name for m in tar.getmembers()}


def test_a_directory_is_packed_without_git_and_what_its_gitignore_names(tmp_path: Path) -> None:
    (tmp_path / ".gitignore").write_text("# build output\n*.pt\ncheckpoints/\n/build\n")
    for name in ("train.py", "model.pt", "src/a.py", "src/b.pt", "checkpoints/x", "build/y", ".git/HEAD"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(name)
    assert names_in(pack([(".", ".")], tmp_path)) == {".", ".gitignore", "train.py", "src", "src/a.py"}
    assert names_in(pack([("src", "code"), ("train.py", "t.py")], tmp_path)) == {
        "code",
        "code/a.py",
        "code/b.pt",
        "t.py",
    }


def test_packing_names_files_in_its_one_line_errors(tmp_path: Path) -> None:
    (tmp_path / "big").write_bytes(os.urandom(300_000))
    with pytest.raises(SpecError, match=r"^submit: files: the archive is over 0 MiB; list fewer files"):
        pack([("big", "big")], tmp_path, max_bytes=100_000)
    with pytest.raises(SpecError, match=r"^submit: files: no such file or directory: '.*missing'$"):
        pack([("missing", "missing")], tmp_path)


# --- the agent unpacks, safely -----------------------------------------------------------------------------


def evil_archive(path: Path, member: tarfile.TarInfo, data: bytes = b"pwned") -> Path:
    with tarfile.open(path, "w:gz") as tar:
        member.size = len(data) if member.isfile() else 0
        tar.addfile(member, io.BytesIO(data) if member.isfile() else None)
    return path


@pytest.mark.parametrize(
    "member",
    [
        tarfile.TarInfo("../evil"),
        tarfile.TarInfo("a/../../evil"),
        tarfile.TarInfo("/tmp/gpuctl-evil-absolute"),
    ],
    ids=["dotdot", "nested-dotdot", "absolute"],
)
def test_an_archive_cannot_write_outside_the_working_dir(tmp_path: Path, member: tarfile.TarInfo) -> None:
    work = tmp_path / "alloc" / "work"
    archive = evil_archive(tmp_path / "evil.tar.gz", member)
    try:
        unpack(archive, work)
    except FilesError as exc:
        assert str(exc).startswith("files: cannot unpack the archive: ")
    assert not (tmp_path / "alloc" / "evil").exists() and not (tmp_path / "evil").exists()
    assert not Path("/tmp/gpuctl-evil-absolute").exists()  # "data" strips the leading / and keeps it inside
    landed = [p for p in tmp_path.rglob("*") if p.is_file() and p.name != "evil.tar.gz"]
    assert all(work in p.parents for p in landed)


def test_links_that_escape_are_refused(tmp_path: Path) -> None:
    link = tarfile.TarInfo("passwd")
    link.type, link.linkname = tarfile.SYMTYPE, "../../../../etc/passwd"
    with pytest.raises(FilesError, match="^files: cannot unpack the archive: "):
        unpack(evil_archive(tmp_path / "link.tar.gz", link), tmp_path / "work")
    assert not (tmp_path / "work" / "passwd").is_symlink()


def test_an_archive_that_unpacks_too_large_is_refused_before_writing(tmp_path: Path) -> None:
    archive = evil_archive(tmp_path / "bomb.tar.gz", tarfile.TarInfo("zeros"), bytes(10_000))
    with pytest.raises(FilesError, match="^files: the archive unpacks to 10000 bytes, over 1000$"):
        unpack(archive, tmp_path / "work", max_bytes=1000)
    assert not (tmp_path / "work" / "zeros").exists()

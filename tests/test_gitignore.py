"""cli/gitignore.py: git's .gitignore rules, case by case and against the real git; and pack() walking
with them."""

from __future__ import annotations

import io
import os
import posixpath
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cli.files import pack
from cli.gitignore import ignored, parse
from tests.real_parts import part_missing

# --- the matcher, case by case -----------------------------------------------------------------------------


def verdict(gitignores: dict[str, str], path: str, is_dir: bool = False) -> bool:
    """Whether `path` is ignored, given .gitignore texts by folder ('' for the top): the rule sets of the
    folders containing `path`, outermost first, as the walk passes them."""
    folders = sorted(
        (f for f in gitignores if f == "" or path.startswith(f + "/")), key=lambda f: f.count("/")
    )
    return ignored(path, is_dir, [parse(gitignores[f].encode(), f) for f in folders])


FILE, DIR = False, True

CASES = [
    # lines: comments, blanks, escapes, trailing spaces
    ("# a\n", "# a", FILE, False),
    ("\\#a\n", "#a", FILE, True),
    ("\\!a\n", "!a", FILE, True),
    ("!a\n", "!a", FILE, False),
    ("\n   \n\n", "a", FILE, False),
    ("a  \n", "a", FILE, True),
    ("a\\ \n", "a ", FILE, True),
    ("a\\ \n", "a", FILE, False),
    ("a\\  \n", "a ", FILE, True),
    ("a\\\n", "a\\", FILE, False),  # a trailing lone backslash never matches
    ("a\r\nb", "b", FILE, True),  # CRLF, and a last line without a newline
    ("\ufeffa\n", "a", FILE, True),  # a UTF-8 byte order mark
    (" a\n", "a", FILE, False),  # leading spaces are kept
    # negation: the last matching line decides
    ("*.log\n!keep.log\n", "keep.log", FILE, False),
    ("*.log\n!keep.log\n", "x.log", FILE, True),
    ("!keep.log\n*.log\n", "keep.log", FILE, True),
    ("d/\n!d/\n", "d", DIR, False),
    # a trailing '/' matches folders only
    ("build/\n", "build", DIR, True),
    ("build/\n", "build", FILE, False),
    ("build/\n", "src/build", DIR, True),
    ("a/b/\n", "a/b", DIR, True),
    ("a/b/\n", "a/b", FILE, False),
    # a '/' at the start or in the middle anchors; none matches at any depth
    ("a\n", "x/y/a", FILE, True),
    ("/a\n", "a", FILE, True),
    ("/a\n", "x/a", FILE, False),
    ("a/b\n", "a/b", FILE, True),
    ("a/b\n", "x/a/b", FILE, False),
    ("//a\n", "a", FILE, False),  # only one leading '/' is dropped
    # *, ?, [...] and escapes; none crosses a '/'
    ("*.py\n", "x/y.py", FILE, True),
    ("a/*.py\n", "a/b.py", FILE, True),
    ("a/*.py\n", "a/b/c.py", FILE, False),
    ("a?c\n", "abc", FILE, True),
    ("a?c\n", "ac", FILE, False),
    ("a?b/c\n", "a/b/c", FILE, False),
    ("?\n", "é", FILE, False),  # '?' is one byte, and é is two in UTF-8
    ("??\n", "é", FILE, True),
    ("a\\*\n", "a*", FILE, True),
    ("a\\*\n", "ab", FILE, False),
    ("[ab].txt\n", "b.txt", FILE, True),
    ("[ab].txt\n", "c.txt", FILE, False),
    ("[!ab].txt\n", "c.txt", FILE, True),
    ("[^ab].txt\n", "a.txt", FILE, False),
    ("[a-c]x\n", "bx", FILE, True),
    ("[a-c]x\n", "dx", FILE, False),
    ("[]]x\n", "]x", FILE, True),
    ("[!]]x\n", "]x", FILE, False),
    ("[a\\]]x\n", "]x", FILE, True),
    ("[[:digit:]]x\n", "7x", FILE, True),
    ("[[:digit:]]x\n", "ax", FILE, False),
    ("[[:space:]]x\n", " x", FILE, True),
    ("[[:]x\n", ":x", FILE, True),  # no ':]' closes it: a plain '['
    ("[[:nope:]]x\n", "nx", FILE, False),  # an unknown class never matches
    ("[ab\n", "[ab", FILE, False),  # an unclosed class never matches
    ("a[/]b\n", "a/b", FILE, False),
    ("a[!x]b\n", "a/b", FILE, False),
    # ** as a whole segment spans folders; otherwise it is one *
    ("**/a\n", "a", FILE, True),
    ("**/a\n", "x/y/a", FILE, True),
    ("**/a/b\n", "x/a/b", FILE, True),
    ("**/a/b\n", "x/a/c/b", FILE, False),
    ("a/**\n", "a/x/y", FILE, True),
    ("a/**\n", "a", DIR, False),
    ("a/**/b\n", "a/b", FILE, True),
    ("a/**/b\n", "a/x/y/b", FILE, True),
    ("a/**/b\n", "x/a/b", FILE, False),
    ("a/**/\n", "a/x/y", DIR, True),
    ("a/**/\n", "a/x/y", FILE, False),
    ("x/**b\n", "x/a/b", FILE, False),
    ("x/**b\n", "x/ab", FILE, True),
    ("x/c/a**b\n", "x/c/az/yb", FILE, False),
    ("x/a**/y\n", "x/ab/c/y", FILE, True),  # git's quirk: its literal start is matched apart
    ("x/a**/y\n", "x/ay", FILE, True),
    ("x/?a**/y\n", "x/zab/c/y", FILE, False),  # ... but only right after it
]


@pytest.mark.parametrize(("text", "path", "is_dir", "expected"), CASES)
def test_one_gitignore(text: str, path: str, is_dir: bool, expected: bool) -> None:
    assert verdict({"": text}, path, is_dir) is expected


@pytest.mark.parametrize(
    ("gitignores", "path", "expected"),
    [
        ({"": "*.log\n", "sub": "!keep.log\n"}, "sub/keep.log", False),
        ({"": "*.log\n", "sub": "!keep.log\n"}, "keep.log", True),
        ({"": "*.log\n", "sub": "!keep.log\n"}, "sub/deeper/keep.log", False),
        ({"": "!x\n", "sub": "x\n"}, "sub/x", True),
        (
            {"": "x\n", "sub": "y\n"},
            "sub/x",
            True,
        ),  # a deeper file without a match leaves it to the one above
        ({"sub": "/a\n"}, "sub/a", True),
        ({"sub": "/a\n"}, "sub/b/a", False),
        ({"sub": "b/c\n"}, "sub/b/c", True),
        ({"sub": "b/c\n"}, "b/c", False),
        ({"a": "x\n", "a/b": "!x\n"}, "a/b/x", False),
        ({"a": "!x\n", "a/b": "x\n"}, "a/b/x", True),
    ],
)
def test_nested_gitignores_apply_below_their_folder_and_the_deepest_decides(
    gitignores: dict[str, str], path: str, expected: bool
) -> None:
    assert verdict(gitignores, path) is expected


def test_rules_apply_only_below_their_folder() -> None:
    assert not ignored("a", False, [parse(b"a\n", "sub")])
    assert not ignored("subx/a", False, [parse(b"a\n", "sub")])
    assert ignored("sub/a", False, [parse(b"a\n", "sub")])


# --- pack() walks with them --------------------------------------------------------------------------------


def packed_files(root: Path) -> set[str]:
    """The regular files pack() puts in the archive of `root`, relative to it."""
    with tarfile.open(fileobj=io.BytesIO(pack([(".", ".")], root)), mode="r:gz") as tar:
        return {m.name for m in tar.getmembers() if m.isfile()}


def write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


def test_pack_applies_nested_gitignores_and_never_reincludes_below_an_ignored_folder(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            ".gitignore": "*.log\nout/\n!out/keep\n",
            "a.log": "",
            "out/keep": "",
            "src/.gitignore": "!keep.log\n/gen\n",
            "src/keep.log": "",
            "src/gen": "",
            "src/sub/gen": "",
        },
    )
    assert packed_files(tmp_path) == {".gitignore", "src/.gitignore", "src/keep.log", "src/sub/gen"}


def test_pack_treats_links_as_git_does(tmp_path: Path) -> None:
    """A link to a folder is no folder for `name/`, and a .gitignore that is a link is not followed."""
    write(tmp_path, {".gitignore": "link/\n", "real/f": "", "rules": "*\n", "sub/f": ""})
    (tmp_path / "link").symlink_to("real")
    (tmp_path / "sub" / ".gitignore").symlink_to("../rules")
    with tarfile.open(fileobj=io.BytesIO(pack([(".", ".")], tmp_path)), mode="r:gz") as tar:
        assert {m.name for m in tar.getmembers() if m.issym()} == {"link", "sub/.gitignore"}
    assert packed_files(tmp_path) == {".gitignore", "real/f", "rules", "sub/f"}


# --- against the real git ----------------------------------------------------------------------------------

NAMES = ("a", "b", "ab", "a.log", "#a", "!b", "a ")
SEGMENTS = (
    *("a", "b", "ab", "\\#a", "\\!b", "a\\ ", "a\\*"),
    *("*", "a?", "a*", "*b", "*.log", "[ab]", "[!a]*", "[^b]?", "[a-b]", "**", "a**"),
)
GIT_ENV = {
    **{k: v for k, v in os.environ.items() if not k.startswith("GIT_")},  # not a hook's GIT_DIR, say
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "GIT_CONFIG_NOSYSTEM": "1",
}


@st.composite
def patterns(draw: st.DrawFn) -> str:
    """A line from a small grammar: one to three segments joined by '/' (one most often), maybe a '/' at
    either end, maybe negated, maybe with trailing spaces."""
    count = draw(st.sampled_from([1, 1, 2, 3]))
    text = "/".join(draw(st.lists(st.sampled_from(SEGMENTS), min_size=count, max_size=count)))
    leading, trailing = draw(st.sampled_from(["", "", "/"])), draw(st.sampled_from(["", "", "/"]))
    negated, spaces = draw(st.sampled_from(["", "!"])), draw(st.sampled_from(["", "", "  "]))
    return negated + leading + text + trailing + spaces


lines = st.one_of(patterns(), st.sampled_from(["", "#a", "  "]))


@st.composite
def projects(draw: st.DrawFn) -> dict[str, bytes]:
    """A small folder: files at up to three levels from NAMES, and .gitignore files in some of its
    folders (the top more often than not), by path."""
    files: dict[str, bytes] = {}
    folders = {""}
    for parts in draw(
        st.lists(st.lists(st.sampled_from(NAMES), min_size=1, max_size=3), min_size=1, max_size=12)
    ):
        parents = ["/".join(parts[:i]) for i in range(1, len(parts))]
        path = "/".join(parts)
        if path not in folders and not any(p in files for p in parents):
            files[path] = b"x"
            folders.update(parents)
    newline = draw(st.sampled_from(["\n", "\r\n"]))
    with_rules = draw(st.lists(st.sampled_from(sorted(folders)), min_size=1, max_size=3, unique=True))
    for folder in (
        dict.fromkeys(["", *with_rules]) if draw(st.sampled_from([True, True, False])) else with_rules
    ):
        text = "".join(line + newline for line in draw(st.lists(lines, min_size=1, max_size=5)))
        files[posixpath.join(folder, ".gitignore")] = text.encode()
    return files


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One git repository for every example: `git init` costs more than the rest of one together."""
    if shutil.which("git") is None:  # scripts/test installs it: under CI its absence is a failure
        part_missing("needs git (scripts/test installs it)")
    root = tmp_path_factory.mktemp("repo")
    subprocess.run(["git", "init", "-q"], cwd=root, env=GIT_ENV, check=True)
    return root


def untracked_by_git(root: Path) -> set[str]:
    listed = subprocess.run(
        ["git", "-c", "core.excludesFile=/dev/null", "ls-files", "--others", "--exclude-standard", "-z"],
        cwd=root,
        env=GIT_ENV,
        check=True,
        capture_output=True,
    ).stdout
    return {os.fsdecode(path) for path in listed.split(b"\0") if path}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(project=projects())
def test_pack_leaves_out_what_git_ignores(repo: Path, project: dict[str, bytes]) -> None:
    """The regular files packed are those git lists as untracked and not ignored (files only: git lists
    no folders; both skip `.git`), with no ignore rules but the project's own .gitignore files."""
    for entry in repo.iterdir():
        if entry.is_dir() and entry.name != ".git":
            shutil.rmtree(entry)
        elif entry.is_file():
            entry.unlink()
    for path, content in project.items():
        (repo / path).parent.mkdir(parents=True, exist_ok=True)
        (repo / path).write_bytes(content)
    assert packed_files(repo) == untracked_by_git(repo)

"""`files:` and `repos:`: what is copied from the submitter's machine, or cloned, into a job.

A target path is relative to the working directory (an absolute one under /workflow counts as relative),
or an absolute path in the container, which only a job with a container can take (the CLI packs those into
a second archive). Local repositories are copies like `files:`; remote ones travel as `Repo`.
"""

from __future__ import annotations

import posixpath
import re
from typing import NamedTuple

import yaml

from shared.spec.checks import _check_repo, _check_text
from shared.spec.limits import MAX_LIST_ITEMS, MAX_PATH_BYTES, WORKFLOW_DIR
from shared.spec.model import Problems, Repo, SpecError
from shared.spec.nodes import _at, _fail, _fields, _is_null, _items, _line, _quote, _text

_REPO_KEYS = ("local_path", "url", "branch", "hash", "path", "if_exists")
_URL_PORT_RE = re.compile(r"\d+(/|$)")


class Copy(NamedTuple):
    """A local path to copy into the job, where it goes, and the field and line that asked for it."""

    local: str
    target: str  # relative to the working directory, or absolute (in the container)
    field: str
    line: int


def _parse_files(node: yaml.Node, path: str, problems: Problems) -> list[Copy]:
    """dstack's `files`: `local`, `local:path`, or `{local_path, path}`. Without a path, a relative local
    path lands at the same relative place and any other (absolute, `~`, `..`) at its base name."""
    copies = []
    for index, item in enumerate(_list(node, path)):
        item_path = f"{path}[{index}]"
        with problems.collect():
            if isinstance(item, yaml.MappingNode):
                fields = dict(_fields(item, item_path, ("local_path", "path")))
                if "local_path" not in fields:
                    _fail(item, item_path, "expected a mapping with local_path and optionally path")
                local = _text(fields["local_path"], f"{item_path}.local_path")
                remote = _text(fields["path"], f"{item_path}.path") if "path" in fields else None
            else:
                local, colon, after = _text(item, item_path).partition(":")
                remote = after if colon else None
            with _at(item):
                copies.append(Copy(local, _file_target(item_path, local, remote), path, _line(item)))
    return copies


def _parse_repos(node: yaml.Node, path: str, problems: Problems) -> tuple[tuple[Repo, ...], list[Copy]]:
    """dstack's `repos`: `.` or `{local_path, path}` (a local repository, copied to `path`, by default the
    working directory), a URL or `{url, branch, hash, path}` (cloned by the agent), and the string forms
    `LOCAL:PATH` and `URL:PATH`."""
    remote: list[Repo] = []
    copies = []
    for index, item in enumerate(_list(node, path)):
        item_path = f"{path}[{index}]"
        with problems.collect():
            if isinstance(item, yaml.MappingNode):
                parts = _repo_mapping(item, item_path)
            else:
                with _at(item):
                    parts = _split_repo(_text(item, item_path), item_path)
            with _at(item):
                if "url" in parts:
                    parts["path"] = _target(f"{item_path}.path", parts.get("path", "."), allow_absolute=False)
                    repo = Repo(**parts)
                    _check_repo(item_path, repo)
                    remote.append(repo)
                else:
                    target = _target(item_path, parts.get("path", "."), allow_absolute=True)
                    copies.append(Copy(parts["local_path"], target, path, _line(item)))
    return tuple(remote), copies


def _list(node: yaml.Node, path: str) -> list[yaml.Node]:
    items = _items(node, path)
    if len(items) > MAX_LIST_ITEMS:
        _fail(node, path, f"too many entries: {len(items)}, at most {MAX_LIST_ITEMS}")
    return items


def _repo_mapping(node: yaml.Node, path: str) -> dict[str, str]:
    """The non-null fields of a repo mapping, as text; exactly one of local_path and url."""
    parts = {
        key: _text(value, f"{path}.{key}")
        for key, value in _fields(node, path, _REPO_KEYS)
        if not _is_null(value)
    }
    if ("local_path" in parts) == ("url" in parts):
        _fail(node, path, "expected a mapping with one of local_path or url")
    if parts.pop("if_exists", "error") != "error":
        _fail(node, f"{path}.if_exists", "only 'error' is supported (a non-empty path fails the clone)")
    if "local_path" in parts and parts.keys() & {"branch", "hash"}:
        _fail(
            node, path, "branch and hash apply to a remote repository (url); a local one is copied as it is"
        )
    return parts


def _split_repo(text: str, path: str) -> dict[str, str]:
    """`LOCAL`, `LOCAL:PATH`, `URL` or `URL:PATH`, as dstack reads them: the text is a URL when what comes
    before its first colon has an `@` (git@host:org/repo) or what follows starts with `//` (https://...)."""
    parts = text.split(":")
    is_url = len(parts) > 1 and ("@" in parts[0] or parts[1].startswith("//"))
    if is_url:
        parts = [f"{parts[0]}:{parts[1]}", *parts[2:]]
        if parts[0].count(":") == 1 and "//" in parts[0] and len(parts) > 1 and _URL_PORT_RE.match(parts[1]):
            parts = [f"{parts[0]}:{parts[1]}", *parts[2:]]  # https://host:8443/org/repo
    if len(parts) > 2 or not all(parts):
        raise SpecError(path, f"expected LOCAL, LOCAL:PATH, URL or URL:PATH, got {_quote(text)}")
    result = {"url" if is_url else "local_path": parts[0]}
    if len(parts) == 2:
        result["path"] = parts[1]
    return result


def _file_target(path: str, local: str, remote: str | None) -> str:
    """Where `local` goes (normalized); raises SpecError without a line."""
    _check_text(path, local, MAX_PATH_BYTES, allow_empty=False)
    if remote is None:
        normal = posixpath.normpath(local)
        inside = not normal.startswith(("/", "~")) and normal != ".." and not normal.startswith("../")
        remote = normal if inside else posixpath.basename(normal.rstrip("/")) or normal
    return _target(path, remote, allow_absolute=True)


def _target(path: str, target: str, *, allow_absolute: bool) -> str:
    """`target` normalized: relative to the working directory (also when under /workflow), or absolute
    when `allow_absolute`; never above the working directory, never `/` itself."""
    _check_text(path, target, MAX_PATH_BYTES, allow_empty=False)
    normal = posixpath.normpath(target)
    if normal.startswith("//"):  # POSIX keeps two leading slashes; a container path does not need them
        normal = "/" + normal.lstrip("/")
    if normal == WORKFLOW_DIR or normal.startswith(WORKFLOW_DIR + "/"):
        normal = posixpath.relpath(normal, WORKFLOW_DIR)
    if normal.startswith("/") and not allow_absolute:
        raise SpecError(
            path,
            f"the path must be relative to the working directory (or under {WORKFLOW_DIR}), got {_quote(target)}",
        )
    if normal.startswith("/") and normal.strip("/") == "":
        raise SpecError(path, f"the path must name a folder or file below /, got {_quote(target)}")
    if normal == ".." or normal.startswith("../"):
        raise SpecError(path, f"the path must stay inside the working directory, got {_quote(target)}")
    return normal

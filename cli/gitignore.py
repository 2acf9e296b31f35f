"""`.gitignore` matching as git does it, so a packed folder leaves out what `git status` would.

Pure: `parse` compiles one `.gitignore` into a `RuleSet`; `ignored` decides whether a path (relative to the
packed folder, with '/', a file or a folder) is ignored, given the rule sets of the `.gitignore` files in
the folders that contain it. Reading files and walking folders is the caller's.

The rules are those of https://git-scm.com/docs/gitignore, checked against git's own code (dir.c,
wildmatch.c) where the page is silent:

- a line starting with `#` is a comment, and one that is blank after trimming is skipped; a trailing `\\r`
  and trailing spaces are trimmed unless the last is escaped (`\\ `); `\\#` and `\\!` start a pattern with
  a literal `#` or `!`; a UTF-8 byte order mark is skipped;
- `!` re-includes; the last matching line of a file decides, and the deepest file with a matching line
  decides over the files above it;
- a trailing `/` matches folders only; a `/` at the start or in the middle anchors the pattern to its
  file's folder, otherwise it matches a name at any depth below;
- `*`, `?` and `[...]` (`!` or `^` negates; ranges; `[:digit:]` and the other POSIX names) never match
  `/`; `**` as a whole segment spans folders (`**/a`, `a/**`, `a/**/b`); other runs of `*` act as one;
- a line that can never match (an unclosed `[`, a trailing lone backslash) is dropped, as git drops it.

Two quirks of git's are kept, since matching git is the point. Patterns compare bytes, not characters
(each byte is handled as one latin-1 character here), so `?` matches one byte of a UTF-8 name. And git
compares an anchored pattern's literal start separately from the rest, so a `**` right after it counts as
a whole segment: `a/b**/c` matches `a/bx/y/c` and `a/bc`.

Matching is case-sensitive, as git's is unless `core.ignoreCase` is set.
"""

from __future__ import annotations

import os
import re
import string
from collections.abc import Sequence
from dataclasses import dataclass

_GLOB_SPECIAL = "*?[\\"
_BYTES = frozenset(map(chr, range(256)))
_NAMED_CLASSES = {
    "alnum": string.digits + string.ascii_letters,
    "alpha": string.ascii_letters,
    "blank": " \t",
    "cntrl": "".join(map(chr, range(0x20))) + "\x7f",
    "digit": string.digits,
    "graph": "".join(map(chr, range(0x21, 0x7F))),
    "lower": string.ascii_lowercase,
    "print": "".join(map(chr, range(0x20, 0x7F))),
    "punct": string.punctuation,
    "space": " \t\n\r",
    "upper": string.ascii_uppercase,
    "xdigit": string.hexdigits,
}


class _NeverMatches(Exception):
    """A pattern git would accept but can never match, so its line is dropped."""


@dataclass(frozen=True)
class Rule:
    """One pattern line. `regex` matches bytewise text (see the module docstring): the last part of a
    path when `basename_only`, else the whole path below the rule's folder."""

    regex: re.Pattern[str]
    negated: bool
    dir_only: bool
    basename_only: bool

    def matches(self, below: str, is_dir: bool) -> bool:
        if self.dir_only and not is_dir:
            return False
        subject = below.rpartition("/")[2] if self.basename_only else below
        return self.regex.fullmatch(subject) is not None


@dataclass(frozen=True)
class RuleSet:
    """One `.gitignore`'s rules in file order, and its folder (relative to the top, bytewise; '' for the
    top itself)."""

    base: str
    rules: tuple[Rule, ...]

    def last_match(self, path: str, is_dir: bool) -> Rule | None:
        """The last rule matching a bytewise path relative to the top; None when none does or the path is
        not below this file's folder."""
        if self.base and not path.startswith(self.base + "/"):
            return None
        below = path[len(self.base) + 1 :] if self.base else path
        return next((rule for rule in reversed(self.rules) if rule.matches(below, is_dir)), None)


def parse(text: bytes, base: str = "") -> RuleSet:
    """The rules of a `.gitignore` with content `text`, in folder `base` (relative to the top, with '/')."""
    lines = text.removeprefix(b"\xef\xbb\xbf").decode("latin-1").split("\n")
    return RuleSet(_bytewise(base), tuple(rule for line in lines if (rule := _rule(line)) is not None))


def ignored(path: str, is_dir: bool, stack: Sequence[RuleSet]) -> bool:
    """Whether `path` (relative to the top, with '/') is ignored, given the rule sets of the `.gitignore`
    files in the folders containing it, outermost first. A path below an ignored folder is not asked
    about: git does not look inside one, so nothing there can be re-included."""
    subject = _bytewise(path)
    for rules in reversed(stack):
        rule = rules.last_match(subject, is_dir)
        if rule is not None:
            return not rule.negated
    return False


def _bytewise(text: str) -> str:
    """A path's bytes as the latin-1 characters git's byte-by-byte matching sees."""
    return os.fsencode(text).decode("latin-1")


def _rule(line: str) -> Rule | None:
    """The rule of one line (without its '\\n'), or None for a comment, a blank, or a line that can never
    match."""
    if line.startswith("#"):
        return None
    pattern = _trim_trailing_spaces(line.removesuffix("\r"))
    negated = pattern.startswith("!")
    pattern = pattern.removeprefix("!")
    dir_only = pattern.endswith("/")
    pattern = pattern.removesuffix("/")
    if not pattern:
        return None
    basename_only = "/" not in pattern
    try:
        regex = _translate(pattern.removeprefix("/"))
    except _NeverMatches:
        return None
    return Rule(re.compile(regex, re.DOTALL), negated, dir_only, basename_only)


def _trim_trailing_spaces(line: str) -> str:
    """Drop trailing spaces, but not one escaped by a backslash nor any after a trailing lone backslash."""
    end = 0
    escaped = False
    for i, char in enumerate(line):
        if escaped or char not in " \\":
            end = i + 1
        escaped = not escaped and char == "\\"
    return line if escaped else line[:end]


def _translate(pattern: str) -> str:
    """A regex for git's wildmatch of `pattern` with '/' special (its WM_PATHNAME mode)."""
    literal_end = next((i for i, char in enumerate(pattern) if char in _GLOB_SPECIAL), len(pattern))
    parts: list[str] = []
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if char == "*":
            part, i = _stars(pattern, i, literal_end)
        elif char == "[":
            part, i = _char_class(pattern, i)
        elif char == "?":
            part, i = "[^/]", i + 1
        elif char == "\\":
            part, i = re.escape(_at(pattern, i + 1)), i + 2
        else:
            part, i = re.escape(char), i + 1
        parts.append(part)
    return "".join(parts)


def _stars(pattern: str, start: int, literal_end: int) -> tuple[str, int]:
    """A run of `*` from `start`, and where it ends. Two or more that fill a whole segment span folders
    (`**/` also matches no folder at all); any other run stays within one name. The literal start of a
    pattern counts as a finished segment: git matches it apart from the rest."""
    end = start
    while end < len(pattern) and pattern[end] == "*":
        end += 1
    rest = pattern[end:]
    opens_segment = start == literal_end or pattern[start - 1] == "/"
    closes_segment = rest == "" or rest.startswith(("/", "\\/"))
    if end - start == 1 or not (opens_segment and closes_segment):
        return "[^/]*", end
    if rest.startswith("/"):
        return "(?:.*/)?", end + 1
    return ".*", end


def _char_class(pattern: str, start: int) -> tuple[str, int]:
    """A `[...]` from `start` (its '['), and where it ends, read as git reads it: a ']' first inside is
    literal, `a-z` is a range of bytes, a backslash escapes, and `[:name:]` is a POSIX class. It never
    matches '/'."""
    i = start + 1
    negated = _at(pattern, i) in "!^"
    i += negated
    chars: set[str] = set()
    previous = ""  # the last single character, which a following '-' turns into a range's start
    first = i
    while (char := _at(pattern, i)) != "]" or i == first:
        if char == "\\":
            previous = _at(pattern, i + 1)
            chars.add(previous)
            i += 2
        elif char == "-" and previous and pattern[i + 1 : i + 2] not in ("", "]"):
            high, i = (_at(pattern, i + 2), i + 3) if pattern[i + 1] == "\\" else (pattern[i + 1], i + 2)
            chars.update(map(chr, range(ord(previous), ord(high) + 1)))
            previous = ""
        elif char == "[" and pattern[i + 1 : i + 2] == ":" and (named := _named_class(pattern, i)):
            chars.update(named[0])
            previous, i = "", named[1]
        else:
            chars.add(char)
            previous, i = char, i + 1
    matched = (_BYTES - chars if negated else chars) - {"/"}
    if not matched:
        raise _NeverMatches
    return "[" + "".join(map(re.escape, sorted(matched))) + "]", i + 1


def _named_class(pattern: str, start: int) -> tuple[str, int] | None:
    """The characters of a `[:name:]` at `start`, and where it ends; None when no ':]' closes it, so its
    '[' is a plain character."""
    close = pattern.find("]", start + 2)
    if close < 0:
        raise _NeverMatches
    if close == start + 2 or pattern[close - 1] != ":":
        return None
    name = pattern[start + 2 : close - 1]
    if name not in _NAMED_CLASSES:
        raise _NeverMatches
    return _NAMED_CLASSES[name], close + 1


def _at(pattern: str, i: int) -> str:
    """The character at `i`; a pattern that ends where git expects one more never matches."""
    if i >= len(pattern):
        raise _NeverMatches
    return pattern[i]

"""One rule for tests that need a real part (a Docker engine, namespaces, sshd, git, packaging tools): under
CI (`CI` set to anything) its absence fails the test, so nothing passes silently there; elsewhere it is
skipped with the reason."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def part_missing(message: str) -> NoReturn:
    if os.environ.get("CI"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def worker_index() -> int:
    """This pytest-xdist worker's number (gw1: 1), 0 outside xdist: tests of one run that share the machine's
    loopback or network namespaces pick what they use by it."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    return int(worker) if worker.isdigit() else 0

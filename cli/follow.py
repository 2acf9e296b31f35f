"""Following a job's log, as `submit` and `logs -f` do: bytes to stdout (or one JSON object per chunk), the
reason a job waits to stderr, and the job's exit code to return."""

from __future__ import annotations

import codecs
import functools
import json
import re
import sys
import time
from collections.abc import Callable
from typing import TypeVar

import click

from cli.api import Api, ApiError, LogChunk
from cli.text import clean, waiting_line

SAMPLE_POLL_S = 1.0
WAITING = ("pending", "pulling", "retrying")
T = TypeVar("T")


def follow_logs(
    client: Api,
    ref: str,
    *,
    follow: bool = True,
    as_json: bool = False,
    shown_reason: str | None = None,
    attempt: int | None = None,
    node: int = 0,
) -> int:
    """Print the job's log until it is complete (or, without `follow`, what there is now). Returns the job's
    exit code (1 for a job that ended without one, 0 while it has not ended). While the job waits, its
    reason goes to stderr once, and again each time it changes (`shown_reason`: what was shown already).

    With `as_json`, each chunk is one line of JSON: {"offset", "text", "complete", "status", "exit_code"},
    `offset` being the byte offset of the chunk's first byte; the last line has `complete` true."""
    offset, waiting = 0, True  # a waiting job is polled at once, not held on the long poll, to say why
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    while True:
        chunk = _request(
            functools.partial(
                client.logs, ref, offset, follow=follow and not waiting, attempt=attempt, node=node
            )
        )
        done = chunk.complete or not follow
        if as_json:
            if chunk.data or done:
                _json_line(chunk, offset, decoder.decode(chunk.data, final=done))
        elif chunk.data:
            sys.stdout.buffer.write(chunk.data)
            sys.stdout.buffer.flush()
        offset = chunk.next_offset
        if done:
            return _finish(ref, chunk)
        waiting = chunk.status in WAITING or (follow and not chunk.data and chunk.status == "assigned")
        if follow and (waiting or not chunk.data):
            job = _request(lambda: client.job(ref))
            stuck = job.status in WAITING or job.allocation_status == "unknown"
            if stuck and _gist(job.reason) != _gist(shown_reason):
                click.echo(waiting_line(job), err=True)
                shown_reason = job.reason
            waiting = waiting or stuck
            if waiting:
                time.sleep(SAMPLE_POLL_S)


def _gist(reason: str | None) -> str | None:
    """A reason without its running time: "unreachable for 40s" is said once, not again each second."""
    return None if reason is None else re.sub(r"\bfor [0-9dhms]+", "for …", reason)


def _request(call: Callable[[], T]) -> T:
    try:
        return call()
    except ApiError as exc:
        raise click.ClickException(str(exc)) from None


def _json_line(chunk: LogChunk, offset: int, text: str) -> None:
    line = {
        "offset": offset,
        "text": text,
        "complete": chunk.complete,
        "status": chunk.status,
        "exit_code": chunk.exit_code,
    }
    click.echo(json.dumps(line))


def _finish(ref: str, chunk: LogChunk) -> int:
    if not chunk.complete:
        return 0
    if chunk.status != "done":
        code = f" (exit {chunk.exit_code})" if chunk.exit_code is not None else ""
        click.echo(f"job {clean(ref)} {chunk.status}{code}", err=True)
    return exit_status(chunk.status, chunk.exit_code)


def exit_status(status: str, exit_code: int | None) -> int:
    """What the CLI exits with for a job that ended, as a shell reports a child: its code when it is one a
    process can exit with, 128+N when signal N killed it, and never 0 unless the job is `done`. Pure."""
    if exit_code is not None and exit_code < 0 and -exit_code < 128:
        return 128 - exit_code
    if exit_code is not None and 0 < exit_code < 256:
        return exit_code
    return 0 if status == "done" else 1

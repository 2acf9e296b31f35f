"""`gpuctl`: submit jobs, watch them, list hosts. Each command parses its flags and calls one function."""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import click
import msgspec

from cli.api import Api, ApiError
from cli.files import pack
from cli.host_detail import host_detail
from cli.render import hosts_table, jobs_table, print_table, waiting_line
from cli.session import api, call
from shared.spec import (
    GpuRequest,
    SpecError,
    TaskFile,
    TaskSpec,
    parse_gpu,
    parse_task,
    validate_spec,
)

SAMPLE_POLL_S = 1.0


@click.group()
def main() -> None:
    """gpuctl: run AI jobs on GPU hosts."""


@dataclass(frozen=True)
class Submission:
    spec: TaskSpec  # without its files_archive yet
    files: tuple[tuple[str, str], ...]  # (local path, path in the working directory)
    files_base: Path  # what relative local paths are relative to


def build_spec(
    file: Path | None,
    name: str | None,
    gpu: str | None,
    image: str | None,
    command: tuple[str, ...],
    files: tuple[str, ...] = (),
) -> Submission:
    """The spec from a task file and/or flags; flags win. `--files` entries (`.`, `src/`, `a:b`) replace
    the file's `files:` and are relative to the current folder; the file's are relative to its folder.
    Raises SpecError naming the field."""
    if file is None and not command:
        raise SpecError("commands", "nothing to run: give -f FILE or a command after --", source="submit")
    task = (
        parse_task(file.read_text(), source=str(file), environ=os.environ)
        if file
        else TaskFile(TaskSpec(commands=()))
    )
    spec, base = task.spec, file.parent if file else Path.cwd()
    pairs = task.files
    if files:
        flags = "files:\n" + "".join(f"  - {json.dumps(entry)}\n" for entry in files)
        pairs, base = parse_task("commands: [x]\n" + flags, source="--files").files, Path.cwd()
    changes: dict[str, object] = {}
    if command:
        # `submit -- echo hi` runs the words as one command; `submit 'a; b'` runs that shell text
        changes["commands"] = (shlex.join(command),) if len(command) > 1 else command
    if name:
        changes["name"] = name
    if image:
        changes["image"] = image
    if gpu:
        changes["resources"] = msgspec.structs.replace(spec.resources, gpu=_flag_gpu(gpu))
    return Submission(validate_spec(msgspec.structs.replace(spec, **changes)), pairs, base)


def upload_files(client: Api, submission: Submission) -> TaskSpec:
    """The spec to submit: with the id of its packed and uploaded files, if it has any."""
    if not submission.files:
        return submission.spec
    archive = pack(submission.files, submission.files_base)
    archive_id = client.upload_files(archive)
    return msgspec.structs.replace(submission.spec, files_archive=archive_id)


def _flag_gpu(text: str) -> GpuRequest | None:
    try:
        return parse_gpu(text)
    except ValueError as exc:
        raise SpecError("--gpu", str(exc), source="submit") from None


@main.command(context_settings={"ignore_unknown_options": False})
@click.option(
    "-f", "--file", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="A task file (YAML)."
)
@click.option("--name", help="The job's name.")
@click.option("--gpu", help="GPUs, dstack's grammar: H100:80GB:2, A10G,A100, amd:2, 1..8.")
@click.option("--image", help="Run in this container image.")
@click.option("-d", "--detach", is_flag=True, help="Print the job id and return at once.")
@click.option(
    "--files",
    "files",
    multiple=True,
    help="Copy into the job's working directory (repeatable): `.` (honours .gitignore), `src/`, `a.py:b.py`.",
)
@click.argument("command", nargs=-1)
def submit(
    file: Path | None,
    name: str | None,
    gpu: str | None,
    image: str | None,
    detach: bool,
    files: tuple[str, ...],
    command: tuple[str, ...],
) -> None:
    """Submit a job. Without -d, follow its logs and exit with its exit code, like `docker run`."""
    try:
        submission = build_spec(file, name, gpu, image, command, files)
    except SpecError as exc:
        raise click.ClickException(str(exc)) from None
    client = api()
    try:
        job = client.submit(upload_files(client, submission))
    except SpecError as exc:
        raise click.ClickException(str(exc)) from None
    except ApiError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(job.id if detach else f"job {job.id} ({job.name}) {job.status}")
    if job.status == "pending":
        click.echo(f"pending: {job.reason}", err=True)
    if detach:
        return
    try:
        sys.exit(follow_logs(client, job.id, show_pending=True))
    except KeyboardInterrupt:
        click.echo(f"\ndetached; the job keeps running: gpuctl logs -f {job.id}", err=True)
        sys.exit(130)


def follow_logs(client: Api, ref: str, show_pending: bool = False, follow: bool = True) -> int:
    """Stream the job's log to stdout until it is complete; return the job's exit code (1 if it has none)."""
    offset, last_reason = 0, None
    out = sys.stdout.buffer
    while True:
        try:
            chunk = client.logs(ref, offset, follow=follow)
        except ApiError as exc:
            raise click.ClickException(str(exc)) from None
        if chunk.data:
            out.write(chunk.data)
            out.flush()
        offset = chunk.next_offset
        if chunk.complete or not follow:
            if chunk.complete and chunk.status != "done":
                click.echo(
                    f"job {ref} {chunk.status}"
                    + (f" (exit {chunk.exit_code})" if chunk.exit_code is not None else ""),
                    err=True,
                )
            return chunk.exit_code if chunk.exit_code is not None else (0 if chunk.status == "done" else 1)
        if show_pending and chunk.status in ("pending", "pulling"):
            job = client.job(ref)
            if job.reason != last_reason:
                click.echo(waiting_line(job), err=True)
                last_reason = job.reason
            time.sleep(SAMPLE_POLL_S)


@main.command()
@click.option("-a", "--all", "show_all", is_flag=True, help="Include finished jobs.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def ps(show_all: bool, as_json: bool) -> None:
    """List jobs (running and pending; -a for all)."""
    jobs = call(lambda client: client.jobs(show_all))
    if as_json:
        click.echo(msgspec.json.encode(jobs).decode())
    else:
        print_table(jobs_table(jobs))


@main.command()
@click.option("-f", "--follow", is_flag=True, help="Keep printing until the job ends.")
@click.argument("job")
def logs(follow: bool, job: str) -> None:
    """Print a job's output."""
    try:
        follow_logs(api(), job, follow=follow)
    except KeyboardInterrupt:
        sys.exit(130)


@main.command()
@click.argument("job")
def stop(job: str) -> None:
    """Stop a job: SIGTERM, then SIGKILL after the grace period."""
    view = call(lambda client: client.stop(job))
    click.echo(
        f"job {view.id} {'stopping' if view.status in ('assigned', 'pulling', 'running') else view.status}"
    )


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("-v", "--verbose", is_flag=True, help="Every device, block, job holding it, and the topology.")
@click.argument("words", nargs=-1, metavar="[HOST | remove HOST]")
def hosts(as_json: bool, verbose: bool, words: tuple[str, ...]) -> None:
    """List hosts, their resources and busy blocks; with HOST or -v, each host in full.

    `gpuctl hosts remove HOST` revokes the host's certificates: its next sync is refused and it stops
    pulling work."""
    if words[:1] == ("remove",):
        if len(words) != 2:
            raise click.UsageError("usage: gpuctl hosts remove HOST")
        removed = call(lambda client: client.remove_host(words[1]))
        click.echo(f"host {removed['name']} ({removed['id']}) removed; its certificates are revoked")
        return
    if len(words) > 1:
        raise click.UsageError("give at most one HOST (or: remove HOST)")
    host = words[0] if words else None
    if host is None and not verbose:
        views, warning = call(lambda client: client.hosts_and_warning())
        if as_json:
            click.echo(msgspec.json.encode(views).decode())
        else:
            print_table(hosts_table(views))
            if warning:
                click.echo(f"coordinator: {warning}")
        return
    details = call(
        lambda client: (
            [client.host_detail(host)] if host else [client.host_detail(v.id) for v in client.hosts()]
        )
    )
    if as_json:
        click.echo(msgspec.json.encode(details[0] if host is not None else details).decode())
    else:
        for detail in details:
            print_table(host_detail(detail))


def _register() -> None:
    from cli.admin import fleet, project, token, user
    from cli.dev import dev
    from cli.secrets import secret

    for command in (dev, token, project, user, fleet, secret):
        main.add_command(command)


_register()

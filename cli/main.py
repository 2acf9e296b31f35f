"""`gpuctl`: submit jobs, watch them, list hosts. Each command parses its flags and calls one function.

A user waits for Python to start on every call, so each command imports what it needs when it runs, and
this module imports click alone: `--version` loads no HTTP, TLS or YAML module, `ps` no YAML or spec
grammar, `submit` no rich, and none of them cryptography (tests/test_cli_imports.py holds this).
"""

from __future__ import annotations

import importlib
import json
import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import click

from cli.shell import completion, print_version

if TYPE_CHECKING:
    from cli.api import Api
    from shared.spec import GpuRequest, TaskSpec


class LazyGroup(click.Group):
    """Commands whose module is imported only when they run (or when help lists them): `gpuctl dev` starts
    a coordinator and an agent, and the admin commands' imports must not slow every other command down."""

    lazy: dict[str, str] = {
        "dev": "cli.dev:dev",
        "login": "cli.login:login_command",
        "token": "cli.admin:token",
        "project": "cli.admin:project",
        "user": "cli.admin:user",
        "fleet": "cli.admin:fleet",
        "secret": "cli.secrets:secret",
        "exec": "cli.into:exec_command",
        "port-forward": "cli.into:port_forward",
        "attach": "cli.into:attach",
        "audit": "cli.into:audit",
        "usage": "cli.usage:usage",
        "ssh": "cli.ssh:ssh_command",
        "ssh-config": "cli.ssh:ssh_config",
        "ssh-proxy": "cli.ssh:ssh_proxy",
        "metrics": "cli.metrics:metrics_command",
        "top": "cli.metrics:top_command",
    }

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *self.lazy])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy:
            module, _, attr = self.lazy[cmd_name].partition(":")
            command: click.Command = getattr(importlib.import_module(module), attr)
            return command
        return super().get_command(ctx, cmd_name)


@click.group(cls=LazyGroup)
@click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=print_version,
    help="Print gpuctl's version and exit.",
)
@click.option(
    "--debug",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=lambda _ctx, _param, on: os.environ.update(GPUCTL_DEBUG="1") if on else None,
    help="Say on stderr which coordinator answered each request (also: GPUCTL_DEBUG=1).",
)
def main() -> None:
    """gpuctl: run AI jobs on GPU hosts."""


@dataclass(frozen=True)
class Submission:
    spec: TaskSpec  # without its files_archive and root_files_archive yet
    files: tuple[tuple[str, str], ...]  # (local path, path in the working directory)
    files_base: Path  # what relative local paths are relative to
    root_files: tuple[tuple[str, str], ...] = ()  # (local path, absolute path in the container)


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
    Prints the task file's warnings (fields without effect here) to stderr. Raises SpecError naming the
    field."""
    import msgspec

    from shared.spec import ROOT_FILES_NEED_IMAGE, SpecError, TaskFile, TaskSpec, parse_task, validate_spec

    if file is None and not command:
        raise SpecError("commands", "nothing to run: give -f FILE or a command after --", source="submit")
    task = (
        parse_task(file.read_text(), source=str(file), environ=os.environ)
        if file
        else TaskFile(TaskSpec(commands=()))
    )
    for warning in task.warnings:
        click.echo(f"warning: {warning}", err=True)
    spec, base = task.spec, file.parent if file else Path.cwd()
    pairs, root_pairs = task.files, task.root_files
    if files:
        # parsed as for a container, so that absolute targets are read; the final spec decides below
        flags = "image: x\nfiles:\n" + "".join(f"  - {json.dumps(entry)}\n" for entry in files)
        flagged = parse_task(flags, source="--files")
        pairs, root_pairs, base = flagged.files, flagged.root_files, Path.cwd()
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
    spec = validate_spec(msgspec.structs.replace(spec, **changes))
    if root_pairs and spec.image is None and spec.python is None:
        raise SpecError("files", ROOT_FILES_NEED_IMAGE, source="submit")
    return Submission(spec, pairs, base, root_pairs)


def upload_files(client: Api, submission: Submission) -> TaskSpec:
    """The spec to submit: with the ids of its packed and uploaded files, if it has any. Files for absolute
    paths in the container go in an archive of their own, whose members are those paths without the
    leading "/"."""
    if not submission.files and not submission.root_files:
        return submission.spec
    import msgspec

    from cli.files import pack  # tarfile and the .gitignore grammar: only for a job with files

    changes = {}
    if submission.files:
        changes["files_archive"] = client.upload_files(pack(submission.files, submission.files_base))
    if submission.root_files:
        pairs = [(local, target.lstrip("/")) for local, target in submission.root_files]
        changes["root_files_archive"] = client.upload_files(pack(pairs, submission.files_base))
    return msgspec.structs.replace(submission.spec, **changes)


def _flag_gpu(text: str) -> GpuRequest | None:
    from shared.spec import SpecError, parse_gpu

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
@click.option("--json", "as_json", is_flag=True, help="Print the job as JSON and return at once.")
@click.option(
    "--files",
    "files",
    multiple=True,
    help="Copy into the job's working directory (repeatable): `.` (honours .gitignore), `src/`, `a.py:b.py`.",
)
@click.option(
    "--array",
    help="One job per index, Slurm's syntax: 1-1000, 0,6,16-32, 0-15:4; %N runs at most N at once (1-1000%50).",
)
@click.argument("command", nargs=-1)
def submit(
    file: Path | None,
    name: str | None,
    gpu: str | None,
    image: str | None,
    detach: bool,
    as_json: bool,
    files: tuple[str, ...],
    array: str | None,
    command: tuple[str, ...],
) -> None:
    """Submit a job. Without -d, follow its logs and exit with its exit code, like `docker run`.

    With --array, submit a job array in one request and return: each task finds its index in
    $GPUCTL_ARRAY_INDEX and $SLURM_ARRAY_TASK_ID; `gpuctl ps ARRAY` lists the tasks."""
    import msgspec

    from cli.api import ApiError
    from cli.session import api
    from cli.text import clean, schedule_line, waiting_line
    from shared.arrays import check_array
    from shared.spec import SpecError

    try:
        submission = build_spec(file, name, gpu, image, command, files)
        if array is not None:
            check_array(array, source="submit")
    except SpecError as exc:
        raise click.ClickException(str(exc)) from None
    client = api()
    try:
        spec = upload_files(client, submission)
        job = client.submit(spec) if array is None else client.submit_array(spec, array)
    except SpecError as exc:
        raise click.ClickException(str(exc)) from None
    except ApiError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(msgspec.json.encode(job).decode())
        return
    if job.service_path:
        url = client.url + job.service_path
        click.echo(job.id if detach else clean(f"service {job.id} ({job.name}) at {url}"))
        return
    if job.array is not None:
        click.echo(job.id if detach else f"array {job.id} ({clean(job.name)}): {job.array.task_count} tasks")
        return
    if job.schedule is not None:  # nothing runs yet: each time submits a job named after it
        click.echo(
            job.id if detach else clean(f"schedule {job.id} ({job.name}): {schedule_line(job.schedule)}")
        )
        return
    click.echo(job.id if detach else f"job {job.id} ({job.name}) {job.status}")
    if job.status == "pending":
        click.echo(waiting_line(job), err=True)
    if detach:
        return
    from cli.follow import follow_logs

    try:
        sys.exit(follow_logs(client, job.id, shown_reason=job.reason if job.status == "pending" else None))
    except KeyboardInterrupt:
        click.echo(f"\ndetached; the job keeps running: gpuctl logs -f {job.id}", err=True)
        sys.exit(130)


@main.command()
@click.option("-a", "--all", "show_all", is_flag=True, help="Include finished jobs; with JOB, its attempts.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (attempts included).")
@click.argument("job", required=False)
def ps(show_all: bool, as_json: bool, job: str | None) -> None:
    """List jobs (running and pending; -a for all), an array as one line, a schedule with its next run;
    `ps -a JOB` lists the job's attempts, `ps ARRAY` the array's tasks still to finish (`ps -a ARRAY`:
    all of them)."""
    import msgspec

    from cli.session import call

    views = call(lambda client: [client.job(job)] if job is not None else client.jobs(show_all))
    if job is not None and views[0].array is not None:
        tasks = call(lambda client: client.tasks(views[0].id, show_all))
        if as_json:
            click.echo(msgspec.json.encode(tasks).decode())
            return
        from cli.render import print_table, tasks_table

        print_table(tasks_table(views[0], tasks))
        return
    if as_json:
        click.echo(msgspec.json.encode(views[0] if job is not None else views).decode())
        return
    from cli.render import attempts_table, jobs_table, print_table  # rich: for people only

    print_table(jobs_table(views, call(lambda client: client.url)))
    if job is not None and show_all:
        print_table(attempts_table(views[0]))


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def queue(as_json: bool) -> None:
    """The waiting jobs in the order the scheduler tries them: priority, then the project's fair-share
    factor (the project that used fewer GPU-hours lately first), then age; and why each waits."""
    import msgspec

    from cli.session import call

    entries = call(lambda client: client.queue())
    if as_json:
        click.echo(msgspec.json.encode(entries).decode())
        return
    from cli.render import print_table, queue_table  # rich: for people only

    print_table(queue_table(entries))


@main.command()
@click.option(
    "-f", "--follow", is_flag=True, help="Keep printing until the job ends; exit with its exit code."
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per chunk: offset, text, status, ...")
@click.option("--attempt", type=click.IntRange(min=1), help="The attempt to show (default: the last).")
@click.option("--node", type=click.IntRange(min=0), default=0, help="A multi-node job's node (default: 0).")
@click.argument("job")
def logs(follow: bool, as_json: bool, attempt: int | None, node: int, job: str) -> None:
    """Print a job's output; with -f, say why it waits while it is pending (on stderr). For one task of
    an array, JOB[INDEX]."""
    from cli.follow import follow_logs
    from cli.session import api

    try:
        code = follow_logs(api(), job, follow=follow, as_json=as_json, attempt=attempt, node=node)
    except KeyboardInterrupt:
        sys.exit(130)
    if follow:
        sys.exit(code)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the stopped job as JSON.")
@click.argument("job")
def stop(as_json: bool, job: str) -> None:
    """Stop a job: SIGTERM, then SIGKILL after the grace period. An array: all of its tasks; JOB[INDEX]:
    that one. A schedule: no more runs, and its run that has not ended."""
    import msgspec

    from cli.session import call

    view = call(lambda client: client.stop(job))
    if as_json:
        click.echo(msgspec.json.encode(view).decode())
        return
    what = "array" if view.array is not None else "job"
    click.echo(
        f"{what} {view.id} {'stopping' if view.status in ('assigned', 'pulling', 'running') else view.status}"
    )


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("-v", "--verbose", is_flag=True, help="Every device, block, job holding it, and the topology.")
@click.option("--force", is_flag=True, help="remove: even with jobs running there (they are lost).")
@click.option("--stop", is_flag=True, help="drain: stop its jobs now, with their grace period.")
@click.argument("words", nargs=-1, metavar="[HOST | remove HOST | drain HOST | undrain HOST]")
def hosts(as_json: bool, verbose: bool, force: bool, stop: bool, words: tuple[str, ...]) -> None:
    """List hosts, their resources and busy blocks; with HOST or -v, each host in full.

    `gpuctl hosts drain HOST [--stop]`: no new work there; what runs finishes (or, with --stop, is stopped
    now: an interruption for a job's retry policy). `gpuctl hosts undrain HOST` takes it back.
    `gpuctl hosts remove HOST [--force]` revokes the host's certificates: its next sync is refused and it
    stops pulling work; a host with jobs running needs --force."""
    import msgspec

    from cli.session import call

    if words[:1] in (("remove",), ("drain",), ("undrain",)):
        if len(words) != 2:
            raise click.UsageError(f"usage: gpuctl hosts {words[0]} HOST")
        click.echo(_change_host(words[0], words[1], force, stop))
        return
    if len(words) > 1:
        raise click.UsageError("give at most one HOST (or: remove | drain | undrain HOST)")
    host = words[0] if words else None
    if host is None and not verbose:
        views, warning = call(lambda client: client.hosts_and_warning())
        if as_json:
            click.echo(msgspec.json.encode(views).decode())
            return
        from cli.render import health_lines, hosts_table, print_table

        print_table(hosts_table(views))
        for line in health_lines(views):
            click.echo(line)
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
        return
    from cli.host_detail import host_detail
    from cli.render import terminal

    console = terminal()
    for detail in details:
        console.print(host_detail(detail, console.width))


def _change_host(verb: str, ref: str, force: bool, stop: bool) -> str:
    from cli.session import call

    if verb == "remove":
        removed = call(lambda client: client.remove_host(ref, force))
        return f"host {removed['name']} ({removed['id']}) removed; its certificates are revoked"
    if verb == "drain":
        drained = call(lambda client: client.drain_host(ref, stop))
        what = "its jobs are stopping" if stop else "what runs there finishes"
        return f"host {drained['name']} draining: no new work; {what}"
    undrained = call(lambda client: client.undrain_host(ref))
    return f"host {undrained['name']} {undrained['status']}: it takes new work"


main.add_command(completion)


if __name__ == "__main__":
    main()

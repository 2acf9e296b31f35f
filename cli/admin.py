"""Admin commands: join tokens for new hosts, projects and their quotas, users, fleets and their settings."""

from __future__ import annotations

import time
from pathlib import Path

import click
import msgspec

from cli.session import call
from shared.join import parse_join_string
from shared.units import parse_duration_s
from shared.wire import FleetLimit, FleetSet, ProjectQuota, TokenCreate, UserCreate


def _labels(values: tuple[str, ...]) -> dict[str, str]:
    labels = {}
    for value in values:
        key, sep, val = value.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected k=v, got {value!r}", param_hint="--labels")
        labels[key] = val
    return labels


@click.group()
def token() -> None:
    """Join tokens: what a new host needs to join this coordinator."""


@token.command("create")
@click.option("--fleet", required=True, help="The fleet the host joins.")
@click.option("--ttl", default="1h", show_default=True, help="How long the token can be used (30m, 1h, 7d).")
@click.option("--uses", type=click.IntRange(min=1), help="How many hosts may use it (default: any number).")
@click.option("--labels", multiple=True, help="k=v labels for the hosts that join with it (repeatable).")
def token_create(fleet: str, ttl: str, uses: int | None, labels: tuple[str, ...]) -> None:
    """Print one join string; on the new host: gpuctl-agent join JOIN_STRING (add --coordinator URL when the
    coordinator has no `advertise_urls:`, so the string carries no URL)."""
    try:
        ttl_s = parse_duration_s(ttl)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--ttl") from None
    request = TokenCreate(fleet=fleet, ttl_s=ttl_s, uses=uses, labels=_labels(labels))
    created = call(lambda client: client.create_token(request))
    click.echo(created.join_string)
    until = time.strftime("%Y-%m-%d %H:%M", time.localtime(created.expires_at))
    click.echo(f"token {created.id} for fleet {fleet}, valid until {until}", err=True)
    join = parse_join_string(created.join_string)
    if join.urls:
        click.echo(f"it carries the coordinators' URLs: {' '.join(join.urls)}", err=True)
    click.echo(
        f"CA pin: {join.ca_pin} (for `gpuctl login URL --token TOKEN --ca-pin {join.ca_pin}`)", err=True
    )


@token.command("list")
def token_list() -> None:
    """List join tokens that are not deleted (secrets are never shown again)."""
    click.echo(msgspec.json.encode(call(lambda client: client.tokens())).decode())


@token.command("delete")
@click.argument("token_id")
def token_delete(token_id: str) -> None:
    """Delete a join token: no host can join with it any more."""
    call(lambda client: client.delete_token(token_id))
    click.echo(f"token {token_id} deleted")


@click.group()
def project() -> None:
    """Projects: every job belongs to one, and a member sees only its own project's jobs."""


@project.command("create")
@click.argument("name")
def project_create(name: str) -> None:
    call(lambda client: client.create_project(name))
    click.echo(f"project {name} created")


@project.command("quota")
@click.argument("name")
@click.option(
    "--gpus", type=click.IntRange(min=0), help="At most this many GPUs held at once (default: any)."
)
@click.option(
    "--jobs", type=click.IntRange(min=0), help="At most this many jobs placed at once (default: any)."
)
def project_quota(name: str, gpus: int | None, jobs: int | None) -> None:
    """Set the project's quota; neither option: no quota. Nothing is refused at submit: a job that would
    take the project over waits, and `gpuctl queue` says why."""
    call(lambda client: client.set_quota(ProjectQuota(name=name, gpus=gpus, jobs=jobs)))
    limits = [f"{gpus} GPUs"] if gpus is not None else []
    limits += [f"{jobs} running jobs"] if jobs is not None else []
    click.echo(f"project {name}: " + (", ".join(limits) if limits else "no quota"))


@click.group()
def user() -> None:
    """Users and their API tokens."""


@user.command("create")
@click.argument("name")
@click.option("--project", required=True)
@click.option("--role", type=click.Choice(["member", "admin"]), default="member", show_default=True)
def user_create(name: str, project: str, role: str) -> None:
    """Create a user; prints their API token once (it is stored hashed)."""
    created = call(lambda client: client.create_user(UserCreate(name=name, project=project, role=role)))
    click.echo(created.token)


@click.group()
def fleet() -> None:
    """Fleets: groups of hosts, which may be limited to some projects, hold multi-node jobs
    (`placement: cluster`) or let higher-priority work stop lower-priority work (`preemption`)."""


@fleet.command("limit")
@click.argument("name")
@click.option(
    "--project", "projects", multiple=True, help="A project allowed to use the fleet (repeatable; none: all)."
)
def fleet_limit(name: str, projects: tuple[str, ...]) -> None:
    call(lambda client: client.limit_fleet(FleetLimit(name=name, projects=list(projects))))
    click.echo(f"fleet {name}: " + (", ".join(projects) if projects else "open to every project"))


@fleet.command("set")
@click.argument("name")
@click.option(
    "--placement",
    type=click.Choice(["cluster", "any"]),
    help="cluster: its hosts share one fast network, and multi-node jobs run only in such a fleet.",
)
@click.option(
    "--preemption/--no-preemption",
    default=None,
    help="Whether a pending job may stop running jobs of strictly lower priority on its hosts.",
)
def fleet_set(name: str, placement: str | None, preemption: bool | None) -> None:
    """Change a fleet's settings (dstack's fleet `placement:`, and `preemption:`); those not given stay."""
    if placement is None and preemption is None:
        raise click.UsageError("nothing to set: give --placement and/or --preemption/--no-preemption")
    view = call(
        lambda client: client.set_fleet(FleetSet(name=name, placement=placement, preemption=preemption))
    )
    click.echo(f"fleet {view.name}: placement {view.placement}, preemption {_on_off(view.preemption)}")


@fleet.command("apply")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def fleet_apply(file: Path) -> None:
    """Apply a dstack fleet file (`type: fleet`, `name`, `placement`, and `preemption`): the fleet takes its
    settings, the defaults for those it leaves out. Its fields about hosts are ignored: hosts join a fleet
    with a join token (gpuctl token create --fleet NAME)."""
    from shared.spec import SpecError
    from shared.spec.fleet import parse_fleet_file

    try:
        parsed = parse_fleet_file(file.read_text(), source=str(file))
    except UnicodeDecodeError:
        raise click.ClickException(f"{file}: not UTF-8 text") from None
    except SpecError as exc:
        raise click.ClickException(str(exc)) from None
    if parsed.ignored:
        click.echo(
            f"warning: ignored here ({', '.join(parsed.ignored)}): hosts join fleet {parsed.name} with "
            f"`gpuctl token create --fleet {parsed.name}`",
            err=True,
        )
    request = FleetSet(name=parsed.name, placement=parsed.placement, preemption=parsed.preemption)
    view = call(lambda client: client.set_fleet(request))
    click.echo(f"fleet {view.name}: placement {view.placement}, preemption {_on_off(view.preemption)}")


@fleet.command("list")
def fleet_list() -> None:
    """The fleets, with their settings and how many hosts each has."""
    views = call(lambda client: client.fleets())
    rows = [("FLEET", "PLACEMENT", "PREEMPTION", "HOSTS", "PROJECTS")]
    for v in views:
        projects = ",".join(v.projects) or "all"
        rows.append((v.name, v.placement, _on_off(v.preemption), str(v.hosts), projects))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)) + "  " + row[-1])


def _on_off(flag: bool) -> str:
    return "on" if flag else "off"

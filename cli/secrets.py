"""`gpuctl secret`: a project's secrets, for `${{ secrets.NAME }}` in a job's env and registry_auth."""

from __future__ import annotations

import sys
import time

import click

from cli.session import call

_project = click.option("--project", default="", help="The project (admins; a member's is its own).")


@click.group()
def secret() -> None:
    """Project secrets: jobs say ${{ secrets.NAME }}; only the agent that runs the job sees the value."""


@secret.command("set")
@click.argument("name")
@_project
def secret_set(name: str, project: str) -> None:
    """Set NAME from stdin (piped) or a hidden prompt; never from an argument, which `ps` would show."""
    if sys.stdin.isatty():
        value = click.prompt(f"value of {name}", hide_input=True, prompt_suffix=": ")
    else:
        value = sys.stdin.read().removesuffix("\n").removesuffix("\r")
    if not value:
        raise click.ClickException("value: empty; pipe the value in or type it at the prompt")
    view = call(lambda client: client.set_secret(name, value, project))
    click.echo(f"secret {view.name} set")


@secret.command("list")
@_project
def secret_list(project: str) -> None:
    """Names and when each was last set (never values)."""
    for view in call(lambda client: client.secrets(project)):
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(view.updated_at))
        click.echo(f"{view.name}\t{when}")


@secret.command("delete")
@click.argument("name")
@_project
def secret_delete(name: str, project: str) -> None:
    """Delete NAME. Jobs already submitted that use it get an empty value."""
    call(lambda client: client.delete_secret(name, project))
    click.echo(f"secret {name} deleted")

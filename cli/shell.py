"""`gpuctl --version` and `gpuctl completion SHELL`: what a shell needs to know about gpuctl."""

from __future__ import annotations

from pathlib import Path

import click

PACKAGE = "gpuctl"
PROGRAM = "gpuctl"
SHELLS = ("bash", "zsh", "fish")


def version() -> str:
    """The installed package's version; from a source tree that is not installed, pyproject.toml's."""
    import importlib.metadata  # ~10 ms that only `--version` needs
    import tomllib

    try:
        return importlib.metadata.version(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
        try:
            return str(tomllib.loads(pyproject.read_text())["project"]["version"])
        except (OSError, KeyError, tomllib.TOMLDecodeError):
            return "unknown"


def print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    click.echo(f"{PROGRAM} {version()}")
    ctx.exit()


@click.command()
@click.argument("shell", type=click.Choice(SHELLS))
@click.pass_context
def completion(ctx: click.Context, shell: str) -> None:
    """Print the shell's completion script for gpuctl. Install it, for bash:

    gpuctl completion bash > ~/.local/share/bash-completion/completions/gpuctl

    (zsh: a file `_gpuctl` in a folder of $fpath; fish: ~/.config/fish/completions/gpuctl.fish)."""
    from click.shell_completion import get_completion_class

    root = ctx.find_root().command
    complete_var = f"_{PROGRAM.upper()}_COMPLETE"
    cls = get_completion_class(shell)
    assert cls is not None  # click ships all three
    click.echo(cls(root, {}, PROGRAM, complete_var).source())

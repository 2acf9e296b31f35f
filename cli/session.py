"""The CLI's one way to reach the coordinator: the configured client, and calls whose errors become one line."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import click

from cli.api import Api, ApiError
from cli.config import NoConfig, load_cli_config

T = TypeVar("T")


def api() -> Api:
    try:
        return Api(load_cli_config())
    except (NoConfig, ApiError) as exc:
        raise click.ClickException(str(exc)) from None


def call(request: Callable[[Api], T]) -> T:
    """One API call with the configured client; what the coordinator or the network says is one line."""
    try:
        return request(api())
    except ApiError as exc:
        raise click.ClickException(str(exc)) from None

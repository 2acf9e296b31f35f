"""`GET /metrics`: the coordinator in Prometheus's text format (coordinator/metrics.py), for a scrape token only.

The scrape token is not an API token: Prometheus keeps it on disk for ever, and it may read counts of every
project and nothing else. It is made once, in the state directory (`metrics.token`, 0600), like the admin
token; an API token, an admin's included, is refused.
"""

from __future__ import annotations

import asyncio
import hmac
import secrets
from pathlib import Path

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from coordinator.accounts import hash_secret
from coordinator.http import COORDINATOR, bearer_token, error
from coordinator.readings_metrics import device_snapshot, device_text
from shared import tls

PATH = "/metrics"
TOKEN_FILE = "metrics.token"
SCRAPE_TOKEN: web.AppKey[str] = web.AppKey("scrape_token", str)  # its hash


def ensure_scrape_token(state_dir: Path) -> str:
    """The scrape token's hash; the token is created once, in a 0600 file of the state directory."""
    path = state_dir / TOKEN_FILE
    if path.exists():
        token = path.read_text().strip()
    else:
        token = "gpuctl_metrics_" + secrets.token_urlsafe(32)
        tls.write_private(path, token.encode() + b"\n")
    return hash_secret(token)


async def metrics(request: web.Request) -> web.Response:
    token = bearer_token(request.headers.get("Authorization", ""))
    wanted = request.app.get(SCRAPE_TOKEN)
    if not token or wanted is None or not hmac.compare_digest(hash_secret(token), wanted):
        return error(
            401, f"missing or wrong scrape token (the coordinator's state directory has it: {TOKEN_FILE})"
        )
    coordinator = request.app[COORDINATOR]
    devices = await asyncio.to_thread(device_text, device_snapshot(coordinator))
    body = generate_latest(coordinator.meters.registry) + devices.encode()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def add_routes(app: web.Application) -> None:
    app.router.add_get(PATH, metrics)

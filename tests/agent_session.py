"""An enrolled agent's HTTPS session (a real client certificate of the test coordinator's CA), for tests that
speak the agent protocol by hand: bad inventories, hostile bodies."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import msgspec

from coordinator.pki import issue_agent_cert
from coordinator.server import RunningCoordinator
from shared import tls
from shared.wire import Inventory, generation_of


def agent_session(coordinator: RunningCoordinator, host_id: str, folder: Path) -> aiohttp.ClientSession:
    cert, key = issue_agent_cert(coordinator.pki, host_id, folder / host_id)
    context = tls.client_context(coordinator.pki.ca_cert, cert, key)
    return aiohttp.ClientSession(
        base_url=coordinator.url, connector=aiohttp.TCPConnector(ssl=context), raise_for_status=False
    )


def sync_body(inventory: Inventory | None, desired_index: int = 0) -> bytes:
    generation = generation_of(inventory) if inventory else "none"
    body = {"agent_version": "0.1.0", "inventory_generation": generation, "desired_index": desired_index}
    if inventory is not None:
        body["inventory"] = msgspec.to_builtins(inventory)
    return msgspec.json.encode(body)

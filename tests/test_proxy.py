"""An agent with no route but to a proxy host joins, runs a job, ships its logs and fetches files through a
real HTTP CONNECT proxy (tinyproxy) from HTTPS_PROXY, with TLS end to end; `gpuctl hosts -v` says so."""

from __future__ import annotations

import io
import re
import sys
import tarfile

import msgspec
import pytest

from shared.spec import parse_spec
from tests.login_site import log_text, login_site
from tests.netns import require_tools
from tests.sshd import start_tinyproxy

pytestmark = pytest.mark.timeout(120)
PROXY_PORT = 3128


def _archive(name: str, text: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        data = text.encode()
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_an_agent_behind_an_http_connect_proxy_joins_runs_and_ships_logs() -> None:
    require_tools("tinyproxy")
    with login_site("gp") as site:
        site.start_coordinator()
        proxy = f"{site.b1_to_node}:{PROXY_PORT}"
        start_tinyproxy(
            site.net,
            "b1",
            site.b1_to_node,
            PROXY_PORT,
            site.root / "proxy",
            allow=site.b1_to_node.rsplit(".", 1)[0] + ".0/24",
        )
        direct = site.net.run(
            "node",
            [sys.executable, "-c", f"import socket; socket.create_connection(('{site.coord}', 8443), 3)"],
        )
        assert direct.returncode != 0  # no route but through the proxy
        site.start_agent("join", env={"HTTPS_PROXY": f"http://{proxy}", "NO_PROXY": "localhost"})
        assert site.api is not None
        archive_id = site.api.upload_files(_archive("hello.txt", "fetched through the proxy\n"))
        spec = parse_spec(
            "commands: ['cat hello.txt', 'for i in $(seq 1 50); do echo line $i; done']", environ={}
        )
        job = site.api.submit(msgspec.structs.replace(spec, files_archive=archive_id))
        text = log_text(site, job.id)
        assert text.splitlines() == ["fetched through the proxy", *[f"line {i}" for i in range(1, 51)]]
        assert f"reaches the coordinator: proxy {proxy}" in site.host_detail_output()
        connects = (site.root / "proxy" / "tinyproxy.log").read_text()
        assert re.search(rf"CONNECT {re.escape(site.coord)}:8443", connects), connects[-1500:]


def test_through_a_proxy_a_dead_first_coordinator_is_passed_over_for_the_next() -> None:
    """Each coordinator is reached with its own CONNECT through the one proxy; the first has nothing behind it."""
    require_tools("tinyproxy")
    with login_site("gq") as site:
        site.start_coordinator()
        proxy = f"{site.b1_to_node}:{PROXY_PORT}"
        allowed = site.b1_to_node.rsplit(".", 1)[0] + ".0/24"
        start_tinyproxy(site.net, "b1", site.b1_to_node, PROXY_PORT, site.root / "proxy", allow=allowed)
        dead = f"https://{site.coord}:8444"
        site.start_agent("join", env={"HTTPS_PROXY": f"http://{proxy}"}, urls=(dead, site.url))
        assert site.api is not None
        job = site.api.submit(parse_spec("commands: ['echo past the dead one']", environ={}))
        assert log_text(site, job.id) == "past the dead one\n"
        connects = (site.root / "proxy" / "tinyproxy.log").read_text()
        assert re.search(rf"CONNECT {re.escape(site.coord)}:8444", connects), connects[-1500:]
        assert f"joining at {dead} failed" in site.agent_log.read_text()

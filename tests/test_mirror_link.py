"""`docker.mirror_via_link`: the registry mirror is reached the way the agent reaches the coordinator. Through a
login node (real sshd, real namespaces) the tunnel forwards 127.0.0.1:PORT to the mirror; through an HTTP
CONNECT proxy (real tinyproxy) the agent relays it; either way the node, which has no route to the mirror,
reaches a real registry server at http://127.0.0.1:PORT/v2/. The engine pulls from 127.0.0.1:PORT/<path>."""

from __future__ import annotations

import asyncio
import base64
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from agent.config import ConfigError, load_config
from agent.mirror_link import MirrorLink, MirrorRelay
from agent.runtime.docker import registry_of
from agent.runtime.image import mirror_reference
from agent.tunnel import SocketForward, TcpForward, ssh_command
from tests.docker_engine import Engine, busybox_rootfs, busybox_static
from tests.fake_registry import fake_registry, image_from_rootfs
from tests.login_site import Site, login_site
from tests.netns import SSHD, require_tools, wait_until
from tests.sshd import free_port, start_tinyproxy

REGISTRY_PORT = 5000
LOCAL_PORT = 5099
PROXY_PORT = 3128
AUTH = "Basic " + base64.b64encode(b"puller:s3cret").decode()
GET_V2 = (
    "import sys, urllib.request\n"
    "req = urllib.request.Request(sys.argv[1], headers={'Authorization': sys.argv[2]})\n"
    "with urllib.request.urlopen(req, timeout=5) as r:\n"
    "    print(r.status, r.headers['Docker-Distribution-API-Version'], r.read().decode())\n"
)


def _load(tmp_path: Path, text: str) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text("coordinator: https://c.example:8443\n" + text)
    load_config(path, {})


@pytest.mark.parametrize(
    ("text", "error"),
    [
        (
            "bastion: {host: login, known_hosts: /k}\ndocker: {mirror_via_link: true}\n",
            "docker.mirror_via_link: needs docker.registry_mirror (the mirror to reach)",
        ),
        (
            "docker: {registry_mirror: 'm:5000', mirror_via_link: true}\n",
            "docker.mirror_via_link: needs a bastion or a proxy (the route the mirror is reached by)",
        ),
        (
            "proxy: none\ndocker: {registry_mirror: 'm:5000', mirror_via_link: true}\n",
            "docker.mirror_via_link: needs a bastion or a proxy (the route the mirror is reached by)",
        ),
        ("docker: {mirror_via_link: 'yes'}\n", "docker.mirror_via_link: expected true or false"),
        (
            "proxy: http://p:3128\ndocker: {registry_mirror: 'm', mirror_via_link: true, mirror_local_port: 0}\n",
            "docker.mirror_local_port: expected a port number, got 0",
        ),
    ],
)
def test_a_mirror_via_link_without_what_it_needs_is_one_line_naming_the_field(
    tmp_path: Path, text: str, error: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        _load(tmp_path, text)
    assert str(raised.value) == error


def test_the_engine_pulls_from_loopback_with_the_mirrors_path_and_ssh_forwards_that_port(
    tmp_path: Path,
) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text(
        "coordinator: https://c.example:8443\nproxy: http://p:3128\n"
        "docker: {registry_mirror: 'mirror.dc1:5000/cache', mirror_via_link: true, mirror_local_port: 5123}\n"
    )
    docker = load_config(path, {}).docker
    assert mirror_reference("nvcr.io/nvidia/pytorch:24.08", registry_of(docker).mirror) == (
        "127.0.0.1:5123/cache/nvidia/pytorch:24.08"
    )
    assert docker.mirror_link() == MirrorLink("mirror.dc1", 5000, 5123)
    plain = load_config(path.with_name("none.yaml"), {"coordinator": "https://c:1"}).docker
    assert (plain.pull_mirror(), plain.mirror_link()) == (None, None)

    coordinator = SocketForward(Path("s.sock"), "c.example", 8443)
    argv = ssh_command(Path("cfg"), (), (coordinator,), (TcpForward(5123, "mirror.dc1", 5000),))
    assert argv[argv.index("-L", argv.index("-L") + 1) + 1] == "127.0.0.1:5123:mirror.dc1:5000"


def _start_registry(site: Site) -> str:
    """A registry server on the coordinator's address, in its namespace: the node has no route to it."""
    code = "import sys; from tests.fake_registry import serve_until_killed as s; s(sys.argv[1], 5000, 'puller', 's3cret')"
    site.net.popen("coord", [sys.executable, "-c", code, site.coord], site.root / "registry.log")
    address = f"{site.coord}:{REGISTRY_PORT}"
    wait_until(lambda: _get(site, "coord", f"http://{address}/v2/").returncode == 0, 20, "the registry")
    assert _get(site, "node", f"http://{address}/v2/").returncode != 0  # no route but the link
    return address


def _get(site: Site, ns: str, url: str) -> subprocess.CompletedProcess[str]:
    return site.net.run(ns, [sys.executable, "-c", GET_V2, url, AUTH], timeout_s=15)


def _agent_config(site: Site, **link: object) -> None:
    config = {"docker": {"registry_mirror": f"{site.coord}:{REGISTRY_PORT}", "mirror_via_link": True}, **link}
    (site.root / "no-agent.yaml").write_text(yaml.safe_dump(config))


def _reaches_through_loopback(site: Site) -> None:
    url = f"http://127.0.0.1:{LOCAL_PORT}/v2/"
    wait_until(lambda: _get(site, "node", url).returncode == 0, 30, "the mirror through the link")
    assert _get(site, "node", url).stdout.strip() == "200 registry/2.0 {}"
    site.wait_log("enrolled|joined|agent gpu-node", timeout_s=30)
    wait_until(
        lambda: "image mirror through the same route" in site.host_detail_output(),
        30,
        "the route in hosts -v",
    )


@pytest.mark.timeout(120)
def test_through_a_bastion_the_mirror_is_a_second_forward_of_the_tunnel() -> None:
    require_tools(SSHD, "ssh", "ssh-keygen")
    with login_site("gm") as site:
        site.start_coordinator()
        b1 = site.add_bastion("b1", site.b1_to_node)
        known = site.trust("b1")
        _start_registry(site)
        _agent_config(site)
        site.start_agent(
            "join", "--bastion", f"root@{b1.address}:{b1.port}", "--bastion-identity", str(site.client_key),
            "--bastion-known-hosts", str(known),
        )  # fmt: skip
        site.wait_log("ssh tunnel up")
        _reaches_through_loopback(site)


@pytest.mark.timeout(120)
def test_through_a_proxy_the_agent_relays_the_mirror_with_connect() -> None:
    require_tools("tinyproxy")
    with login_site("gq") as site:
        site.start_coordinator()
        allow = site.b1_to_node.rsplit(".", 1)[0] + ".0/24"
        root = site.root / "proxy"
        start_tinyproxy(site.net, "b1", site.b1_to_node, PROXY_PORT, root, allow, (8443, REGISTRY_PORT))
        _start_registry(site)
        _agent_config(site, proxy=f"http://{site.b1_to_node}:{PROXY_PORT}")
        site.start_agent("join")
        _reaches_through_loopback(site)
        assert f"CONNECT {site.coord}:{REGISTRY_PORT}" in (root / "tinyproxy.log").read_text()


async def test_a_refused_connect_closes_the_engines_connection_and_is_one_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """tinyproxy on loopback allows CONNECT to the registry's port only: the relay carries a GET of /v2/ to
    the registry, and a mirror on another port is refused, closed and logged."""
    require_tools("tinyproxy")
    proxy_port = free_port()
    conf = tmp_path / "tinyproxy.conf"
    with fake_registry(image_from_rootfs(b""), "puller", "s3cret", 0.0) as registry:
        registry_port = int(registry.rsplit(":", 1)[1])
        conf.write_text(
            f"Port {proxy_port}\nListen 127.0.0.1\nAllow 127.0.0.1\nLogLevel Connect\n"
            f'PidFile "{tmp_path}/tinyproxy.pid"\nConnectPort {registry_port}\n'
        )
        with (tmp_path / "tinyproxy.log").open("wb") as out:
            proxy = await asyncio.create_subprocess_exec(
                "tinyproxy", "-d", "-c", str(conf), stdout=out, stderr=subprocess.STDOUT
            )
        try:
            await _wait_listening(proxy_port)
            allowed, refused = free_port(), free_port()
            relays = [
                MirrorRelay(
                    MirrorLink("127.0.0.1", registry_port, allowed), f"http://127.0.0.1:{proxy_port}"
                ),
                MirrorRelay(MirrorLink("127.0.0.1", 9, refused), f"http://127.0.0.1:{proxy_port}"),
            ]
            tasks = [asyncio.create_task(r.run()) for r in relays]
            try:
                await _wait_listening(allowed)
                await _wait_listening(refused)
                answer = await _raw_get(allowed)
                assert answer.startswith(b"HTTP/1.0 200") and answer.endswith(b"{}"), answer
                caplog.clear()  # waiting for the refusing relay to listen was itself refused
                with caplog.at_level(logging.WARNING, "gpuctl.agent"):
                    assert await _raw_get(refused) == b""  # closed, no answer
                lines = [r.getMessage() for r in caplog.records if "image mirror relay" in r.getMessage()]
                assert len(lines) == 1 and "the proxy refused CONNECT: HTTP/1.1 403" in lines[0], lines
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            proxy.terminate()
            await asyncio.wait_for(proxy.wait(), 10)


async def _raw_get(port: int) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET /v2/ HTTP/1.0\r\nAuthorization: {AUTH}\r\n\r\n".encode())
    await writer.drain()
    async with asyncio.timeout(10):
        data = await reader.read()
    writer.close()
    await writer.wait_closed()
    return data


async def _wait_listening(port: int) -> None:
    async with asyncio.timeout(10):
        while True:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            writer.close()
            await writer.wait_closed()
            return


async def test_the_engine_pulls_an_image_through_the_relay_and_the_proxy(
    tmp_path: Path, docker_engine: Engine
) -> None:
    """End to end: the real engine pulls `127.0.0.1:RELAY/team/tool:7`; the relay carries it through tinyproxy
    (CONNECT to the registry's port only) to the registry, which the engine is never told about."""
    require_tools("tinyproxy")
    proxy_port, relay_port = free_port(), free_port()
    conf = tmp_path / "tinyproxy.conf"
    with fake_registry(
        image_from_rootfs(busybox_rootfs(busybox_static())), "puller", "s3cret", 0.0
    ) as registry:
        registry_port = int(registry.rsplit(":", 1)[1])
        conf.write_text(
            f"Port {proxy_port}\nListen 127.0.0.1\nAllow 127.0.0.1\nLogLevel Connect\n"
            f'PidFile "{tmp_path}/tinyproxy.pid"\nConnectPort {registry_port}\n'
        )
        with (tmp_path / "tinyproxy.log").open("wb") as out:
            proxy = await asyncio.create_subprocess_exec(
                "tinyproxy", "-d", "-c", str(conf), stdout=out, stderr=subprocess.STDOUT
            )
        relay = MirrorRelay(
            MirrorLink("127.0.0.1", registry_port, relay_port), f"http://127.0.0.1:{proxy_port}"
        )
        task = asyncio.create_task(relay.run())
        reference = f"127.0.0.1:{relay_port}/team/tool:7"
        try:
            await _wait_listening(proxy_port)
            await _wait_listening(relay_port)
            auth = {"username": "puller", "password": "s3cret"}
            await asyncio.to_thread(docker_engine.client.images.pull, reference, auth_config=auth)
            output = await asyncio.to_thread(
                docker_engine.client.containers.run,
                reference,
                ["echo", "pulled through the relay"],
                remove=True,
            )
            assert output == b"pulled through the relay\n"
            assert f"CONNECT 127.0.0.1:{registry_port}" in (tmp_path / "tinyproxy.log").read_text()
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            proxy.terminate()
            await asyncio.wait_for(proxy.wait(), 10)
            await asyncio.to_thread(docker_engine.client.images.remove, reference, force=True)

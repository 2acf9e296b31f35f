"""The bastion and proxy settings, and ssh's failures read back as one line naming the hop."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from agent.config import ConfigError, load_config
from agent.transport import env_proxy
from agent.tunnel import Hop, SocketForward, explain, ssh_command

MISSING = Path("/nonexistent/agent.yaml")


def test_flags_make_hops_first_hop_first() -> None:
    config = load_config(
        MISSING,
        {
            "coordinator": "https://c.example:8443",
            "bastion": ("gpuctl@login.dc1", "login2.dc1:2200"),
            "bastion_identity": "/k",
            "bastion_known_hosts": "/kh",
        },
    )
    assert config.bastion == (
        Hop("login.dc1", "gpuctl", 22, Path("/k"), Path("/kh")),
        Hop("login2.dc1", None, 2200, Path("/k"), Path("/kh")),
    )


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"bastion": "login.dc1"}, "bastion.known_hosts: required"),
        ({"bastion": [{"host": "a", "known_hosts": "/kh", "port": 0}]}, "bastion.port:"),
        ({"bastion": ["a", "b@@c"], "bastion_known_hosts": "/kh"}, "bastion[1]: expected [USER@]HOST[:PORT]"),
        ({"bastion": [{"host": "a", "known_hosts": "/kh", "key": "x"}]}, "bastion.key: unknown setting"),
        ({"proxy": "socks5://p:1080"}, "proxy: expected http://HOST:PORT"),
        ({"proxy": "http://p:3128", "bastion": "a", "bastion_known_hosts": "/kh"}, "proxy: set either"),
    ],
)
def test_bad_link_settings_name_the_field(setting: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match="^" + re.escape(message)):
        load_config(MISSING, {"coordinator": "https://c:1", **setting})


def test_ssh_command_forwards_a_unix_socket_through_every_hop() -> None:
    hops = (
        Hop("a", known_hosts=Path("/kh")),
        Hop("b", known_hosts=Path("/kh")),
        Hop("c", known_hosts=Path("/kh")),
    )
    forward = SocketForward(Path("/s/c.sock"), "coord.example", 8443)
    argv = ssh_command(Path("/s/ssh_config"), hops, (forward,))
    assert argv[argv.index("-J") + 1] == "hop0,hop1"
    assert argv[-2:] == ["/s/c.sock:coord.example:8443", "hop2"]
    assert "ExitOnForwardFailure=yes" in argv


HOPS = (
    Hop("login.dc1", "gpuctl", known_hosts=Path("/kh")),
    Hop("login2.dc1", port=2200, known_hosts=Path("/kh")),
)


@pytest.mark.parametrize(
    ("stderr", "line"),
    [
        (
            [
                "debug1: Server host key: ssh-ed25519 SHA256:abc+/1",
                "Host key for [login2.dc1]:2200 has changed and you have requested strict checking.",
            ],
            "bastion login2.dc1:2200 changed its host key (now SHA256:abc+/1)",
        ),
        (
            [
                "debug1: Server host key: ssh-ed25519 SHA256:xyz",
                "No ED25519 host key is known for login.dc1 and you have requested strict checking.",
            ],
            "bastion login.dc1 has a host key not in known_hosts (SHA256:xyz)",
        ),
        (
            ["gpuctl@login.dc1: Permission denied (publickey)."],
            "bastion login.dc1 refused the key for gpuctl",
        ),
        (
            ["ssh: connect to host login.dc1 port 22: Connection refused"],
            "bastion login.dc1 port 22: Connection refused",
        ),
    ],
)
def test_ssh_failures_become_one_line_naming_the_hop(stderr: list[str], line: str) -> None:
    assert explain(stderr, HOPS).startswith(line)


def test_https_proxy_from_the_environment_unless_no_proxy_names_the_host() -> None:
    env = {"HTTPS_PROXY": "http://proxy.corp:3128", "NO_PROXY": ".internal,localhost"}
    assert env_proxy("https://gpuctl.dc1.example:8443", env) == "http://proxy.corp:3128"
    assert env_proxy("https://c.internal:8443", env) is None
    assert env_proxy("https://c.example:8443", {}) is None


def test_internal_ip_must_be_an_ip_address() -> None:
    assert (
        load_config(MISSING, {"coordinator": "https://c:1", "internal_ip": "10.1.2.3"}).internal_ip
        == "10.1.2.3"
    )
    with pytest.raises(ConfigError, match="^internal_ip: expected an IP address, got 'node-7'$"):
        load_config(MISSING, {"coordinator": "https://c:1", "internal_ip": "node-7"})
    with pytest.raises(ConfigError, match="^internal_ip: expected an IP address, got 'fe80::1%x;id'$"):
        load_config(MISSING, {"coordinator": "https://c:1", "internal_ip": "fe80::1%x;id"})

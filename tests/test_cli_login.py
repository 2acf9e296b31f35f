"""`gpuctl login`: the CLI's config for a real coordinator, trusted through the CA pin. Real coordinator, real
TLS, the real command."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

from shared import tls
from tests.harness import Cluster, cluster
from tests.test_cli import gpuctl

WRONG_PIN = "sha256:" + "0" * 64


def login_env(tmp_path: Path) -> dict[str, str]:
    return dict(os.environ, GPUCTL_CONFIG=str(tmp_path / "cli" / "config.yaml"))


def pin_of(c: Cluster) -> str:
    return tls.ca_pin(c.coordinator.pki.ca_cert.read_bytes())


async def run(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    done = await asyncio.to_thread(gpuctl, env, *args)
    return done.returncode, done.stdout, done.stderr


async def test_the_right_pin_writes_a_config_that_works(tmp_path: Path) -> None:
    env = login_env(tmp_path)
    async with cluster() as c:
        code, out, err = await run(
            env, "login", c.coordinator.url, "--token", c.api.config.token, "--ca-pin", pin_of(c)
        )
        assert code == 0, err
        config = tmp_path / "cli" / "config.yaml"
        assert config.stat().st_mode & 0o777 == 0o600 and str(config) in out

        code, out, err = await run(env, "ps", "--json")
        assert (code, json.loads(out)) == (0, []), err
        code, out, err = await run(env, "token", "create", "--fleet", "dc1")
        assert code == 0 and f"CA pin: {pin_of(c)}" in err


async def test_a_wrong_pin_or_token_refuses_and_writes_nothing(tmp_path: Path) -> None:
    env = login_env(tmp_path)
    async with cluster() as c:
        code, _, err = await run(
            env, "login", c.coordinator.url, "--token", c.api.config.token, "--ca-pin", WRONG_PIN
        )
        assert code == 1 and "Traceback" not in err
        (line,) = err.strip().splitlines()
        assert f"has a CA whose pin {pin_of(c)} is not {WRONG_PIN}" in line

        code, _, err = await run(
            env, "login", c.coordinator.url, "--token", "gpuctl_nope", "--ca-pin", pin_of(c)
        )
        assert code == 1 and "refused the token" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "cli").exists()

"""Project secrets end to end: set with the CLI, used by a job through `${{ secrets.NAME }}`, seen only by the
job; never in a view, a stored spec or the database in clear; one project cannot read or use another's."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from cli.api import Api, ApiError
from cli.config import CliConfig
from cli.main import main as gpuctl
from coordinator.secrets import KEY_FILE, resolved
from shared.spec import parse_spec
from shared.wire import UserCreate
from tests.harness import Cluster, cluster

VALUE = "hf_s3cr3t-Value-0123456789"
JOB = """
env:
  - HF_TOKEN=${{ secrets.HF_TOKEN }}
commands:
  - echo "len=${#HF_TOKEN} sha=$(printf %s "$HF_TOKEN" | sha256sum | cut -c1-16)"
"""


async def member(c: Cluster, project: str) -> Api:
    await asyncio.to_thread(c.api.create_project, project)
    user = await asyncio.to_thread(c.api.create_user, UserCreate(name=f"{project}-dev", project=project))
    return Api(CliConfig(c.api.config.url, user.token, c.api.config.ca_file), timeout_s=30.0)


def cli(api: Api, tmp_path: Path, *args: str, stdin: str | None = None) -> tuple[int, str]:
    config = tmp_path / f"cli-{api.config.token[-8:]}.yaml"
    config.write_text(f"url: {api.config.url}\ntoken: {api.config.token}\nca_file: {api.config.ca_file}\n")
    result = CliRunner().invoke(gpuctl, list(args), input=stdin, env={"GPUCTL_CONFIG": str(config)})
    return result.exit_code, result.output


def database_bytes(c: Cluster) -> bytes:
    state = c.root / "coordinator"
    return b"".join(p.read_bytes() for p in state.glob("coordinator.db*"))


async def test_a_job_sees_its_projects_secret_and_no_view_or_stored_spec_holds_it(tmp_path: Path) -> None:
    async with cluster() as c:
        c.start_agent("secrets-a")
        alice = await member(c, "team-a")
        code, out = await asyncio.to_thread(
            cli, alice, tmp_path, "secret", "set", "HF_TOKEN", stdin=VALUE + "\n"
        )
        assert code == 0 and VALUE not in out, out
        job = await asyncio.to_thread(alice.submit, parse_spec(JOB))
        log = (await c.full_log(job.id)).decode()
        digest = hashlib.sha256(VALUE.encode()).hexdigest()[:16]
        assert log == f"len={len(VALUE)} sha={digest}\n"  # the job saw the value itself

        code, out = await asyncio.to_thread(cli, alice, tmp_path, "ps", "-a", "--json")
        assert code == 0 and job.id in out and VALUE not in out
        view = await asyncio.to_thread(alice.job, job.id)
        assert view.spec.env["HF_TOKEN"] == "${{ secrets.HF_TOKEN }}"
        stored = c.coordinator.coordinator.store.get_job(job.id)
        assert stored is not None and stored.spec.env["HF_TOKEN"] == "${{ secrets.HF_TOKEN }}"
        assert VALUE.encode() not in database_bytes(c)  # the db, its WAL: ciphertext only
        row = c.coordinator.coordinator.store.db.execute("SELECT ciphertext FROM secrets").fetchone()
        assert len(bytes(row[0])) > len(VALUE) and VALUE.encode() not in bytes(row[0])
        key_file = c.root / "coordinator" / KEY_FILE
        assert key_file.stat().st_mode & 0o777 == 0o600 and key_file.read_bytes() not in database_bytes(c)

        code, out = await asyncio.to_thread(cli, alice, tmp_path, "secret", "list")
        assert code == 0 and out.startswith("HF_TOKEN\t20") and VALUE not in out, out


async def test_another_project_cannot_read_or_use_the_secret(tmp_path: Path) -> None:
    async with cluster() as c:
        alice, bob = await member(c, "team-a"), await member(c, "team-b")
        await asyncio.to_thread(alice.set_secret, "HF_TOKEN", VALUE)
        assert await asyncio.to_thread(bob.secrets) == []
        with pytest.raises(
            ApiError, match=r"^spec: env.HF_TOKEN: \$\{\{ secrets.HF_TOKEN \}\}: project 'team-b'"
        ):
            await asyncio.to_thread(bob.submit, parse_spec(JOB))
        with pytest.raises(ApiError, match="a member acts on its own project"):
            await asyncio.to_thread(bob.secrets, "team-a")
        with pytest.raises(ApiError, match="a member acts on its own project"):
            await asyncio.to_thread(bob.set_secret, "HF_TOKEN", "overwritten", "team-a")
        assert c.coordinator.coordinator.secrets.value("team-a", "HF_TOKEN") == VALUE
        with pytest.raises(ApiError, match="project 'team-b' has no secret 'HF_TOKEN'"):
            await asyncio.to_thread(bob.delete_secret, "HF_TOKEN")
        assert [s.name for s in await asyncio.to_thread(c.api.secrets, "team-a")] == ["HF_TOKEN"]  # admin
        code, out = await asyncio.to_thread(cli, alice, tmp_path, "secret", "delete", "HF_TOKEN")
        assert code == 0, out
        with pytest.raises(ApiError, match=r"env.HF_TOKEN: .* project 'team-a' has no secret"):
            await asyncio.to_thread(alice.submit, parse_spec(JOB))


async def test_the_value_is_never_an_argument(tmp_path: Path) -> None:
    async with cluster() as c:
        code, out = await asyncio.to_thread(cli, c.api, tmp_path, "secret", "set", "HF_TOKEN", VALUE)
        assert code == 2 and "unexpected extra argument" in out.lower()
        code, out = await asyncio.to_thread(cli, c.api, tmp_path, "secret", "set", "bad-name", stdin="v")
        assert code == 1 and "name: expected letters" in out, out


def test_registry_auth_keeps_the_reference_until_the_coordinator_resolves_it() -> None:
    spec = parse_spec(
        "image: busybox\nregistry_auth: {username: bot, password: 'x${{ secrets.REG }}'}\ncommands: [true]\n"
    )
    assert spec.registry_auth is not None and spec.registry_auth.password == "x${{ secrets.REG }}"
    sent = resolved(spec, {"REG": "pw"}.__getitem__)
    assert sent.registry_auth is not None and sent.registry_auth.password == "xpw"
    assert sent.env == spec.env and sent.commands == spec.commands  # nothing else changed


async def test_a_secret_that_no_longer_decrypts_costs_its_job_not_every_sync() -> None:
    """secrets.key replaced (a restore without it): the job gets no value, and the host keeps syncing."""
    async with cluster() as c:
        await asyncio.to_thread(c.api.set_secret, "HF_TOKEN", VALUE)
        c.coordinator.coordinator.secrets.aead = AESGCM(AESGCM.generate_key(bit_length=256))
        c.start_agent("h1", "1xH100:80GB")
        job = await c.submit(JOB)
        log = (await c.full_log(job.id)).decode()
        assert (await c.job(job.id)).status == "done", log
        assert "len=0 " in log

"""Fleets' settings (`gpuctl fleet set`, `gpuctl fleet list`): dstack's `placement: cluster | any`, and
`preemption`. A multi-node job runs only within a cluster fleet; bad settings are one line naming the field.
A real coordinator, real agents with simulated GPUs running plain processes."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from cli.api import Api, ApiError
from cli.config import CliConfig
from shared.spec import SpecError
from shared.spec.fleet import parse_fleet_file
from shared.wire import FleetSet, UserCreate
from tests.harness import Cluster, cluster
from tests.test_arrays import cli
from tests.test_wire_bounds import _answer, _user

PAIR = "name: pair\nnodes: 2\nresources: {gpu: 2}\ncommands: [echo node $GPUCTL_NODE_RANK]\n"


async def both_ready(c: Cluster) -> None:
    """Until hosts a and b have told their inventory: the reasons below name every host."""
    async with asyncio.timeout(30):
        while True:
            if {h.name for h in await asyncio.to_thread(c.api.hosts) if h.inventory} == {"a", "b"}:
                return
            await asyncio.sleep(0.1)


async def test_a_multi_node_job_waits_for_a_cluster_fleet_and_runs_once_its_fleet_is_one(
    tmp_path: Path,
) -> None:
    async with cluster() as c:
        for i, name in enumerate(("a", "b")):
            c.start_agent(name, "2xH100:80GB", internal_ip=f"127.0.0.{i + 1}")
        await both_ready(c)
        single = await c.submit("name: single\nresources: {gpu: 2}\ncommands: [echo one]\n")
        job = await c.submit(PAIR)
        assert (job.status, job.reason) == (
            "pending",
            "no fleet with placement: cluster fits this multi-node job; hosts of fleet default do: "
            "gpuctl fleet set default --placement cluster",
        )
        await c.wait_for(single.id, "done")  # a job of one node runs in any fleet
        code, said = await asyncio.to_thread(
            cli, c.api, tmp_path, "fleet", "set", "default", "--placement", "cluster"
        )
        assert (code, said) == (0, "fleet default: placement cluster, preemption off\n")
        await c.wait_for(job.id, "done")
        code, table = await asyncio.to_thread(cli, c.api, tmp_path, "fleet", "list")
    assert code == 0
    assert [line.split() for line in table.splitlines()] == [
        ["FLEET", "PLACEMENT", "PREEMPTION", "HOSTS", "PROJECTS"],
        ["default", "cluster", "off", "2", "all"],
    ]


async def test_settings_not_given_stay_as_they_were(tmp_path: Path) -> None:
    async with cluster() as c:
        await asyncio.to_thread(cli, c.api, tmp_path, "fleet", "set", "rack", "--placement", "cluster")
        code, said = await asyncio.to_thread(cli, c.api, tmp_path, "fleet", "set", "rack", "--preemption")
        assert (code, said) == (0, "fleet rack: placement cluster, preemption on\n")
        code, said = await asyncio.to_thread(
            cli, c.api, tmp_path, "fleet", "set", "rack", "--placement", "any", "--no-preemption"
        )
        assert (code, said) == (0, "fleet rack: placement any, preemption off\n")


async def test_bad_fleet_settings_are_refused_naming_the_field(tmp_path: Path) -> None:
    async with cluster() as c, _user(c) as user:
        code, said = await asyncio.to_thread(
            cli, c.api, tmp_path, "fleet", "set", "rack", "--placement", "ring"
        )
        assert code == 2 and "Invalid value for '--placement': 'ring' is not one of 'cluster', 'any'" in said
        code, said = await asyncio.to_thread(cli, c.api, tmp_path, "fleet", "set", "rack")
        assert code == 2 and "nothing to set: give --placement and/or --preemption/--no-preemption" in said
        code, said = await asyncio.to_thread(cli, c.api, tmp_path, "fleet", "set", "Rack 1", "--preemption")
        assert (code, said.splitlines()[-1]) == (
            1,
            "Error: name: expected lowercase letters, digits and '-', starting with a letter; got 'Rack 1'",
        )
        answers = []
        for body in ({"name": "rack", "placement": "ring"}, {"name": "rack", "preemption": "yes"}):
            async with user.post("/api/v1/fleets/settings", data=json.dumps(body)) as resp:
                answers.append(await _answer(resp))
        created = await asyncio.to_thread(c.api.create_user, UserCreate(name="mia", project="default"))
        member = Api(CliConfig(c.coordinator.url, created.token, c.coordinator.pki.ca_cert))
        with pytest.raises(ApiError, match="admin"):
            await asyncio.to_thread(member.set_fleet, FleetSet(name="rack", preemption=True))
        fleets = await asyncio.to_thread(member.fleets)  # a member may read them
    assert answers[0] == (
        400,
        {"error": "placement: expected one of any, cluster; got 'ring'", "field": "placement"},
    )
    assert answers[1][0] == 400 and answers[1][1]["field"] == "preemption"
    assert fleets == []  # nothing was set


DSTACK_FLEET = """\
type: fleet
name: my-fleet
placement: cluster
ssh_config:
  user: ubuntu
  identity_file: ~/.ssh/id_rsa
  hosts: [3.255.177.51, 3.255.177.52]
"""


async def test_a_dstack_fleet_file_applies_and_its_host_fields_are_ignored(tmp_path: Path) -> None:
    async with cluster() as c:
        fleet_file = tmp_path / "fleet.dstack.yml"
        fleet_file.write_text(DSTACK_FLEET + "preemption: true\n")
        code, said = await asyncio.to_thread(cli, c.api, tmp_path, "fleet", "apply", str(fleet_file))
        assert code == 0
        assert said.splitlines() == [
            "warning: ignored here (ssh_config): hosts join fleet my-fleet with "
            "`gpuctl token create --fleet my-fleet`",
            "fleet my-fleet: placement cluster, preemption on",
        ]
        fleet_file.write_text("type: fleet\nname: my-fleet\n")  # declarative: what it leaves out is default
        code, said = await asyncio.to_thread(cli, c.api, tmp_path, "fleet", "apply", str(fleet_file))
        assert (code, said) == (0, "fleet my-fleet: placement any, preemption off\n")
        fleet_file.write_text(DSTACK_FLEET.replace("cluster", "ring"))
        code, said = await asyncio.to_thread(cli, c.api, tmp_path, "fleet", "apply", str(fleet_file))
        assert (code, said) == (1, f"Error: {fleet_file}:3: placement: expected cluster or any, got 'ring'\n")


@pytest.mark.parametrize(
    ("text", "error"),
    [
        (
            "type: fleet\nname: f\npreemption: maybe\n",
            "fleet:3: preemption: expected true or false, got 'maybe'",
        ),
        ("type: task\nname: f\n", "fleet:1: type: expected 'fleet', got 'task'"),
        (
            "type: fleet\nname: f\nplacment: cluster\n",
            "fleet:3: placment: unknown field; did you mean 'placement'?",
        ),
        (
            "type: fleet\nplacement: cluster\n",
            "fleet: name: missing; a fleet file has `type: fleet` and a `name`",
        ),
        ("type: fleet\nname: [a, b]\n", "fleet:2: name: expected a string, got a list"),
        ("", "fleet: empty file: a fleet file has `type: fleet` and a `name`"),
    ],
)
def test_a_bad_fleet_file_is_one_line_naming_the_field(text: str, error: str) -> None:
    with pytest.raises(SpecError) as caught:
        parse_fleet_file(text)
    assert str(caught.value) == error

"""Host paths a container may mount: the pure policy, and the scheduler refusing at placement time."""

from __future__ import annotations

import msgspec
import pytest

from agent.blocks import make_blocks
from coordinator.scheduler import HostCapacity, PendingJob, fit, schedule
from shared.spec import parse_spec
from shared.volumes import volume_refusal
from shared.wire import Inventory

PREFIXES = ("/mnt/data", "/scratch/")


@pytest.mark.parametrize(
    "volume", ["/mnt/data:/data", "/mnt/data/sets/a:/a", "/scratch:/s", "/scratch/x/../y:/y", "/mnt/data/:/d"]
)
def test_paths_under_an_allowed_prefix_are_mounted(volume: str) -> None:
    assert volume_refusal(volume, PREFIXES) is None


@pytest.mark.parametrize(
    ("volume", "says"),
    [
        ("/etc:/etc", "/etc is not under an allowed prefix (/mnt/data, /scratch/)"),
        ("/mnt/database:/db", "/mnt/database is not under an allowed prefix"),  # a prefix is whole components
        ("/mnt/data/../../etc:/x", "is not under an allowed prefix"),  # .. cannot climb out
        ("cache:/root/.cache", "named volumes are not supported"),
    ],
)
def test_other_paths_are_refused_with_the_reason(volume: str, says: str) -> None:
    refusal = volume_refusal(volume, PREFIXES)
    assert refusal is not None and refusal.startswith(f"cannot mount {volume}: ") and says in refusal


def test_a_host_with_no_prefixes_allows_no_host_path() -> None:
    assert "docker.volume_prefixes" in (volume_refusal("/mnt/data:/data", ()) or "")


def host_inventory(**policy: object) -> Inventory:
    blocks = make_blocks((), range(4), 4096, 10000, "auto")
    inventory = Inventory("h", 4, 4096, 10000, (), blocks, runtimes=("process", "docker"))
    return msgspec.structs.replace(inventory, **policy)


def test_fit_refuses_a_volume_or_privilege_the_host_does_not_allow() -> None:
    spec = parse_spec("image: busybox\ncommands: [true]\nvolumes: [/etc:/host-etc]\n")
    assert fit(spec, host_inventory(volume_prefixes=("/mnt/data",))) == (
        "cannot mount /etc:/host-etc: /etc is not under an allowed prefix (/mnt/data)"
    )
    assert fit(spec, host_inventory(volume_prefixes=("/",))) == 1
    privileged = parse_spec("image: busybox\ncommands: [true]\nprivileged: true\n")
    assert fit(privileged, host_inventory()) == "does not allow privileged containers"
    assert fit(privileged, host_inventory(privileged_allowed=True)) == 1
    # A plain process mounts nothing: its volumes are not the host's concern.
    assert fit(parse_spec("commands: [true]\nvolumes: [/etc:/x]\n"), host_inventory()) == 1


def test_jobs_that_differ_only_in_volumes_are_placed_each_on_its_merits() -> None:
    hosts = [HostCapacity("id-h", "h", host_inventory(volume_prefixes=("/mnt/data",)))]
    bad = PendingJob("bad", parse_spec("image: b\ncommands: [x]\nvolumes: [/etc:/e]\n"), seq=0)
    good = PendingJob("good", parse_spec("image: b\ncommands: [x]\nvolumes: [/mnt/data:/d]\n"), seq=1)
    result = schedule([bad, good], hosts)
    assert [p.job_id for p in result.placements] == ["good"]
    assert result.pending["bad"].startswith("no host can ever fit this job: h cannot mount /etc:/e")

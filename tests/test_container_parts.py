"""The Docker runtime's pure parts: GPU grants, the container's create arguments, image references and pull
progress, how a container ended, and the agent's docker settings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agent.config import ConfigError, DockerConfig, load_config
from agent.env import job_env
from agent.runtime.container import create_kwargs
from agent.runtime.container_run import exit_of
from agent.runtime.devices import DeviceError, gpu_grant, render_node
from agent.runtime.docker import container_refusal
from agent.runtime.image import ImageError, PullProgress, mirror_reference
from shared.spec import TaskSpec
from shared.states import AllocState
from shared.wire import AllocationSpec, GpuDevice, Inventory


def host(*gpus: GpuDevice) -> Inventory:
    return Inventory("h", 8, 65536, 100000, gpus, ())


def alloc(gpus: tuple[int, ...], **spec: object) -> AllocationSpec:
    task = TaskSpec(commands=("echo hi",), image="busybox", **spec)  # type: ignore[arg-type]
    return AllocationSpec("a-1", "j-1", "job", "run", task, (0,), gpus, (2, 3), 4096)


NVIDIA = [GpuDevice(i, "nvidia", "H100", 81559, uuid=f"GPU-{i}") for i in range(4)]
AMD = [GpuDevice(i, "amd", "MI300X", 196592, pci_bus_id=f"0000:0{i}:00.0") for i in range(2)]


def test_nvidia_gpus_go_by_uuid_and_are_renumbered_inside() -> None:
    grant = gpu_grant(alloc((1, 3)), host(*NVIDIA))
    assert grant.nvidia_uuids == ("GPU-1", "GPU-3")
    assert grant.env == {"CUDA_VISIBLE_DEVICES": "0,1", "NVIDIA_VISIBLE_DEVICES": "GPU-1,GPU-3"}
    assert not grant.device_nodes


def test_a_job_without_gpus_on_an_nvidia_host_sees_none() -> None:
    assert gpu_grant(alloc(()), host(*NVIDIA)).env == {"NVIDIA_VISIBLE_DEVICES": "void"}


def test_simulated_gpus_have_no_devices() -> None:
    simulated = GpuDevice(0, "nvidia", "H100", 81559, uuid="GPU-sim", simulated=True)
    grant = gpu_grant(alloc((0,)), host(simulated))
    assert (grant.nvidia_uuids, grant.device_nodes, grant.env) == ((), (), {})


def test_amd_gpus_are_kfd_and_exactly_their_render_nodes_with_their_groups(tmp_path: Path) -> None:
    for i, minor in ((0, 128), (1, 129)):
        (tmp_path / f"0000:0{i}:00.0" / "drm" / f"renderD{minor}").mkdir(parents=True)
        (tmp_path / f"0000:0{i}:00.0" / "drm" / f"card{i}").mkdir()
    groups = {"/dev/kfd": 993, "/dev/dri/renderD129": 992}
    grant = gpu_grant(
        alloc((1,)), host(*AMD), lambda bdf: render_node(bdf, tmp_path), lambda path: groups[path]
    )
    assert grant.device_nodes == ("/dev/kfd", "/dev/dri/renderD129")
    assert grant.group_ids == (992, 993)
    assert grant.env == {"ROCR_VISIBLE_DEVICES": "0"}


def test_an_amd_gpu_without_a_render_node_is_refused_with_its_address(tmp_path: Path) -> None:
    with pytest.raises(DeviceError, match="no render node for the GPU at 0000:01:00.0"):
        gpu_grant(alloc((1,)), host(*AMD), lambda bdf: render_node(bdf, tmp_path), lambda path: 0)


def test_create_kwargs_carry_the_blocks_share_and_nothing_of_the_hosts_shell() -> None:
    spec = alloc((3,), volumes=("/mnt/data:/data",), env={"HOME": "/root"})
    env = job_env(spec, host(*NVIDIA), "/state/a-1/work")
    assert env["CUDA_VISIBLE_DEVICES"] == "3"  # the host's numbering, right for a plain process
    kwargs = create_kwargs(
        spec, env, gpu_grant(spec, host(*NVIDIA)), "busybox", "h", Path("/state/a-1/work"), 100
    )
    inside = kwargs["environment"]
    assert "PATH" not in inside and "LANG" not in inside  # the image's own
    assert inside["HOME"] == "/root"  # the job asked for it
    assert (inside["GPUCTL_JOB_ID"], inside["DSTACK_GPUS_NUM"]) == ("j-1", "1")
    assert (inside["CUDA_VISIBLE_DEVICES"], inside["NVIDIA_VISIBLE_DEVICES"]) == ("0", "GPU-3")
    assert (kwargs["cpuset_cpus"], kwargs["mem_limit"], kwargs["memswap_limit"]) == ("2,3", "4096m", "4096m")
    assert kwargs["volumes"] == ["/state/a-1/work:/workflow:rw", "/mnt/data:/data:rw"]
    assert kwargs["labels"] == {"gpuctl.allocation": "a-1", "gpuctl.job": "j-1", "gpuctl.host": "h"}
    assert kwargs["security_opt"] == ["no-new-privileges"] and not kwargs["privileged"]
    assert "cap_add" not in kwargs  # Docker's default capability set, never more...
    assert kwargs["cap_drop"] == ["NET_RAW"]  # ...less raw sockets, which see the host's traffic
    assert (kwargs["privileged"], kwargs["network_mode"], kwargs["init"]) == (False, "host", True)
    assert "shm_size" not in kwargs


@pytest.mark.parametrize(
    ("image", "mirror", "expected"),
    [
        ("ubuntu:22.04", None, "ubuntu:22.04"),
        ("ubuntu:22.04", "mirror:5000", "mirror:5000/library/ubuntu:22.04"),
        ("pytorch/pytorch:2.4", "mirror:5000", "mirror:5000/pytorch/pytorch:2.4"),
        (
            "nvcr.io/nvidia/pytorch:24.08-py3",
            "mirror:5000/cache",
            "mirror:5000/cache/nvidia/pytorch:24.08-py3",
        ),
        ("localhost/x@sha256:" + "a" * 64, "m", "m/x@sha256:" + "a" * 64),
        ("mirror:5000/team/x:1", "mirror:5000", "mirror:5000/team/x:1"),
    ],
)
def test_a_mirror_replaces_the_registry_and_keeps_the_path(
    image: str, mirror: str | None, expected: str
) -> None:
    assert mirror_reference(image, mirror) == expected


def test_pull_progress_counts_downloaded_bytes_and_never_goes_back() -> None:
    progress = PullProgress()
    seen = []
    events: list[dict[str, Any]] = [
        {"status": "Pulling from library/x", "id": "1"},
        {"status": "Pulling fs layer", "id": "a"},
        {"status": "Downloading", "id": "a", "progressDetail": {"current": 35, "total": 100}},
        {"status": "Downloading", "id": "b", "progressDetail": {"current": 0, "total": 300}},  # a new layer
        {"status": "Download complete", "id": "a"},
        {"status": "Downloading", "id": "b", "progressDetail": {"current": 300, "total": 300}},
        {"status": "Pull complete", "id": "b"},
    ]
    for event in events:
        if progress.feed(event):
            seen.append(progress.percent)
    assert seen == [35, 100]
    with pytest.raises(ImageError, match="manifest unknown"):
        progress.feed({"error": "manifest unknown\n", "errorDetail": {}})


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        ({"ExitCode": 3, "OOMKilled": False}, (AllocState.EXITED, 3, "")),
        ({"ExitCode": 137, "OOMKilled": True}, (AllocState.FAILED, 137, "out of memory")),
        ({"ExitCode": 0, "OOMKilled": True}, (AllocState.EXITED, 0, "")),  # a child was killed, the job coped
    ],
)
def test_how_a_container_ended(state: dict[str, object], expected: tuple[AllocState, int, str]) -> None:
    ended = exit_of({**state, "FinishedAt": "2023-11-14T22:13:20.123456789Z"})
    assert (ended.state, ended.exit_code, ended.reason) == expected
    assert ended.finished_at == pytest.approx(1_700_000_000.123456789)


def test_docker_settings_in_the_agent_config(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text(
        "coordinator: https://c\n"
        "docker:\n"
        "  socket: /run/other.sock\n"
        "  registry_mirror: mirror:5000/\n"
        "  registry_auth: {username: u, password: p}\n"
        "  volume_prefixes: [/mnt/data]\n"
    )
    docker = load_config(path, {}).docker
    assert (docker.socket, docker.registry_mirror, docker.registry_username) == (
        "unix:///run/other.sock",
        "mirror:5000",
        "u",
    )
    assert (docker.volume_prefixes, docker.allow_privileged) == (("/mnt/data",), False)
    path.write_text("coordinator: https://c\ndocker_socket: /x.sock\n")
    assert load_config(path, {}).docker.socket == "unix:///x.sock"
    for bad, says in [
        ("docker: {socket: 'tcp://h:2375'}", "docker.socket: expected a unix socket path"),
        ("docker: {volume_prefixes: [data]}", "docker.volume_prefixes: expected a list of absolute"),
        ("docker: {sockett: /x}", "docker.sockett: unknown setting"),
    ]:
        path.write_text(f"coordinator: https://c\n{bad}\n")
        with pytest.raises(ConfigError, match=says):
            load_config(path, {})


def test_the_host_refuses_a_symlink_that_leads_out_of_its_prefixes(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "etc").symlink_to("/etc")
    config = DockerConfig(volume_prefixes=(str(tmp_path / "data"),))
    spec = TaskSpec(commands=("true",), image="busybox", volumes=(f"{tmp_path}/data/etc:/x",))
    assert container_refusal(spec, config) == (
        f"cannot mount {tmp_path}/data/etc:/x: it leads to /etc, which is not under an allowed prefix"
    )
    assert container_refusal(TaskSpec(commands=("true",), volumes=(f"{tmp_path}/data:/x",)), config) is None
    privileged = TaskSpec(commands=("true",), privileged=True)
    assert "does not allow privileged" in (container_refusal(privileged, config) or "")


def test_gaudi_goes_through_habana_visible_devices_with_the_hosts_numbering() -> None:
    """Habana's container runtime reads the variable and exposes those host devices."""
    gaudi = host(*(GpuDevice(i, "intel", "Gaudi2", 98304) for i in range(4)))
    spec = alloc((2, 3))
    grant = gpu_grant(spec, gaudi)
    kwargs = create_kwargs(spec, job_env(spec, gaudi, "/w"), grant, "img", "h", Path("/w"), 100)
    assert kwargs["environment"]["HABANA_VISIBLE_DEVICES"] == "2,3"
    assert "device_requests" not in kwargs and "devices" not in kwargs

"""Tests for shared/units.py and the task-spec parser in shared/spec/."""

from __future__ import annotations

import re
import textwrap

import msgspec
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.spec import (
    REDACTED,
    GpuRequest,
    Range,
    RegistryAuth,
    Resources,
    SpecError,
    TaskSpec,
    parse_gpu,
    parse_spec,
    redacted,
    validate_spec,
)
from shared.units import format_duration_s, format_mib, parse_duration_s, parse_memory_mib

GIB = 1024
TIB = 1024 * 1024

# --- units ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected_mib"),
    [
        ("80GB", 80 * GIB),
        ("512MB", 512),
        ("1.5TB", 1536 * GIB),
        ("24 GB", 24 * GIB),
        ("80GiB", 80 * GIB),
        ("80gb", 80 * GIB),
        ("80G", 80 * GIB),
        ("2TiB", 2 * TIB),
        ("100MiB", 100),
        ("0.5GB", 512),
        ("16", 16 * GIB),
        (" 8GB ", 8 * GIB),
        (80, 80 * GIB),
        (1.5, 1536),
        (0, 0),
    ],
)
def test_parse_memory_mib(value: str | int | float, expected_mib: int) -> None:
    assert parse_memory_mib(value) == expected_mib


@pytest.mark.parametrize(
    "value", ["80GX", "", "GB", "-1GB", "1e3GB", "80 G B", "8..16GB", True, None, -1, [1]]
)
def test_parse_memory_mib_rejects(value: object) -> None:
    with pytest.raises(ValueError, match="expected a size like 80GB or 512MB") as caught:
        parse_memory_mib(value)  # type: ignore[arg-type]
    assert "\n" not in str(caught.value)


def test_parse_memory_mib_message_shows_the_value() -> None:
    with pytest.raises(ValueError) as caught:
        parse_memory_mib("80GX")
    assert str(caught.value) == "expected a size like 80GB or 512MB, got '80GX'"


@pytest.mark.parametrize(
    ("value", "expected_s"),
    [
        ("2h", 7200),
        ("30m", 1800),
        ("45s", 45),
        ("1d", 86400),
        ("1w", 7 * 86400),
        ("1h30m", 5400),
        ("1d 2h", 93600),
        ("1H", 3600),
        ("3600", 3600),
        (90, 90),
        (0, 0),
    ],
)
def test_parse_duration_s(value: str | int, expected_s: int) -> None:
    assert parse_duration_s(value) == expected_s


@pytest.mark.parametrize("value", ["2x", "", "h", "-1h", "1.5h", "1h-30m", True, -5, 1.5, None])
def test_parse_duration_s_rejects(value: object) -> None:
    with pytest.raises(ValueError, match="expected a duration like 2h") as caught:
        parse_duration_s(value)  # type: ignore[arg-type]
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("mib", "text"),
    [
        (80 * GIB, "80GB"),
        (512, "512MB"),
        (1536 * GIB, "1.5TB"),
        (1536, "1.5GB"),
        (0, "0MB"),
        (1025, "1025MB"),
    ],
)
def test_format_mib(mib: int, text: str) -> None:
    assert format_mib(mib) == text


@pytest.mark.parametrize(
    ("seconds", "text"), [(0, "0s"), (45, "45s"), (5400, "1h30m"), (86400, "1d"), (90061, "1d1h1m1s")]
)
def test_format_duration_s(seconds: int, text: str) -> None:
    assert format_duration_s(seconds) == text


@pytest.mark.parametrize("formatter", [format_mib, format_duration_s])
def test_formatters_reject_negative(formatter: object) -> None:
    with pytest.raises(ValueError):
        formatter(-1)  # type: ignore[operator]


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=2**50))
def test_format_mib_round_trips(mib: int) -> None:
    assert parse_memory_mib(format_mib(mib)) == mib


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=10**9))
def test_format_duration_s_round_trips(seconds: int) -> None:
    assert parse_duration_s(format_duration_s(seconds)) == seconds


# --- helpers -------------------------------------------------------------------------------------------------


def parse(text: str, environ: dict[str, str] | None = None) -> TaskSpec:
    return parse_spec(textwrap.dedent(text), source="spec.yaml", environ=environ)


def parse_error(text: str, environ: dict[str, str] | None = None) -> SpecError:
    with pytest.raises(SpecError) as caught:
        parse(text, environ)
    message = str(caught.value)
    assert "\n" not in message and len(message.splitlines()) == 1, message
    return caught.value


def gpu_of(gpu_yaml: str) -> GpuRequest | None:
    return parse(f"commands: [nvidia-smi]\nresources:\n  gpu: {gpu_yaml}\n").resources.gpu


# --- valid task files ----------------------------------------------------------------------------------------

FULL_TASK = """\
type: task
name: train-llama
image: nvcr.io/nvidia/pytorch:24.01-py3
env:
  - HF_TOKEN
  - WANDB_MODE=offline
  - EMPTY=
commands:
  - pip install -r requirements.txt
  - torchrun --nproc-per-node $DSTACK_GPUS_PER_NODE train.py
nodes: 1
resources:
  gpu: H100:80GB:8
  cpu: 32..
  memory: 512GB..
  disk: 1TB..
  shm_size: 16GB
volumes:
  - /mnt/data:/data
  - instance_path: /mnt/cache
    path: /root/.cache
    optional: true
working_dir: /workflow
max_duration: 1h30m
priority: 50
fleets: [h100-fleet, spare]
spot_policy: auto
backends: [aws, gcp]
regions: [us-east-1]
idle_duration: 5m
utilization_policy:
  min_gpu_utilization: 10
  time_window: 30m
stop_duration: 5m
files: [.:/workflow]
registry_auth:
  username: $oauthtoken
  password: ${{ env.HF_TOKEN }}
privileged: true
shell: bash
"""


def test_full_dstack_task() -> None:
    spec = parse(FULL_TASK, environ={"HF_TOKEN": "hf_secret", "UNUSED": "x"})
    assert spec == TaskSpec(
        commands=(
            "pip install -r requirements.txt",
            "torchrun --nproc-per-node $DSTACK_GPUS_PER_NODE train.py",
        ),
        type="task",
        name="train-llama",
        image="nvcr.io/nvidia/pytorch:24.01-py3",
        env={"HF_TOKEN": "hf_secret", "WANDB_MODE": "offline", "EMPTY": ""},
        resources=Resources(
            gpu=GpuRequest(
                count=Range(8, 8), vendor="nvidia", names=("H100",), memory_mib=Range(80 * GIB, 80 * GIB)
            ),
            cpu=Range(32, None),
            memory_mib=Range(512 * GIB, None),
            disk_mib=Range(TIB, None),
            shm_size_mib=16 * GIB,
        ),
        nodes=1,
        volumes=("/mnt/data:/data", "/mnt/cache:/root/.cache"),
        working_dir="/workflow",
        max_duration_s=5400,
        priority=50,
        fleets=("h100-fleet", "spare"),
        stop_duration_s=300,
        privileged=True,
        registry_auth=RegistryAuth("$oauthtoken", "hf_secret"),
        shell="bash",
    )


def test_minimal_task_uses_defaults() -> None:
    assert parse("commands: [python train.py]") == TaskSpec(commands=("python train.py",))


def test_single_command_string() -> None:
    assert parse("type: task\ncommands: echo hi\n").commands == ("echo hi",)


def test_commands_are_kept_as_written() -> None:
    spec = parse("commands:\n  - true\n  - 1\n  - 'a: b'\n  - |\n    multi\n    line\n")
    assert spec.commands == ("true", "1", "a: b", "multi\nline\n")


def test_null_optional_fields_are_defaults() -> None:
    spec = parse("commands: [x]\nname:\nimage: ~\nresources:\n  gpu: null\nenv:\n")
    assert spec == TaskSpec(commands=("x",))


def test_parsed_spec_survives_json_round_trip() -> None:
    spec = parse(FULL_TASK, environ={"HF_TOKEN": "t"})
    decoded = msgspec.json.decode(msgspec.json.encode(spec), type=TaskSpec)
    assert validate_spec(decoded) == spec


# --- gpu -----------------------------------------------------------------------------------------------------

GPU_EXAMPLES = [
    ("H100:80GB:2", GpuRequest(Range(2, 2), "nvidia", ("H100",), Range(80 * GIB, 80 * GIB))),
    ("24GB..40GB:2", GpuRequest(Range(2, 2), None, (), Range(24 * GIB, 40 * GIB))),
    ("A10G,A100", GpuRequest(Range(1, 1), "nvidia", ("A10G", "A100"), None)),
    ("amd:2", GpuRequest(Range(2, 2), "amd", (), None)),
    ("1..8", GpuRequest(Range(1, 8), None, (), None)),
    ("8", GpuRequest(Range(8, 8), None, (), None)),
    ("MI300X:8", GpuRequest(Range(8, 8), "amd", ("MI300X",), None)),
    ("nvidia:A100:40GB..:2", GpuRequest(Range(2, 2), "nvidia", ("A100",), Range(40 * GIB, None))),
    ("2:A100", GpuRequest(Range(2, 2), "nvidia", ("A100",), None)),
    ("2..", GpuRequest(Range(2, None), None, (), None)),
    ("nvidia", GpuRequest(Range(1, 1), "nvidia", (), None)),
    ("a100", GpuRequest(Range(1, 1), "nvidia", ("a100",), None)),
    ("Gaudi2:8", GpuRequest(Range(8, 8), "intel", ("Gaudi2",), None)),
    ("RTX4090", GpuRequest(Range(1, 1), "nvidia", ("RTX4090",), None)),
    ("L40S,MI300X", GpuRequest(Range(1, 1), None, ("L40S", "MI300X"), None)),
    ("Foo9000", GpuRequest(Range(1, 1), None, ("Foo9000",), None)),
    ("..40GB", GpuRequest(Range(1, 1), None, (), Range(None, 40 * GIB))),
    ("0..2", GpuRequest(Range(0, 2), None, (), None)),
]


@pytest.mark.parametrize(("text", "expected"), GPU_EXAMPLES)
def test_parse_gpu(text: str, expected: GpuRequest) -> None:
    assert parse_gpu(text) == expected


@pytest.mark.parametrize(("text", "expected"), GPU_EXAMPLES)
def test_gpu_in_spec(text: str, expected: GpuRequest) -> None:
    assert gpu_of(text) == expected


@pytest.mark.parametrize("gpu_yaml", ["0", "'0'", "0..0", "nvidia:0", "{count: 0}"])
def test_zero_gpus_means_no_gpu(gpu_yaml: str) -> None:
    assert gpu_of(gpu_yaml) is None


def test_gpu_mapping_form() -> None:
    gpu = gpu_of("{name: [H100, A100], memory: 40GB.., count: 2, vendor: nvidia, total_memory: 80GB..}")
    assert gpu == GpuRequest(Range(2, 2), "nvidia", ("H100", "A100"), Range(40 * GIB, None))


def test_gpu_mapping_form_defaults_and_inference() -> None:
    assert gpu_of("{name: MI300X}") == GpuRequest(Range(1, 1), "amd", ("MI300X",), None)
    assert gpu_of("{count: 1..4}") == GpuRequest(Range(1, 4), None, (), None)
    assert gpu_of("{name: 'A10G,L4', count: 2}") == GpuRequest(Range(2, 2), "nvidia", ("A10G", "L4"), None)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("tpu", "not supported"),
        ("tpu:v5litepod-8", "not supported"),
        ("v2-8", "not supported"),
        ("0..-1", "count"),
        ("8..2", "count range 8..2 is empty"),
        ("-1", "count must not be negative"),
        ("H100:80GX", "'80GX'"),
        ("40GB..24GB", "memory range 40GB..24GB is empty"),
        ("amd:H100", "H100 is made by nvidia, not amd"),
        ("A100:H100", "more than one name part"),
        ("2:4", "more than one count"),
        ("nvidia:amd", "more than one vendor"),
        ("H100::2", "empty part"),
        ("", "empty part"),
        ("H100 SXM", "unrecognized part"),
        ("..", "count"),
    ],
)
def test_parse_gpu_rejects(text: str, fragment: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_gpu(text)
    assert fragment in str(caught.value)
    assert "\n" not in str(caught.value)


# --- resources -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("resources_yaml", "expected"),
    [
        ("cpu: 8", Resources(cpu=Range(8, 8))),
        ("cpu: 2..8", Resources(cpu=Range(2, 8))),
        ("cpu: ..16", Resources(cpu=Range(None, 16))),
        ("cpu: 0.5", Resources(cpu=Range(0.5, 0.5))),
        ("cpu: {count: 8.., arch: x86}", Resources(cpu=Range(8, None))),
        ("memory: 64GB..", Resources(memory_mib=Range(64 * GIB, None))),
        ("memory: 24GB..40GB", Resources(memory_mib=Range(24 * GIB, 40 * GIB))),
        ("memory: 100GB", Resources(memory_mib=Range(100 * GIB, 100 * GIB))),
        ("memory: 64", Resources(memory_mib=Range(64 * GIB, 64 * GIB))),
        ("memory: 512MB..", Resources(memory_mib=Range(512, None))),
        ("disk: 100GB..", Resources(disk_mib=Range(100 * GIB, None))),
        ("disk: {size: 100GB..}", Resources(disk_mib=Range(100 * GIB, None))),
        ("shm_size: 16GB", Resources(shm_size_mib=16 * GIB)),
        ("shm_size: 512MB", Resources(shm_size_mib=512)),
    ],
)
def test_resources(resources_yaml: str, expected: Resources) -> None:
    assert parse(f"commands: [x]\nresources:\n  {resources_yaml}\n").resources == expected


# --- env -----------------------------------------------------------------------------------------------------


def test_env_list_with_bare_names() -> None:
    spec = parse("commands: [x]\nenv:\n  - A=1\n  - B\n  - C=x=y\n", environ={"B": "from-env"})
    assert spec.env == {"A": "1", "B": "from-env", "C": "x=y"}


def test_env_mapping() -> None:
    spec = parse(
        "commands: [x]\nenv:\n  PORT: 8000\n  DEBUG: true\n  TOKEN:\n  NAME: 'a b'\n", environ={"TOKEN": "t"}
    )
    assert spec.env == {"PORT": "8000", "DEBUG": "true", "TOKEN": "t", "NAME": "a b"}


def test_env_bare_name_without_environ_is_an_error() -> None:
    error = parse_error("commands: [x]\nenv:\n  - A=1\n  - HF_TOKEN\n")
    assert str(error).startswith("spec.yaml:4: env.HF_TOKEN: not set in the environment")
    assert (error.field, error.line, error.source) == ("env.HF_TOKEN", 4, "spec.yaml")


def test_env_bare_name_missing_from_environ() -> None:
    error = parse_error("commands: [x]\nenv:\n  HF_TOKEN:\n", environ={"OTHER": "1"})
    assert str(error).startswith("spec.yaml:3: env.HF_TOKEN: ")


# --- other fields --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "expected_s"), [("30s", 30), ("0", 0), ("5m", 300), ("1h", 3600)])
def test_stop_duration(value: str, expected_s: int) -> None:
    assert parse(f"commands: [x]\nstop_duration: {value}\n").stop_duration_s == expected_s


def test_stop_duration_and_privileged_default_to_the_hosts_choice() -> None:
    spec = parse("commands: [x]\n")
    assert (spec.stop_duration_s, spec.privileged) == (None, False)


@pytest.mark.parametrize(
    ("value", "expected_s"),
    [("2h", 7200), ("30m", 1800), ("1d", 86400), ("90", 90), ("off", None), ("false", None), ("'off'", None)],
)
def test_max_duration(value: str, expected_s: int | None) -> None:
    assert parse(f"commands: [x]\nmax_duration: {value}\n").max_duration_s == expected_s


def test_volumes_are_normalized() -> None:
    spec = parse(
        """\
        commands: [x]
        volumes:
          - /host:/container
          - {instance_path: /a, path: /b, optional: true}
          - {name: my-volume, path: /data}
          - /single:/string
        """
    )
    assert spec.volumes == ("/host:/container", "/a:/b", "my-volume:/data", "/single:/string")


# --- errors: field, line, one line ---------------------------------------------------------------------------

BAD_SPECS = [
    # (yaml, expected start of the message)
    ("type: task\ncomands: [x]\n", "spec.yaml:2: comands: unknown field; did you mean 'commands'?"),
    (
        "commands: [x]\nresources:\n  gpus: 2\n",
        "spec.yaml:3: resources.gpus: unknown field; did you mean 'gpu'?",
    ),
    (
        "commands: [x]\nresources:\n  gpu:\n    nmae: H100\n",
        "spec.yaml:4: resources.gpu.nmae: unknown field; did you mean 'name'?",
    ),
    ("commands: [x]\nzzz: 1\n", "spec.yaml:2: zzz: unknown field"),
    ("type: task\ncommands: [x]\npriority: 5\npriority: high\n", "spec.yaml:4: priority: duplicate field"),
    (
        "type: task\nname: t\ncommands: [x]\npriority: high\n",
        "spec.yaml:4: priority: expected an integer, got 'high'",
    ),
    ("commands: [x]\npriority: 101\n", "spec.yaml:2: priority: must be between 0 and 100"),
    ("commands: [x]\npriority: -1\n", "spec.yaml:2: priority: must be between 0 and 100"),
    ("commands: [x]\nnodes: 0\n", "spec.yaml:2: nodes: must be between 1"),
    ("commands: [x]\nnodes: 1001\n", "spec.yaml:2: nodes: must be between 1 and 1000, got 1001"),
    ("commands: [x]\nnodes: [1]\n", "spec.yaml:2: nodes: expected a single value, got a list"),
    ("type: batch\ncommands: [x]\n", "spec.yaml:1: type: expected one of task, service, dev-environment"),
    ("name: My_Task\ncommands: [x]\n", "spec.yaml:1: name: expected lowercase letters"),
    ("name: " + "a" * 61 + "\ncommands: [x]\n", "spec.yaml:1: name: "),
    ("name: 1abc\ncommands: [x]\n", "spec.yaml:1: name: "),
    ("image: 'a b'\ncommands: [x]\n", "spec.yaml:1: image: must not contain whitespace"),
    ("image: " + "a" * 513 + "\ncommands: [x]\n", "spec.yaml:1: image: too long"),
    ("image: [x]\ncommands: [x]\n", "spec.yaml:1: image: expected a string, got a list"),
    ("name: t\n", "spec.yaml:1: commands: missing"),
    ("name: t\ncommands:\n", "spec.yaml:1: commands: missing"),
    ("commands: []\n", "spec.yaml:1: commands: must not be empty"),
    (
        "commands:\n  - a\n  - b\n  - echo x: y\n",
        "spec.yaml:4: commands[2]: expected a string, got a mapping",
    ),
    ("commands:\n  - a\n  - ~\n", "spec.yaml:3: commands[1]: expected a string, got null"),
    ('commands:\n  - a\n  - "nul\\0"\n', "spec.yaml:3: commands[1]: must not contain NUL"),
    ("commands: {a: b}\n", "spec.yaml:1: commands: expected a list, got a mapping"),
    ("commands: [x]\nenv:\n  - 1BAD=x\n", "spec.yaml:3: env.1BAD: invalid variable name"),
    ("commands: [x]\nenv:\n  - A=1\n  - A=2\n", "spec.yaml:4: env.A: duplicate variable"),
    ("commands: [x]\nenv:\n  - [A]\n", "spec.yaml:3: env[0]: expected a string, got a list"),
    ("commands: [x]\nenv: A=1\n", "spec.yaml:2: env: expected a list of NAME=value or a mapping"),
    ("commands: [x]\nenv:\n  A: [1]\n", "spec.yaml:3: env.A: expected a string, got a list"),
    ("commands: [x]\nenv:\n  'A B': 1\n", "spec.yaml:3: env['A B']: invalid variable name"),
    ("commands: [x]\nresources:\n  gpu: 0..-1\n", "spec.yaml:3: resources.gpu: count must not be negative"),
    ("commands: [x]\nresources:\n  gpu: 8..2\n", "spec.yaml:3: resources.gpu: count range 8..2 is empty"),
    ("commands: [x]\nresources:\n  gpu: tpu\n", "spec.yaml:3: resources.gpu: TPUs are not supported"),
    (
        "commands: [x]\nresources:\n  gpu: tpu-v5p-8\n",
        "spec.yaml:3: resources.gpu: 'tpu-v5p-8': TPUs are not supported",
    ),
    ("commands: [x]\nresources:\n  gpu: H100:80GX\n", "spec.yaml:3: resources.gpu: expected GPU memory"),
    ("commands: [x]\nresources:\n  gpu: true\n", "spec.yaml:3: resources.gpu: expected a GPU spec"),
    ("commands: [x]\nresources:\n  gpu: [H100]\n", "spec.yaml:3: resources.gpu: expected a GPU spec"),
    (
        "commands: [x]\nresources:\n  gpu:\n    count: 0..-1\n",
        "spec.yaml:4: resources.gpu: count must not be negative",
    ),
    (
        "commands: [x]\nresources:\n  gpu:\n    count: lots\n",
        "spec.yaml:4: resources.gpu.count: expected a GPU count",
    ),
    (
        "commands: [x]\nresources:\n  gpu:\n    vendor: google\n",
        "spec.yaml:4: resources.gpu.vendor: TPUs are not supported",
    ),
    (
        "commands: [x]\nresources:\n  gpu:\n    vendor: acme\n",
        "spec.yaml:4: resources.gpu.vendor: expected one of nvidia, amd, intel",
    ),
    (
        "commands: [x]\nresources:\n  gpu:\n    name: [H100, 'bad name']\n",
        "spec.yaml:4: resources.gpu.name: unrecognized part",
    ),
    (
        "commands: [x]\nresources:\n  gpu: {name: H100, vendor: amd}\n",
        "spec.yaml:3: resources.gpu: H100 is made by nvidia",
    ),
    ("commands: [x]\nresources:\n  memory: 64GX\n", "spec.yaml:3: resources.memory: expected a size"),
    (
        "commands: [x]\nresources:\n  memory: 64GB..8GB\n",
        "spec.yaml:3: resources.memory: range 64GB..8GB is empty",
    ),
    ("commands: [x]\nresources:\n  memory: -1GB\n", "spec.yaml:3: resources.memory: expected a size"),
    ("commands: [x]\nresources:\n  cpu: 0..-1\n", "spec.yaml:3: resources.cpu: must not be negative"),
    ("commands: [x]\nresources:\n  cpu: many\n", "spec.yaml:3: resources.cpu: expected a number of cores"),
    (
        "commands: [x]\nresources:\n  cpu:\n    cont: 2\n",
        "spec.yaml:4: resources.cpu.cont: unknown field; did you mean 'count'?",
    ),
    (
        "commands: [x]\nresources:\n  cpu:\n    count: 8..2\n",
        "spec.yaml:4: resources.cpu.count: range 8..2 is empty",
    ),
    (
        "commands: [x]\nresources:\n  disk: {size: 10GB..1GB}\n",
        "spec.yaml:3: resources.disk: range 10GB..1GB is empty",
    ),
    (
        "commands: [x]\nresources:\n  disk: {sise: 1GB}\n",
        "spec.yaml:3: resources.disk.sise: unknown field; did you mean 'size'?",
    ),
    ("commands: [x]\nresources:\n  shm_size: 1GB..\n", "spec.yaml:3: resources.shm_size: expected a size"),
    ("commands: [x]\nresources: 8\n", "spec.yaml:2: resources: expected a mapping, got '8'"),
    ("commands: [x]\nmax_duration: soon\n", "spec.yaml:2: max_duration: expected a duration"),
    ("commands: [x]\nmax_duration: true\n", "spec.yaml:2: max_duration: expected a duration"),
    ("commands: [x]\nmax_duration: 0\n", "spec.yaml:2: max_duration: must be between"),
    ("commands: [x]\nstop_duration: soon\n", "spec.yaml:2: stop_duration: expected a duration like 30s"),
    ("commands: [x]\nstop_duration: 2h\n", "spec.yaml:2: stop_duration: must be between 0s and 1h"),
    ("commands: [x]\nprivileged: yes please\n", "spec.yaml:2: privileged: expected true or false"),
    (
        "commands: [x]\nvolumes:\n  - /a:/b\n  - /only-one-side\n",
        "spec.yaml:4: volumes[1]: expected /host/path:/container/path",
    ),
    (
        "commands: [x]\nvolumes:\n  - /a:relative\n",
        "spec.yaml:3: volumes[0]: the container path must be absolute",
    ),
    ("commands: [x]\nvolumes:\n  - {path: /b}\n", "spec.yaml:3: volumes[0]: expected a mapping with path"),
    (
        "commands: [x]\nvolumes:\n  - {instance_path: /a, path: /b, mode: ro}\n",
        "spec.yaml:3: volumes[0].mode: unknown field",
    ),
    ("commands: [x]\nworking_dir: ''\n", "spec.yaml:2: working_dir: must not be empty"),
    ("commands: [x]\nfleets: [a, '']\n", "spec.yaml:2: fleets[1]: must not be empty"),
    ("commands: [x]\nfleets: {a: 1}\n", "spec.yaml:2: fleets: expected a list, got a mapping"),
    ('commands: [x]\n"a\\nb": 1\n', "spec.yaml:2: ['a\\nb']: unknown field"),
    ("commands: [x]\n[a]: 1\n", "spec.yaml:2: field names must be strings"),
    ("commands: [x]\npriority: !!python/object:os.system 1\n", "spec.yaml:2: priority: invalid value"),
    ("- commands\n", "spec.yaml:1: expected a mapping, got a list"),
    ("just text\n", "spec.yaml:1: expected a mapping, got 'just text'"),
    ("", "spec.yaml:1: empty spec"),
    ("# only a comment\n", "spec.yaml:1: empty spec"),
    ("commands: [x\nname: t\n", "spec.yaml:2: invalid YAML: expected ',' or ']', but got ':'"),
    ("commands: [x]\nname: a: b\n", "spec.yaml:2: invalid YAML: mapping values are not allowed here"),
    ("commands: [x]\n  name: t\n", "spec.yaml:2: invalid YAML: expected <block end>"),
    (
        "commands: [x]\n---\ncommands: [y]\n",
        "spec.yaml:2: invalid YAML: expected a single document in the stream",
    ),
    ("commands: [x]\nname: \x07\n", "spec.yaml:2: invalid YAML: unacceptable character #x0007"),
    ("commands: [x]\nname: *nope\n", "spec.yaml:2: invalid YAML: found undefined alias 'nope'"),
]


@pytest.mark.parametrize(("text", "expected_start"), BAD_SPECS)
def test_bad_spec(text: str, expected_start: str) -> None:
    error = parse_error(text, environ={})
    assert str(error).startswith(expected_start), str(error)


def test_error_carries_field_line_and_source() -> None:
    error = parse_error("commands: [x]\nresources:\n  memory: 64GX\n")
    assert (error.field, error.line, error.source) == ("resources.memory", 3, "spec.yaml")


def test_too_many_env_entries() -> None:
    entries = "".join(f"  - V{i}=1\n" for i in range(1001))
    assert str(parse_error(f"commands: [x]\nenv:\n{entries}")).startswith(
        "spec.yaml:3: env: too many entries"
    )


def test_command_too_long() -> None:
    text = f"commands:\n  - ok\n  - {'x' * (64 * 1024 + 1)}\n"
    assert str(parse_error(text)).startswith("spec.yaml:3: commands[1]: too long")


def test_long_values_are_shortened_in_messages() -> None:
    message = str(parse_error(f"commands: [x]\npriority: {'z' * 10_000}\n"))
    assert len(message) < 200


def test_deep_nesting_is_a_spec_error() -> None:
    assert "invalid YAML" in str(parse_error("[" * 1000))


def test_default_source_is_spec() -> None:
    with pytest.raises(SpecError) as caught:
        parse_spec("priority: 1\n")
    assert (
        str(caught.value) == "spec:1: commands: missing; a task without an image needs at least one command"
    )


# --- validate_spec -------------------------------------------------------------------------------------------


def test_validate_spec_accepts_decoded_json() -> None:
    raw = b'{"commands": ["python x.py"], "resources": {"gpu": {"count": {"min": 1, "max": 8}, "names": ["H100"]}}}'
    spec = validate_spec(msgspec.json.decode(raw, type=TaskSpec))
    assert spec.resources.gpu == GpuRequest(count=Range(1, 8), names=("H100",))


def test_validate_spec_turns_zero_gpus_into_none() -> None:
    spec = TaskSpec(commands=("x",), resources=Resources(gpu=GpuRequest(count=Range(0, 0))))
    assert validate_spec(spec).resources.gpu is None


GOOD = TaskSpec(commands=("x",))


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        (TaskSpec(commands=()), "commands"),
        (TaskSpec(commands=("x", "y" * (64 * 1024 + 1))), "commands[1]"),
        (msgspec.structs.replace(GOOD, type="batch"), "type"),
        (msgspec.structs.replace(GOOD, type="service"), "port"),
        (msgspec.structs.replace(GOOD, name="Bad Name"), "name"),
        (msgspec.structs.replace(GOOD, name="a" * 61), "name"),
        (msgspec.structs.replace(GOOD, image="i" * 513), "image"),
        (msgspec.structs.replace(GOOD, env={"1X": "v"}), "env.1X"),
        (msgspec.structs.replace(GOOD, env={"X": "v" * (64 * 1024 + 1)}), "env.X"),
        (msgspec.structs.replace(GOOD, env={f"V{i}": "" for i in range(1001)}), "env"),
        (msgspec.structs.replace(GOOD, priority=101), "priority"),
        (msgspec.structs.replace(GOOD, nodes=0), "nodes"),
        (msgspec.structs.replace(GOOD, max_duration_s=-1), "max_duration"),
        (msgspec.structs.replace(GOOD, volumes=("nocolon",)), "volumes[0]"),
        (msgspec.structs.replace(GOOD, fleets=("",)), "fleets[0]"),
        (msgspec.structs.replace(GOOD, working_dir=""), "working_dir"),
        (msgspec.structs.replace(GOOD, resources=Resources(cpu=Range(8, 2))), "resources.cpu"),
        (msgspec.structs.replace(GOOD, resources=Resources(cpu=Range(float("nan"), None))), "resources.cpu"),
        (msgspec.structs.replace(GOOD, resources=Resources(memory_mib=Range(-1, None))), "resources.memory"),
        (msgspec.structs.replace(GOOD, resources=Resources(disk_mib=Range(10, 1))), "resources.disk"),
        (msgspec.structs.replace(GOOD, resources=Resources(shm_size_mib=-1)), "resources.shm_size"),
        (
            msgspec.structs.replace(GOOD, resources=Resources(gpu=GpuRequest(count=Range(0, -1)))),
            "resources.gpu",
        ),
        (
            msgspec.structs.replace(GOOD, resources=Resources(gpu=GpuRequest(count=Range(1.5, 2)))),
            "resources.gpu",
        ),
        (msgspec.structs.replace(GOOD, resources=Resources(gpu=GpuRequest(vendor="tpu"))), "resources.gpu"),
        (msgspec.structs.replace(GOOD, resources=Resources(gpu=GpuRequest(names=("a b",)))), "resources.gpu"),
        (
            msgspec.structs.replace(GOOD, resources=Resources(gpu=GpuRequest(vendor="amd", names=("H100",)))),
            "resources.gpu",
        ),
    ],
)
def test_validate_spec_rejects(spec: TaskSpec, field: str) -> None:
    with pytest.raises(SpecError) as caught:
        validate_spec(spec)
    assert caught.value.field == field
    assert caught.value.line is None
    assert str(caught.value).startswith(f"spec: {field}: ")
    assert "\n" not in str(caught.value)


# --- fuzzing -------------------------------------------------------------------------------------------------


def parses_or_spec_error(text: str) -> None:
    """`parse_spec` either returns a valid TaskSpec or raises a SpecError of one line per problem; nothing
    else."""
    try:
        spec = parse_spec(text, source="fuzz.yaml", environ={"HF_TOKEN": "t"})
    except SpecError as error:
        lines = str(error).split("\n")
        assert lines == [str(e) for e in error.errors]
        assert all(line.startswith("fuzz.yaml") and "\r" not in line for line in lines)
        return
    assert isinstance(spec, TaskSpec)
    assert validate_spec(spec) == spec
    assert msgspec.json.decode(msgspec.json.encode(spec), type=TaskSpec) == spec


FUZZ_SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
YAML_ALPHABET = st.sampled_from(list(":-[]{},.'\"#&*!|>%@`?\n \t0123456789abcdeGBHhmo~=/\\") + ["\x00"])


@FUZZ_SETTINGS
@given(st.text())
def test_fuzz_random_text(text: str) -> None:
    parses_or_spec_error(text)


@FUZZ_SETTINGS
@given(st.text(YAML_ALPHABET, max_size=200))
def test_fuzz_yaml_like_text(text: str) -> None:
    parses_or_spec_error(text)


@st.composite
def mutated_spec(draw: st.DrawFn) -> str:
    """FULL_TASK with a few random edits: deletions, insertions, replaced and duplicated lines."""
    text = FULL_TASK
    for _ in range(draw(st.integers(1, 4))):
        position = draw(st.integers(0, len(text)))
        edit = draw(st.sampled_from(["delete", "insert", "replace_line", "duplicate_line"]))
        if edit == "delete":
            text = text[:position] + text[position + draw(st.integers(1, 20)) :]
        elif edit == "insert":
            text = text[:position] + draw(st.text(YAML_ALPHABET, max_size=10)) + text[position:]
        else:
            lines = text.splitlines(keepends=True) or [""]
            index = position % len(lines)
            new = draw(st.text(YAML_ALPHABET, max_size=30)) + "\n" if edit == "replace_line" else lines[index]
            text = "".join(lines[:index] + [new] + lines[index + (edit == "replace_line") :])
    return text


@FUZZ_SETTINGS
@given(mutated_spec())
def test_fuzz_mutated_spec(text: str) -> None:
    parses_or_spec_error(text)


YAML_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats()
    | st.text(max_size=20)
    | st.sampled_from(["8", "2..8", "0..-1", "80GB", "24GB..40GB", "H100:2", "off", "1h", "A=b", "/a:/b"]),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
FIELD_NAMES = st.sampled_from(
    [
        "type",
        "name",
        "image",
        "commands",
        "env",
        "resources",
        "nodes",
        "volumes",
        "working_dir",
        "max_duration",
    ]
    + ["priority", "fleets", "retry", "gpu", "cpu", "memory", "disk", "shm_size", "count", "size", "path"]
)
RESOURCE_VALUES = st.dictionaries(st.sampled_from(["gpu", "cpu", "memory", "disk", "shm_size"]), YAML_VALUES)


@FUZZ_SETTINGS
@given(
    st.dictionaries(FIELD_NAMES, YAML_VALUES, max_size=6),
    st.none() | RESOURCE_VALUES,
    st.lists(st.text(max_size=10), min_size=1, max_size=3),
)
def test_fuzz_structured_values(fields: dict[str, object], resources: object, commands: list[str]) -> None:
    document = {"commands": commands, **fields}
    if resources is not None:
        document["resources"] = resources
    parses_or_spec_error(yaml.safe_dump(document, allow_unicode=True))


# --- compute capability (DRA-style attribute of the mapping form) ------------------------------------------


def test_gpu_mapping_with_compute_capability() -> None:
    gpu = gpu_of("{vendor: nvidia, name: [H100, A100], memory: 40GB.., compute_capability: 8.0.., count: 2}")

    assert gpu == GpuRequest(Range(2, 2), "nvidia", ("H100", "A100"), Range(40 * GIB, None), Range(8.0, None))


@pytest.mark.parametrize(
    ("text", "capability"),
    [
        ("9.0", Range(9.0, None)),
        ("9", Range(9.0, None)),
        ("8.0..8.9", Range(8.0, 8.9)),
        ("..8.6", Range(None, 8.6)),
    ],
)
def test_compute_capability_forms_imply_nvidia(text: str, capability: Range) -> None:
    gpu = gpu_of(f"{{compute_capability: {text}}}")

    assert gpu is not None and (gpu.vendor, gpu.compute_capability) == ("nvidia", capability)


@pytest.mark.parametrize(
    ("gpu_yaml", "message"),
    [
        (
            "{compute_capability: x}",
            "spec.yaml:3: resources.gpu.compute_capability: expected a compute capability like 8.0, 8.0.. or 8.0..9.0, got 'x'",
        ),
        (
            "{compute_capability: 8.10}",
            "spec.yaml:3: resources.gpu.compute_capability: expected a compute capability like 8.0, 8.0.. or 8.0..9.0, got '8.10'",
        ),
        (
            "{name: MI300X, compute_capability: 9.0..}",
            "spec.yaml:3: resources.gpu: compute_capability applies to NVIDIA GPUs only, not amd",
        ),
        (
            "{vendor: intel, compute_capability: 9.0..}",
            "spec.yaml:3: resources.gpu: compute_capability applies to NVIDIA GPUs only, not intel",
        ),
        (
            "{compute_capability: 9.0..8.0}",
            "spec.yaml:3: resources.gpu: compute_capability range 9.0..8.0 is empty: min is greater than max",
        ),
    ],
)
def test_bad_compute_capability(gpu_yaml: str, message: str) -> None:
    with pytest.raises(SpecError) as caught:
        gpu_of(gpu_yaml)

    assert str(caught.value) == message


@pytest.mark.parametrize(
    ("gpu", "fragment"),
    [
        (GpuRequest(vendor="amd", compute_capability=Range(9.0, None)), "NVIDIA GPUs only, not amd"),
        (GpuRequest(compute_capability=Range(-1.0, None)), "must not be negative"),
        (GpuRequest(compute_capability=Range(120.0, None)), "at most 99.9, got 120.0"),
    ],
)
def test_compute_capability_from_json_is_validated(gpu: GpuRequest, fragment: str) -> None:
    spec = TaskSpec(commands=("true",), resources=Resources(gpu=gpu))

    with pytest.raises(SpecError, match=re.escape(fragment)):
        validate_spec(spec)


def test_registry_auth_takes_its_secret_from_env_where_a_bare_name_reads_the_submitters_environment() -> None:
    text = (
        "image: nvcr.io/nvidia/pytorch:24.01-py3\ncommands: [x]\n"
        "registry_auth: {username: '$oauthtoken', password: 'key-${{ env.NGC_KEY }}'}\nenv: [NGC_KEY]\n"
    )
    spec = parse(text, environ={"NGC_KEY": "s3cret"})
    assert spec.registry_auth == RegistryAuth("$oauthtoken", "key-s3cret")
    assert redacted(spec).registry_auth == RegistryAuth("$oauthtoken", REDACTED)
    assert redacted(spec).env == spec.env and redacted(TaskSpec(commands=("x",))) == TaskSpec(commands=("x",))


@pytest.mark.parametrize(
    ("auth", "message"),
    [
        (
            "{username: u}",
            "spec.yaml:3: registry_auth.password: missing; registry_auth needs a username and a password",
        ),
        (
            "{username: u, password: p, token: t}",
            "spec.yaml:3: registry_auth.token: unknown field; expected one of",
        ),
        (
            "{username: u, password: '${{ env.NOPE }}'}",
            "registry_auth.password: ${{ env.NOPE }}: 'NOPE' is not in env",
        ),
        ("{username: u, password: '${{ run.id }}'}", "only ${{ env.NAME }} or ${{ secrets.NAME }} can be"),
        ("{username: '', password: p}", "spec.yaml:3: registry_auth.username: must not be empty"),
        ("[u, p]", "spec.yaml:3: registry_auth: expected a mapping, got a list"),
    ],
)
def test_registry_auth_errors_name_the_field(auth: str, message: str) -> None:
    with pytest.raises(SpecError) as error:
        parse(f"image: x\ncommands: [x]\nregistry_auth: {auth}\n")
    assert message in str(error.value)


def test_registry_auth_without_an_image_is_refused() -> None:
    with pytest.raises(SpecError, match="registry_auth: only a job with an image pulls one"):
        parse("commands: [x]\nregistry_auth: {username: u, password: p}\n")

"""dstack's task files field by field: what acts, what is warned about, what is refused; every problem of a
file reported at once; compute_capability as dstack means it."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import msgspec
import pytest

from cli.main import Submission, build_spec, upload_files
from coordinator.scheduler import schedule
from shared.spec import (
    TASK_FIELD_GROUPS,
    FieldGroup,
    Range,
    Repo,
    RetryPolicy,
    SpecError,
    TaskFile,
    TaskSpec,
    parse_spec,
    parse_task,
    validate_spec,
)
from tests.test_scheduler import host, job

# Every field of dstack's TaskConfiguration (src/dstack/_internal/core/models/configurations.py and
# profiles.py): the run configuration's base fields, commands, ports, nodes, groups, and the profile
# parameters, with the deprecated ones dstack still accepts.
DSTACK_TASK_FIELDS = [
    "type",
    "name",
    "image",
    "user",
    "privileged",
    "entrypoint",
    "working_dir",
    "home_dir",
    "registry_auth",
    "python",
    "nvcc",
    "single_branch",
    "env",
    "shell",
    "resources",
    "priority",
    "volumes",
    "docker",
    "repos",
    "files",
    "dstack",
    "setup",
    "commands",
    "ports",
    "nodes",
    "groups",
    "backends",
    "regions",
    "availability_zones",
    "instance_types",
    "reservation",
    "spot_policy",
    "retry",
    "max_duration",
    "stop_duration",
    "max_price",
    "creation_policy",
    "idle_duration",
    "utilization_policy",
    "startup_order",
    "stop_criteria",
    "schedule",
    "fleets",
    "instances",
    "tags",
    "backend_options",
    "pool_name",
    "instance_name",
    "retry_policy",
    "termination_policy",
    "termination_idle_time",
]

# A value of each refused field that asks for something.
REFUSED_VALUES = {
    "ports": "[8080]",
    "entrypoint": "/bin/sh",
    "user": "ubuntu",
    "single_branch": "false",
    "docker": "true",
    "nvcc": "true",
    "dstack": "true",
    "instances": "[my-fleet-3]",
}


def parse(text: str, environ: dict[str, str] | None = None) -> TaskFile:
    return parse_task(textwrap.dedent(text), source="t.yaml", environ=environ)


def error(text: str) -> str:
    with pytest.raises(SpecError) as caught:
        parse(text)
    return str(caught.value)


# --- the field table -------------------------------------------------------------------------------------


@pytest.mark.parametrize("field", DSTACK_TASK_FIELDS)
def test_every_dstack_task_field_is_in_exactly_one_group(field: str) -> None:
    assert isinstance(TASK_FIELD_GROUPS[field], FieldGroup)


def test_only_fields_of_dstack_tasks_are_in_the_table() -> None:
    assert set(TASK_FIELD_GROUPS) - set(DSTACK_TASK_FIELDS) == {"lost_after"}  # gpuctl's own


@pytest.mark.parametrize("field", [f for f, g in TASK_FIELD_GROUPS.items() if g is FieldGroup.REFUSED])
def test_refused_fields_are_one_line_errors_unless_they_ask_for_nothing(field: str) -> None:
    message = error(f"commands: [x]\n{field}: {REFUSED_VALUES[field]}\n")
    assert message.startswith(f"t.yaml:2: {field}: not supported"), message
    assert error(f"commands: [x]\n{field}: 0\n").startswith(f"t.yaml:2: {field}: not supported")
    for nothing in ("null", "false", "[]", "{}"):
        if not (field == "single_branch" and nothing == "false"):
            assert parse(f"commands: [x]\n{field}: {nothing}\n").spec.commands == ("x",)


def test_docker_and_nvcc_say_what_to_use_instead() -> None:
    assert error("commands: [x]\ndocker: true\n") == (
        "t.yaml:2: docker: not supported: docker: true; use an image with dockerd and `privileged: true` on "
        "a host that allows it"
    )
    assert "nvcr.io/nvidia/cuda:12.4.1-devel-ubuntu22.04" in error("commands: [x]\nnvcc: true\n")
    assert parse("commands: [x]\nsingle_branch: true\n").warnings == ()


def test_dstacks_multi_node_fields_act() -> None:
    assert parse("commands: [x]\nnodes: 2\n").spec.nodes == 2
    spec = parse(
        "groups: [{commands: [x]}, {nodes: 2, commands: [y]}]\nstartup_order: workers-first\n"
        "stop_criteria: master-done\n"
    ).spec
    assert (spec.nodes, spec.startup_order, spec.stop_criteria) == (3, "workers-first", "master-done")


def test_the_shipped_nccl_tests_example_parses_as_dstack_writes_it() -> None:
    text = (Path(__file__).parent.parent / "examples" / "nccl-tests.yaml").read_text()
    spec = parse_spec(text)
    validate_spec(spec)
    assert (spec.nodes, spec.startup_order, spec.stop_criteria) == (2, "workers-first", "master-done")
    assert "--hostfile $DSTACK_MPI_HOSTFILE" in spec.commands[0]


def test_a_task_that_asks_for_the_dstack_cli_is_refused_by_name() -> None:
    text = """\
        type: task
        image: example/cli
        dstack: true
        env: [API_TOKEN]
        commands: [cli list]
        """
    with pytest.raises(SpecError) as caught:
        parse(text, environ={"API_TOKEN": "t"})
    assert str(caught.value).startswith("t.yaml:3: dstack: not supported: there is no dstack server here")
    assert parse(text.replace("true", "false"), environ={"API_TOKEN": "t"}).spec.commands == ("cli list",)


def test_instances_are_refused_with_fleets_as_the_way_to_choose_hosts() -> None:
    message = error("""\
        commands: [x]
        instances:
          - name: gpu-box-2
          - hostname: 10.0.0.7
          - {fleet: lab, instance: 1}
        """)
    assert message.startswith("t.yaml:3: instances: not supported yet"), message
    assert "fleets" in message


def test_backend_options_are_cloud_only() -> None:
    task = parse("""\
        commands: [x]
        backend_options:
          - type: vastai
            min_reliability: 0.95
        """)
    assert task.warnings == ("ignored on-prem (cloud-only): backend_options",)


def test_cloud_only_fields_are_accepted_with_one_warning_line() -> None:
    task = parse("""\
        commands: [x]
        backends: [aws, gcp]
        regions: [us-east-1]
        spot_policy: auto
        max_price: 1.5
        """)
    assert task.warnings == ("ignored on-prem (cloud-only): backends, regions, spot_policy, max_price",)
    assert task.spec == TaskSpec(commands=("x",))


def test_every_cloud_only_and_deprecated_field_warns() -> None:
    quiet = [f for f, g in TASK_FIELD_GROUPS.items() if g in (FieldGroup.CLOUD_ONLY, FieldGroup.DEPRECATED)]
    task = parse("commands: [x]\n" + "".join(f"{field}: 1\n" for field in quiet))
    assert len(task.warnings) == 2
    assert sorted(", ".join(w.split(": ", 1)[1] for w in task.warnings).split(", ")) == sorted(quiet)
    assert task.warnings[1].startswith("ignored (deprecated in dstack, no effect): home_dir")


def test_a_file_without_those_fields_has_no_warnings() -> None:
    assert parse("commands: [x]\n").warnings == ()


# --- unknown fields --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("repo: [.]", "t.yaml:2: repo: unknown field; did you mean 'repos'?"),
        ("region: [x]", "did you mean 'regions'? (a cloud-only field: accepted, but ignored on-prem)"),
        ("retries: 3", "did you mean 'retry'?"),
        ("gpu: H100", "t.yaml:2: gpu: unknown field; gpu belongs under resources (resources: {gpu: ...})"),
        ("port: 80", "t.yaml:2: port: belongs to services; add `type: service` (or remove port)"),
        ("ide: vscode", "t.yaml:2: ide: unknown field; ide is for type: dev-environment"),
    ],
)
def test_unknown_fields_never_point_at_a_field_of_another_kind_unsaid(text: str, expected: str) -> None:
    assert expected in error(f"commands: [x]\n{text}\n")


def test_repos_is_a_field_now() -> None:
    assert parse("commands: [x]\nrepos: [.]\n").files == ((".", "."),)


# --- all problems at once --------------------------------------------------------------------------------


def test_a_bad_gpu_and_a_bad_memory_are_both_reported() -> None:
    with pytest.raises(SpecError) as caught:
        parse("""\
            commands: [x]
            resources:
              memory: 64GX
              gpu: H100:80GQ
            """)
    assert [(e.line, e.field) for e in caught.value.errors] == [(3, "resources.memory"), (4, "resources.gpu")]
    lines = str(caught.value).splitlines()
    assert [line.split(": ")[:2] for line in lines] == [
        ["t.yaml:3", "resources.memory"],
        ["t.yaml:4", "resources.gpu"],
    ]


def test_problems_of_several_fields_come_sorted_by_line() -> None:
    with pytest.raises(SpecError) as caught:
        parse("commands: [x]\npriority: 500\nbackends: [aws]\nname: Bad_Name\ncomands: [y]\nnodes: 0\n")
    assert [e.line for e in caught.value.errors] == [2, 4, 5, 6]
    assert (caught.value.field, caught.value.line) == ("priority", 2)


def test_one_problem_is_its_own_only_error() -> None:
    with pytest.raises(SpecError) as caught:
        parse("commands: [x]\npriority: 500\n")
    assert caught.value.errors == (caught.value,)


def test_an_env_in_error_does_not_also_blame_registry_auth() -> None:
    message = error("image: i\nenv: [A, A]\nregistry_auth: {username: u, password: '${{ env.A }}'}\n")
    assert message == "t.yaml:2: env.A: not set in the environment; set it, or write A=value"


def test_validate_spec_reports_every_problem() -> None:
    spec = TaskSpec(commands=(), priority=500, shell="zsh", python="3", root_files_archive="x")
    with pytest.raises(SpecError) as caught:
        validate_spec(spec)
    assert {e.field for e in caught.value.errors} == {"priority", "shell", "python", "files", "commands"}


def test_the_cli_prints_each_problem_on_its_own_line(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("commands: [x]\nresources: {memory: 64GX, gpu: H100:80GQ}\n")
    run = subprocess.run(
        [sys.executable, "-c", "from cli.main import main; main()", "submit", "-f", "bad.yaml"],
        env=dict(os.environ, GPUCTL_CONFIG=str(tmp_path / "none.yaml")),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 1 and "Traceback" not in run.stderr
    first, second = run.stderr.strip().splitlines()
    assert first.startswith("Error: bad.yaml:2: resources.memory: ")
    assert second.startswith("bad.yaml:2: resources.gpu: ")


# --- compute_capability ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("8.0", Range(8.0, None)),
        ("9", Range(9.0, None)),
        ("8.0..8.9", Range(8.0, 8.9)),
        ("..8.6", Range(None, 8.6)),
    ],
)
def test_a_bare_compute_capability_is_a_minimum(text: str, expected: Range) -> None:
    spec = parse(f"commands: [x]\nresources:\n  gpu: {{compute_capability: {text}}}\n").spec
    assert spec.resources.gpu is not None and spec.resources.gpu.compute_capability == expected


def test_an_h100_matches_compute_capability_8() -> None:
    result = schedule([job("j", "gpu: {compute_capability: 8.0}")], [host(gpus=["H100"])])
    assert [p.job_id for p in result.placements] == ["j"]
    result = schedule([job("j", "gpu: {compute_capability: 8.0..8.9}")], [host(gpus=["H100"])])
    assert result.placements == []


# --- python, shell, commands -----------------------------------------------------------------------------


def test_python_and_shell_act() -> None:
    spec = parse("python: 3.10\nshell: bash\ncommands: [x]\n").spec
    assert (spec.python, spec.shell, spec.image) == ("3.10", "bash", None)
    assert parse("shell: /usr/bin/zsh\ncommands: [x]\n").spec.shell == "/usr/bin/zsh"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("python: '3'\n", "t.yaml:2: python: expected a Python version like 3.11, got '3'"),
        ("python: python3.11\n", "t.yaml:2: python: expected a Python version"),
        (
            "shell: zsh\n",
            "t.yaml:2: shell: expected sh, bash or an absolute path like /usr/bin/zsh, got 'zsh'",
        ),
        ("shell: '/bin/my shell'\n", "t.yaml:2: shell: expected sh, bash or an absolute path"),
        ("image: i\npython: '3.11'\n", "t.yaml:3: python: python and image cannot be used together"),
    ],
)
def test_bad_python_and_shell(text: str, expected: str) -> None:
    assert error("commands: [x]\n" + text).startswith(expected)


def test_an_image_without_commands_runs_its_entrypoint() -> None:
    assert parse("image: busybox\n").spec == TaskSpec(image="busybox")
    assert parse("image: busybox\ncommands: []\n").spec.commands == ()


def test_no_image_and_no_commands_fails_on_commands() -> None:
    assert (
        error("name: t\n")
        == "t.yaml:1: commands: missing; a task without an image needs at least one command"
    )
    assert error("name: t\ncommands: []\n") == (
        "t.yaml:2: commands: must not be empty; a task without an image needs at least one command"
    )
    assert error("python: '3.11'\n").startswith("t.yaml:1: commands: missing")


# --- repos -----------------------------------------------------------------------------------------------


def test_local_repos_are_files() -> None:
    task = parse("""\
        commands: [x]
        repos:
          - .
          - local_path: ../lib
            path: lib
          - ../other:/workflow/other
        """)
    assert task.files == ((".", "."), ("../lib", "lib"), ("../other", "other"))
    assert task.spec.repos == ()


def test_remote_repos_travel_in_the_spec() -> None:
    task = parse("""\
        commands: [x]
        repos:
          - https://github.com/org/repo.git
          - git@github.com:org/repo.git:src
          - https://git.example.com:8443/org/repo.git
          - url: ssh://git@host/org/repo.git
            branch: release/1.2
            hash: 0123abcd
            path: /workflow/code
        """)
    assert task.spec.repos == (
        Repo("https://github.com/org/repo.git"),
        Repo("git@github.com:org/repo.git", path="src"),
        Repo("https://git.example.com:8443/org/repo.git"),
        Repo("ssh://git@host/org/repo.git", branch="release/1.2", hash="0123abcd", path="code"),
    )
    assert task.files == ()


@pytest.mark.parametrize(
    ("repo", "expected"),
    [
        ("ftp://host/r.git", "t.yaml:3: repos[0].url: expected a git URL"),
        ("{url: https://h/r.git, branch: 'a b'}", "t.yaml:3: repos[0].branch: expected a branch name"),
        ("{url: https://h/r.git, branch: -x}", "t.yaml:3: repos[0].branch: expected a branch name"),
        ("{url: https://h/r.git, hash: xyz}", "t.yaml:3: repos[0].hash: expected a commit hash"),
        ("{url: https://h/r.git, path: ../x}", "t.yaml:3: repos[0].path: the path must stay inside"),
        ("{url: https://h/r.git, path: /opt/x}", "t.yaml:3: repos[0].path: the path must be relative"),
        ("{local_path: ., branch: main}", "t.yaml:3: repos[0]: branch and hash apply to a remote repository"),
        ("{local_path: ., url: https://h/r.git}", "t.yaml:3: repos[0]: expected a mapping with one of"),
        ("{url: https://h/r.git, if_exists: skip}", "t.yaml:3: repos[0].if_exists: only 'error'"),
        ("'-oProxyCommand=x@host:r'", "t.yaml:3: repos[0].url: expected a git URL"),
        ("a:b:c", "t.yaml:3: repos[0]: expected LOCAL, LOCAL:PATH, URL or URL:PATH"),
    ],
)
def test_bad_repos(repo: str, expected: str) -> None:
    assert error(f"commands: [x]\nrepos:\n  - {repo}\n").startswith(expected)


def test_a_local_repo_at_an_absolute_path_needs_a_container() -> None:
    assert parse("image: i\nrepos: ['.:/opt/code']\n").root_files == ((".", "/opt/code"),)
    assert error("commands: [x]\nrepos: ['.:/opt/code']\n").startswith("t.yaml:2: repos: an absolute path")


# --- files at absolute paths -----------------------------------------------------------------------------


def test_files_at_absolute_paths_go_to_root_files() -> None:
    task = parse("""\
        image: busybox
        files:
          - ~/.ssh/id_rsa:/root/.ssh/id_rsa
          - .:/workflow
          - src:/opt//src/
        """)
    assert task.root_files == (("~/.ssh/id_rsa", "/root/.ssh/id_rsa"), ("src", "/opt/src"))
    assert task.files == ((".", "."),)


def test_files_at_absolute_paths_need_a_container() -> None:
    assert error("commands: [x]\nfiles:\n  - a\n  - a:/root/a\n") == (
        "t.yaml:4: files: an absolute path needs a container (image:); a plain process can only take paths in "
        "its working directory"
    )
    assert parse("python: '3.11'\ncommands: [x]\nfiles: [a:/root/a]\n").root_files == (("a", "/root/a"),)
    assert error("image: i\nfiles: ['a:/']\n").startswith("t.yaml:2: files[0]: the path must name")


# --- validate_spec on a spec sent to the API -------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"root_files_archive": "ab"}, "spec: files: the archive id must be 64 lowercase hex digits"),
        ({"shell": "fish"}, "spec: shell: expected sh, bash or an absolute path"),
        ({"python": "2"}, "spec: python: expected a Python version"),
        ({"image": "i", "python": "3.11"}, "spec: python: python and image cannot be used together"),
        ({"commands": ()}, "spec: commands: missing; a task without an image needs at least one command"),
        ({"root_files_archive": "a" * 64}, "spec: files: an absolute path needs a container"),
        ({"repos": (Repo("file:///etc"),)}, "spec: repos[0].url: expected a git URL"),
        (
            {"repos": (Repo("https://h/r.git", path="../x"),)},
            "spec: repos[0].path: expected a normalized path",
        ),
        ({"repos": (Repo("https://h/r.git", hash="zz"),)}, "spec: repos[0].hash: expected a commit hash"),
    ],
)
def test_validate_spec_checks_the_new_fields(changes: dict[str, object], expected: str) -> None:
    spec = msgspec.structs.replace(TaskSpec(commands=("x",)), **changes)
    with pytest.raises(SpecError) as caught:
        validate_spec(spec)
    assert str(caught.value).startswith(expected), str(caught.value)


def test_validate_spec_accepts_what_the_parser_makes() -> None:
    spec = parse_spec("image: i\nshell: sh\nrepos: [https://h/r.git]\n")
    spec = msgspec.structs.replace(spec, root_files_archive="a" * 64)
    assert validate_spec(spec) == spec
    python = msgspec.structs.replace(
        parse_spec("python: '3.12'\ncommands: [x]\n"), root_files_archive="a" * 64
    )
    assert validate_spec(python) == python


# --- the CLI: warnings and the second archive ------------------------------------------------------------


class FakeApi:
    def __init__(self) -> None:
        self.uploads: list[bytes] = []

    def upload_files(self, archive: bytes) -> str:
        self.uploads.append(archive)
        return f"{len(self.uploads):064x}"


def members(archive: bytes) -> dict[str, bytes | None]:
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        return {m.name: (tar.extractfile(m).read() if m.isfile() else None) for m in tar}  # type: ignore[union-attr]


def test_submit_warns_and_uploads_root_files_in_their_own_archive(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "train.py").write_text("print(1)\n")
    (tmp_path / "key").write_text("secret\n")
    task = tmp_path / "task.yaml"
    task.write_text("image: busybox\nbackends: [aws]\nfiles: [train.py, key:/root/.ssh/id_rsa]\n")

    submission = build_spec(task, None, None, None, ())
    assert capsys.readouterr().err == "warning: ignored on-prem (cloud-only): backends\n"
    client = FakeApi()
    spec = upload_files(client, submission)  # type: ignore[arg-type]

    assert (spec.files_archive, spec.root_files_archive) == (f"{1:064x}", f"{2:064x}")
    assert members(client.uploads[0]) == {"train.py": b"print(1)\n"}
    assert members(client.uploads[1]) == {"root/.ssh/id_rsa": b"secret\n"}


def test_submit_without_root_files_uploads_one_archive(tmp_path: Path) -> None:
    client = FakeApi()
    submission = Submission(TaskSpec(commands=("x",)), (), tmp_path)
    assert upload_files(client, submission) == TaskSpec(commands=("x",))  # type: ignore[arg-type]
    assert client.uploads == []


def test_files_flags_at_absolute_paths_need_an_image(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as caught:
        build_spec(None, None, None, None, ("true",), ("a:/root/a",))
    assert str(caught.value).startswith("submit: files: an absolute path needs a container")
    assert build_spec(None, None, None, "busybox", ("true",), ("a:/root/a",)).root_files == (
        ("a", "/root/a"),
    )


# --- retry and lost_after ---------------------------------------------------------------------------------


def test_retry_true_retries_on_every_event_for_an_hour() -> None:
    assert parse("commands: [x]\nretry: true\n").spec.retry == RetryPolicy(
        ("no-capacity", "error", "interruption"), 3600
    )
    assert parse("commands: [x]\nretry: false\n").spec.retry is None


def test_retry_takes_dstacks_mapping() -> None:
    spec = parse("commands: [x]\nretry: {on_events: [error, interruption], duration: 30m}\n").spec
    assert spec.retry == RetryPolicy(("error", "interruption"), 1800)
    assert parse("commands: [x]\nretry: {duration: 2h}\n").spec.retry == RetryPolicy(duration_s=7200)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("retry: {on_events: [crash]}", "t.yaml:2: retry.on_events[0]: expected one of no-capacity, error"),
        ("retry: {on_events: []}", "t.yaml:2: retry.on_events: must name at least one of"),
        ("retry: {duration: soon}", "t.yaml:2: retry.duration: expected a duration"),
        ("retry: 3", "t.yaml:2: retry: expected true, false or {on_events"),
        ("lost_after: 0s", "t.yaml:2: lost_after: must be between 1s and 10 years"),
    ],
)
def test_bad_retry_and_lost_after_are_one_line_errors(text: str, expected: str) -> None:
    assert error(f"commands: [x]\n{text}\n").startswith(expected)


def test_lost_after_is_a_duration() -> None:
    assert parse("commands: [x]\nlost_after: 20m\n").spec.lost_after_s == 1200

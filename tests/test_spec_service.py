"""dstack's service fields (`type: service`): the forms of `port`, `replicas` and `auth` as dstack writes
them, and a one-line error naming the field for what gpuctl does not do, from YAML and from JSON alike."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from shared.spec import ServiceSpec, SpecError, TaskSpec, parse_spec, validate_spec

HEAD = "type: service\ncommands: [serve]\n"


def test_the_forms_dstack_writes() -> None:
    assert parse_spec(HEAD + "port: 8000").service == ServiceSpec(
        8000, replicas=1, auth=True, strip_prefix=True
    )
    # "80:8000": dstack reads only the application's port, the second
    assert parse_spec(HEAD + "port: '80:8000'\nreplicas: 2\nauth: false").service == ServiceSpec(
        8000, 2, False
    )
    assert parse_spec(HEAD + "port: 8000\nreplicas: 3..3\nstrip_prefix: false").service == ServiceSpec(
        8000, 3, strip_prefix=False
    )
    # what asks for nothing passes: no gateway (the coordinator serves it), an empty list of probes
    assert parse_spec(HEAD + "port: 8000\ngateway: false\nprobes: []\nscaling: null").service is not None
    assert parse_spec("commands: [x]").service is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "spec:1: port: missing; a service needs the port its application listens on"),
        ("port: 0", 'spec:3: port: expected the application\'s port, like 8000 or "80:8000", between 1 and'),
        ("port: web", "spec:3: port: expected the application's port"),
        ("port: '80:70000'", "spec:3: port: expected the application's port"),
        (
            "port: 80\nreplicas: 0",
            "spec:4: replicas: expected a number of replicas from 1 to 64, like 2; got 0",
        ),
        ("port: 80\nreplicas: 65", "spec:4: replicas: expected a number of replicas from 1 to 64"),
        ("port: 80\nreplicas: 1..4", "spec:4: replicas: a range (1..4) scales with dstack's `scaling`"),
        ("port: 80\nreplicas: [{count: 1}]", "spec:4: replicas: expected a single value, got a list"),
        ("port: 80\nauth: maybe", "spec:4: auth: expected true or false, got 'maybe'"),
        ("port: 80\nmodel: llama", "spec:4: model: not supported yet: dstack's model endpoint is not served"),
        (
            "port: 80\ngateway: my-gw",
            "spec:4: gateway: not supported: services are served by the coordinator",
        ),
        ("port: 80\nscaling: {metric: rps, target: 10}", "spec:4: scaling: not supported yet"),
        ("port: 80\nhttps: true", "spec:4: https: not supported"),
        ("port: 80\nnodes: 2", "nodes: a service's replica runs on one node; use replicas for more"),
        ("port: 80\nschedule: {cron: '0 * * * *'}", "schedule: a service runs until stopped"),
    ],
)
def test_each_refusal_is_one_line_naming_the_field(text: str, message: str) -> None:
    with pytest.raises(SpecError) as caught:
        parse_spec(HEAD + text)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_task_with_a_service_field_says_to_make_it_a_service() -> None:
    with pytest.raises(SpecError, match=r"spec:2: replicas: belongs to services; add `type: service`"):
        parse_spec("commands: [x]\nreplicas: 2")


@pytest.mark.parametrize(
    ("service", "field"),
    [
        (ServiceSpec(0), "port"),
        (ServiceSpec(80, replicas=0), "replicas"),
        (None, "port"),  # type: service without its fields
    ],
)
def test_json_specs_are_checked_alike(service: ServiceSpec | None, field: str) -> None:
    spec = TaskSpec(commands=("x",), type="service", service=service)
    with pytest.raises(SpecError) as caught:
        validate_spec(spec)
    assert caught.value.field == field
    task = msgspec.structs.replace(spec, type="task", service=ServiceSpec(80))
    with pytest.raises(SpecError, match="port"):
        validate_spec(task)


def test_the_shipped_example_parses() -> None:
    example = Path(__file__).parent.parent / "examples" / "llm-service.yaml"
    spec = parse_spec(example.read_text(), environ={"HF_TOKEN": "hf_x"})
    assert (spec.name, spec.service) == ("llama31", ServiceSpec(8000, replicas=2))

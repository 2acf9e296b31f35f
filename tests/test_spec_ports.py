"""dstack's `ports:` in a task file: its three forms, and a one-line error naming `ports[i]` for anything else,
from YAML and from JSON alike."""

from __future__ import annotations

import pytest

from shared.spec import PortMapping, SpecError, TaskSpec, parse_spec, validate_spec


def test_the_three_forms_of_a_port() -> None:
    spec = parse_spec("commands: [x]\nports: [8888, '6006:6006', '9000:80', '*:8080']")
    assert spec.ports == (
        PortMapping(8888, 8888),
        PortMapping(6006, 6006),
        PortMapping(80, 9000),
        PortMapping(8080, None),
    )
    assert parse_spec("commands: [x]\nports: 22").ports == (PortMapping(22, 22),)


@pytest.mark.parametrize(
    ("ports", "message"),
    [
        (
            "[0]",
            "spec:2: ports[0]: expected PORT, LOCAL:PORT or *:PORT, with ports between 1 and 65535; got 0",
        ),
        (
            "[80, 'web']",
            "spec:2: ports[1]: expected PORT, LOCAL:PORT or *:PORT, with ports between 1 and 65535; got 'web'",
        ),
        (
            "['1:2:3']",
            "spec:2: ports[0]: expected PORT, LOCAL:PORT or *:PORT, with ports between 1 and 65535; got '1:2:3'",
        ),
        (
            "['9000:70000']",
            "spec:2: ports[0]: expected PORT, LOCAL:PORT or *:PORT, with ports between 1 and 65535; got '9000:70000'",
        ),
        (
            "[true]",
            "spec:2: ports[0]: expected PORT, LOCAL:PORT or *:PORT, with ports between 1 and 65535; got True",
        ),
        ("['9:1', '9:2']", "spec:2: ports[1]: local port 9 is forwarded twice"),
        ("{a: 1}", "spec:2: ports: expected a list, got a mapping"),
    ],
)
def test_a_bad_port_is_one_line_naming_it(ports: str, message: str) -> None:
    with pytest.raises(SpecError) as error:
        parse_spec(f"commands: [x]\nports: {ports}")
    assert str(error.value) == message


def test_a_spec_decoded_from_json_is_checked_the_same_way() -> None:
    with pytest.raises(SpecError, match=r"^spec: ports\[1\]: expected PORT"):
        validate_spec(TaskSpec(commands=("x",), ports=(PortMapping(80), PortMapping(65536, 1))))

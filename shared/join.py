"""The join string an operator pastes on a new host: the join token and the pin of the coordinator's CA.

`gpuctl-join-v1.<token id>.<secret>.<sha256 of the CA's public key, hex>`: one word, safe to paste in a
shell. The agent checks the pin before it sends anything (kubeadm's discovery-token-ca-cert-hash).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

PREFIX = "gpuctl-join-v1"
_FORM = re.compile(r"^gpuctl-join-v1\.([a-z0-9]{8,32})\.([A-Za-z0-9_-]{16,128})\.([0-9a-f]{64})$")


@dataclass(frozen=True)
class JoinString:
    token_id: str
    secret: str
    ca_pin: str  # "sha256:<hex>", as shared.tls.ca_pin gives

    def __str__(self) -> str:
        return f"{PREFIX}.{self.token_id}.{self.secret}.{self.ca_pin.removeprefix('sha256:')}"


def parse_join_string(text: str) -> JoinString:
    """Raises ValueError with one line that says what a join string looks like."""
    match = _FORM.match(text.strip())
    if match is None:
        raise ValueError(
            "join string: expected gpuctl-join-v1.<id>.<secret>.<ca pin> as `gpuctl token create` prints it"
        )
    return JoinString(match.group(1), match.group(2), "sha256:" + match.group(3))

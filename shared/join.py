"""The join string an operator pastes on a new host: the join token, the pin of the coordinator's CA and, when the
coordinator knows them, the URLs it is reached at.

`gpuctl-join-v1.<token id>.<secret>.<sha256 of the CA's public key, hex>`: one word, safe to paste in a
shell. The agent checks the pin before it sends anything (kubeadm's discovery-token-ca-cert-hash).
`gpuctl-join-v2.<id>.<secret>.<pin>.<URLs>` adds the coordinators' URLs (`advertise_urls:` of
coordinator.yaml), newline-separated in unpadded base64url so the string stays one shell word; with them the
host needs no `--coordinator`. A v1 string still joins (the URL then comes from the agent's config).
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

from shared.coordinators import parse_coordinators

PREFIX = "gpuctl-join-v1"
PREFIX_WITH_URLS = "gpuctl-join-v2"
MAX_URLS_CHARS = 2048  # a handful of coordinators; the string must stay something a person can paste
_HEAD = r"([a-z0-9]{8,32})\.([A-Za-z0-9_-]{16,128})\.([0-9a-f]{64})"
_V1 = re.compile(rf"^{PREFIX}\.{_HEAD}$")
_V2 = re.compile(rf"^{PREFIX_WITH_URLS}\.{_HEAD}\.([A-Za-z0-9_-]{{1,{MAX_URLS_CHARS}}})$")
_SHAPE = (
    "join string: expected gpuctl-join-v1.<id>.<secret>.<ca pin> (or -v2 with the coordinators' URLs) "
    "as `gpuctl token create` prints it"
)


@dataclass(frozen=True)
class JoinString:
    token_id: str
    secret: str
    ca_pin: str  # "sha256:<hex>", as shared.tls.ca_pin gives
    urls: tuple[str, ...] = ()  # the coordinators to try, in order; () for a v1 string

    def __str__(self) -> str:
        head = f"{self.token_id}.{self.secret}.{self.ca_pin.removeprefix('sha256:')}"
        if not self.urls:
            return f"{PREFIX}.{head}"
        packed = base64.urlsafe_b64encode("\n".join(self.urls).encode()).decode().rstrip("=")
        return f"{PREFIX_WITH_URLS}.{head}.{packed}"


def parse_join_string(text: str) -> JoinString:
    """Raises ValueError with one line that says what a join string looks like (or which URL is wrong)."""
    text = text.strip()
    if match := _V1.match(text):
        return JoinString(match.group(1), match.group(2), "sha256:" + match.group(3))
    match = _V2.match(text)
    if match is None:
        raise ValueError(_SHAPE)
    packed = match.group(4)
    try:
        lines = base64.urlsafe_b64decode(packed + "=" * (-len(packed) % 4)).decode().split("\n")
    except (binascii.Error, UnicodeDecodeError):
        raise ValueError(f"{_SHAPE}: its URLs do not decode") from None
    urls = parse_coordinators(lines, "join string: coordinator")
    return JoinString(match.group(1), match.group(2), "sha256:" + match.group(3), urls)

"""The coordinator's CA and server certificate, kept in its state directory. Creating them is idempotent."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path

from shared import tls
from shared.constants import AGENT_CERT_TTL_S


@dataclass(frozen=True)
class PkiPaths:
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path

    @classmethod
    def under(cls, state_dir: Path) -> PkiPaths:
        pki = state_dir / "pki"
        return cls(pki / "ca.pem", pki / "ca-key.pem", pki / "server.pem", pki / "server-key.pem")

    def ca(self) -> tls.KeyPair:
        return tls.KeyPair(self.ca_cert.read_bytes(), self.ca_key.read_bytes())


def default_server_names() -> list[str]:
    return ["localhost", "127.0.0.1", "::1", socket.gethostname()]


def ensure_pki(state_dir: Path, server_names: list[str]) -> PkiPaths:
    """Create the CA (key 0600) and a server certificate for `server_names` if they are missing.

    Re-running changes nothing; a server certificate is re-issued only when it is missing.
    """
    paths = PkiPaths.under(state_dir)
    if not paths.ca_cert.exists():
        ca = tls.create_ca()
        tls.write_private(paths.ca_key, ca.key_pem)
        paths.ca_cert.write_bytes(ca.cert_pem)
    if not paths.server_cert.exists():
        server = tls.issue_server_cert(paths.ca(), server_names)
        tls.write_private(paths.server_key, server.key_pem)
        paths.server_cert.write_bytes(server.cert_pem)
    return paths


def issue_agent_cert(
    paths: PkiPaths, host_id: str, out_dir: Path, ttl_s: int = AGENT_CERT_TTL_S
) -> tuple[Path, Path]:
    """Sign a client certificate for a local agent directly (what `gpuctl dev` and tests do; remote hosts
    enroll with a join token instead). Returns (cert, key) paths under `out_dir`."""
    pair = tls.issue_client_cert(paths.ca(), host_id, ttl_s)
    cert, key = out_dir / "agent.pem", out_dir / "agent-key.pem"
    tls.write_private(key, pair.key_pem)
    cert.parent.mkdir(parents=True, exist_ok=True)
    cert.write_bytes(pair.cert_pem)
    return cert, key

"""A job's two ssh keys, derived from its seed: the same on every node of the job and at the coordinator,
which pins the host key for `gpuctl ssh` (agent/job_ssh.py says how the nodes use them)."""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

JOB_LOGIN = "gpuctl-job"  # a plain-process job's user name for ssh on every node (its uids differ)
CONTAINER_LOGIN = "root"  # in a container: the image's user, root in dstack's images


@dataclass(frozen=True)
class JobKeys:
    user_private: str  # OpenSSH format
    user_public: str  # "ssh-ed25519 AAAA..."
    host_private: str
    host_public: str


def job_keys(seed_hex: str) -> JobKeys:
    """The job's user and host keys, the same on every node for one seed. Pure."""
    seed = bytes.fromhex(seed_hex)
    user, host = _derive(seed, b"user"), _derive(seed, b"host")
    return JobKeys(_private(user), _public(user), _private(host), _public(host))


def _derive(seed: bytes, role: bytes) -> Ed25519PrivateKey:
    raw = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"gpuctl job ssh " + role).derive(seed)
    return Ed25519PrivateKey.from_private_bytes(raw)


def _private(key: Ed25519PrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    ).decode()


def _public(key: Ed25519PrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )

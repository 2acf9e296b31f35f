"""Project secrets, as dstack has them: `${{ secrets.NAME }}` in a job's `env` values and `registry_auth`.

Values are encrypted at rest (AES-256-GCM, the project and name bound in as associated data, so a ciphertext
cannot be moved to another project or name) with a key kept outside the database: `secrets.key` in the
coordinator's state dir, 0600, made at init or first start. A job's spec keeps the `${{ secrets.NAME }}` text;
the value is put in only in the allocation sent to its agent (the sync answer), so no view and no stored spec
holds it.
"""

from __future__ import annotations

import hmac
import logging
import os
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from coordinator.accounts import Invalid
from coordinator.store import Store
from shared import tls
from shared.spec import SpecError, TaskSpec
from shared.wire import SecretView

KEY_FILE = "secrets.key"
NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
REFERENCE_RE = re.compile(r"\$\{\{\s*secrets\.([^}\s]*)\s*\}\}")
MAX_VALUE_BYTES = 16 * 1024
NONCE_BYTES = 12


log = logging.getLogger(__name__)


class NoSecret(LookupError):
    """A secret that the project does not have."""


def ensure_key(state_dir: Path) -> bytes:
    """The key, made once (256 random bits in a 0600 file). Safe to call again: it never changes a key."""
    path = state_dir / KEY_FILE
    if not path.exists():
        tls.write_private(path, AESGCM.generate_key(bit_length=256))
    key = path.read_bytes()
    if len(key) != 32:
        raise RuntimeError(f"{path}: expected a 32-byte key, found {len(key)} bytes")
    return key


def check_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise Invalid(
            "name", f"expected letters, digits and '_', not starting with a digit; got {name[:64]!r}"
        )
    return name


def references(spec: TaskSpec) -> Iterator[tuple[str, str]]:
    """(field, secret name) for every `${{ secrets.NAME }}` in the spec's env values and registry_auth."""
    for key, value in spec.env.items():
        for name in REFERENCE_RE.findall(value):
            yield f"env.{key}", name
    if spec.registry_auth is not None:
        for field in ("username", "password"):
            for name in REFERENCE_RE.findall(getattr(spec.registry_auth, field)):
                yield f"registry_auth.{field}", name


def resolved(spec: TaskSpec, value_of: Callable[[str], str]) -> TaskSpec:
    """The spec with every secret reference replaced by `value_of(name)`; unchanged if it has none."""
    if next(references(spec), None) is None:
        return spec

    def sub(text: str) -> str:
        return REFERENCE_RE.sub(lambda m: value_of(m.group(1)), text)

    auth = spec.registry_auth
    if auth is not None:
        auth = msgspec.structs.replace(auth, username=sub(auth.username), password=sub(auth.password))
    env = {key: sub(value) for key, value in spec.env.items()}
    return msgspec.structs.replace(spec, env=env, registry_auth=auth)


class Secrets:
    """Safe concurrently as the store is (calls run on the event loop)."""

    def __init__(self, store: Store, key: bytes) -> None:
        self.store = store
        self.aead = AESGCM(key)
        self._seed_key = hmac.digest(key, b"gpuctl job ssh seeds", "sha256")  # not the cipher's key itself

    def job_ssh_seed(self, job_id: str) -> str:
        """The seed a multi-node job's agents derive its ssh keys from (agent/job_ssh.py): the same for every
        node and attempt of the job, unguessable without the coordinator's key, and nowhere in the store."""
        return hmac.digest(self._seed_key, job_id.encode(), "sha256").hex()

    def set(self, project: str, name: str, value: str) -> SecretView:
        """Create or replace. Idempotent."""
        check_name(name)
        raw = value.encode()
        if not raw or len(raw) > MAX_VALUE_BYTES or "\0" in value:
            raise Invalid("value", f"must be 1 to {MAX_VALUE_BYTES} bytes without NUL")
        nonce = os.urandom(NONCE_BYTES)
        sealed = nonce + self.aead.encrypt(nonce, raw, _aad(project, name))
        now = time.time()
        with self.store.tx() as db:
            db.execute(
                "INSERT INTO secrets(project, name, ciphertext, updated_at) VALUES (?,?,?,?) ON CONFLICT (project, name)"
                " DO UPDATE SET ciphertext=excluded.ciphertext, updated_at=excluded.updated_at",
                (project, name, sealed, now),
            )
        return SecretView(name=name, updated_at=now)

    def list(self, project: str) -> list[SecretView]:
        rows = self.store.db.execute(
            "SELECT name, updated_at FROM secrets WHERE project = ? ORDER BY name", (project,)
        ).fetchall()
        return [SecretView(name=row["name"], updated_at=row["updated_at"]) for row in rows]

    def delete(self, project: str, name: str) -> None:
        with self.store.tx() as db:
            gone = db.execute("DELETE FROM secrets WHERE project = ? AND name = ?", (project, name))
        if gone.rowcount == 0:
            raise NoSecret(f"project {project!r} has no secret {name[:128]!r}")

    def value(self, project: str, name: str) -> str:
        row = self.store.db.execute(
            "SELECT ciphertext FROM secrets WHERE project = ? AND name = ?", (project, name)
        ).fetchone()
        if row is None:
            raise NoSecret(f"project {project!r} has no secret {name[:128]!r}")
        sealed = bytes(row["ciphertext"])
        return self.aead.decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], _aad(project, name)).decode()

    def check(self, spec: TaskSpec, project: str) -> None:
        """Raise SpecError naming the field of the first reference to a secret the project lacks."""
        have = {view.name for view in self.list(project)}
        for field, name in references(spec):
            if name not in have:
                raise SpecError(
                    field,
                    f"${{{{ secrets.{name[:128]} }}}}: project {project!r} has no secret {name[:128]!r}; "
                    f"set it with `gpuctl secret set {name[:128]}`",
                )

    def resolve(self, spec: TaskSpec, project: str) -> TaskSpec:
        """The spec as its agent must see it. A secret deleted since the submit resolves to nothing."""

        def value_of(name: str) -> str:
            try:
                return self.value(project, name)
            except NoSecret:
                return ""
            except InvalidTag:  # secrets.key was replaced or the row damaged: one job, not every sync, pays
                log.error("project %r: secret %r cannot be decrypted with this secrets.key", project, name)
                return ""

        return resolved(spec, value_of)


def _aad(project: str, name: str) -> bytes:
    return f"gpuctl-secret\0{project}\0{name}".encode()

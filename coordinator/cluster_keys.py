"""The keys that every coordinator replica on one PostgreSQL must hold alike, checked when each starts.

Two keys are the cluster's, not a replica's: the CA (`pki/ca.pem` and `pki/ca-key.pem`), which signs every
agent's certificate at enrollment and renewal, so that a certificate one replica signed is accepted by all;
and the secrets key (`secrets.key`), which encrypts projects' secrets in the store. Each replica is *given*
them as files in its state directory (copied from the first replica, as the README says); the database holds
neither. We chose files over keeping the CA key in the database encrypted with a key from the config because
that config key would itself be a file every replica is given, while the database, its dumps and its
backups, and everyone who may read them, would then hold the key that mints agent identities. A file is
where the single coordinator keeps them today, so one replica and several differ in nothing but the copy.

What the database does hold is each key's fingerprint, recorded by the first replica to start: a replica
started with other keys (one whose `init` made a CA of its own because the files were not copied) refuses
to start, naming the file, rather than sign certificates the other replicas reject.
"""

from __future__ import annotations

import hashlib

from coordinator.store import Store
from shared import tls


class KeyMismatch(RuntimeError):
    """This replica's key differs from the one the replicas sharing its database use (one line)."""


def check_cluster_keys(store: Store, ca_cert_pem: bytes, secrets_key: bytes) -> None:
    """Record this replica's key fingerprints if it is the first, else check them. Safe to call again."""
    check_key(store, "ca", tls.ca_pin(ca_cert_pem), "pki/ca.pem and pki/ca-key.pem")
    secrets_print = "sha256:" + hashlib.sha256(b"gpuctl secrets key\0" + secrets_key).hexdigest()
    check_key(store, "secrets", secrets_print, "secrets.key")


def check_key(store: Store, name: str, fingerprint: str, files: str) -> None:
    with store.tx() as db:
        db.execute("INSERT OR IGNORE INTO cluster_keys(name, fingerprint) VALUES (?, ?)", (name, fingerprint))
        row = db.execute("SELECT fingerprint FROM cluster_keys WHERE name=?", (name,)).fetchone()
    if row["fingerprint"] != fingerprint:
        raise KeyMismatch(
            f"{files}: not the ones the other coordinators on this database use ({name} {row['fingerprint']});"
            " copy them from another coordinator's state directory"
        )

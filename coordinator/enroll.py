"""Enrollment of new hosts with a join token, renewal of agent certificates over mTLS, and the rate limit
that keeps token guessing slow."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field

from coordinator.accounts import Accounts, Refused
from coordinator.store import Store
from shared import tls
from shared.wire import EnrollRequest, EnrollResponse, RenewRequest, RenewResponse

HOST_NAME_MAX = 253


@dataclass
class RateLimiter:
    """A token bucket per client address: `burst` at once, then `per_s` a second."""

    burst: float = 10.0
    per_s: float = 1.0
    _buckets: dict[str, tuple[float, float]] = field(default_factory=dict)

    def allow(self, key: str, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        tokens, last = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.per_s)
        if len(self._buckets) > 10_000:  # bounded memory under a flood of addresses
            self._buckets.clear()
        self._buckets[key] = (tokens - 1, now) if tokens >= 1 else (tokens, now)
        return tokens >= 1


def _issue(accounts: Accounts, ca: tls.KeyPair, csr_pem: str, host_id: str, ttl_s: int) -> str:
    cert = tls.sign_csr(ca, csr_pem.encode(), host_id, ttl_s)
    accounts.record_cert(cert.serial_number, host_id, cert.not_valid_after_utc.timestamp())
    return tls.cert_pem(cert).decode()


def enroll(
    accounts: Accounts, store: Store, ca: tls.KeyPair, req: EnrollRequest, ttl_s: int
) -> EnrollResponse:
    """Spend the join token, register the host in the token's fleet, sign the agent's CSR."""
    token_id, _, secret = req.token.partition(".")
    hostname = req.hostname.strip()[:HOST_NAME_MAX] or "unnamed"
    grant = accounts.use_join_token(token_id, secret)
    host_id = "h-" + secrets.token_hex(6)
    certificate = _issue(accounts, ca, req.csr, host_id, ttl_s)
    store.ensure_host(host_id, hostname)
    store.set_membership(host_id, grant.fleet, grant.labels)
    return EnrollResponse(host_id=host_id, certificate=certificate, ca=ca.cert_pem.decode())


def renew(
    accounts: Accounts, store: Store, ca: tls.KeyPair, host_id: str, req: RenewRequest, ttl_s: int
) -> RenewResponse:
    """A fresh certificate for a host that still holds a valid one (checked by TLS and the deny list)."""
    host = store.get_host(host_id)
    if host is not None and host.status == "removed":
        raise Refused("this host was removed from the cluster")
    return RenewResponse(certificate=_issue(accounts, ca, req.csr, host_id, ttl_s))

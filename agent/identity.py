"""The agent's identity: joining with a join string, and renewing its certificate before it expires.

The private key is made here, written 0600, and never sent. Before anything is sent to a coordinator it
has not met, its CA is fetched and checked against the pin in the join string, so a man in the middle
learns nothing (not even the token).
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
import time
from pathlib import Path
from typing import TypeVar

import aiohttp
import msgspec

from agent.client import ApiError, retryable
from shared import constants as C
from shared import tls
from shared.join import JoinString
from shared.wire import EnrollRequest, EnrollResponse, ErrorBody, RenewRequest, RenewResponse

log = logging.getLogger("gpuctl.agent")
T = TypeVar("T")

RENEW_AT_FRACTION = 2 / 3  # of the certificate's life
MIN_RENEW_GAP_S = 1.0


class JoinError(Exception):
    """Joining failed; one line that says why and what to do."""


class CertificateExpired(Exception):
    pass


async def fetch_pinned_ca(url: str, pin: str) -> bytes:
    """The coordinator's CA certificate, if its public key matches `pin`. Sends no secret."""
    insecure = ssl.create_default_context()
    insecure.check_hostname = False
    insecure.verify_mode = ssl.CERT_NONE  # only to read the CA, which the pin then verifies
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=insecure)) as session:
        try:
            async with session.get(
                f"{url.rstrip('/')}{C.AGENT_PREFIX}/ca", timeout=aiohttp.ClientTimeout(total=30)
            ) as resp:
                ca_pem = await resp.read()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise JoinError(f"cannot reach the coordinator at {url}: {exc}") from None
    try:
        actual = tls.ca_pin(ca_pem)
    except ValueError:
        raise JoinError(f"{url} did not answer with a CA certificate; is it a gpuctl coordinator?") from None
    if actual != pin:
        raise JoinError(
            f"the coordinator at {url} has a CA whose pin {actual} is not the join string's {pin}: "
            "refusing to talk to it (wrong coordinator, or a man in the middle)"
        )
    return ca_pem


async def join(url: str, join: JoinString, pki_dir: Path, hostname: str) -> str:
    """Enroll with a join string; store key (0600), certificate and CA under `pki_dir`. Returns the host id."""
    ca_pem = await fetch_pinned_ca(url, join.ca_pin)
    pki_dir.mkdir(parents=True, exist_ok=True)
    (pki_dir / "ca.pem").write_bytes(ca_pem)
    key = tls.new_key()
    request = EnrollRequest(
        token=f"{join.token_id}.{join.secret}", csr=tls.make_csr(key, hostname).decode(), hostname=hostname
    )
    context = tls.client_context(pki_dir / "ca.pem")
    answer = await _post(url, context, "/enroll", request, EnrollResponse)
    tls.write_private(pki_dir / "agent-key.pem", tls.key_to_pem(key))
    (pki_dir / "agent.pem").write_text(answer.certificate)
    log.info("joined as host %s", answer.host_id)
    return answer.host_id


async def _post(url: str, context: ssl.SSLContext, path: str, request: object, type_: type[T]) -> T:
    target = f"{url.rstrip('/')}{C.AGENT_PREFIX}{path}"
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as session,
        session.post(
            target, data=msgspec.json.encode(request), timeout=aiohttp.ClientTimeout(total=30)
        ) as resp,
    ):
        data = await resp.read()
    if resp.status >= 400:
        try:
            message = msgspec.json.decode(data, type=ErrorBody).error
        except (msgspec.DecodeError, msgspec.ValidationError):
            message = data[:200].decode(errors="replace")
        raise ApiError(resp.status, message)
    return msgspec.json.decode(data, type=type_)


def check_not_expired(cert_file: Path, now: float | None = None) -> float:
    """The certificate's expiry time; raises CertificateExpired (with what to do) if it has passed."""
    _, not_after = tls.cert_expiry(cert_file.read_bytes())
    if (now or time.time()) >= not_after:
        stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(not_after))
        raise CertificateExpired(
            f"this host's certificate expired at {stamp} (it was offline too long): it needs a new join "
            "string: run `gpuctl token create --fleet NAME` on the coordinator, then `gpuctl-agent join ...`"
        )
    return not_after


def renew_at(cert_pem: bytes) -> float:
    """When to renew: two thirds into the certificate's life, counted from when it was issued."""
    not_before, not_after = tls.cert_expiry(cert_pem)
    issued = not_before + tls.CLOCK_SKEW.total_seconds()
    return issued + (not_after - issued) * RENEW_AT_FRACTION


async def renew_loop(url: str, context: ssl.SSLContext, pki_dir: Path) -> None:
    """Renew at about two thirds of the certificate's life, over the existing mTLS identity. New connections
    use the new certificate at once (the shared SSL context is reloaded)."""
    cert_file, key_file = pki_dir / "agent.pem", pki_dir / "agent-key.pem"
    while True:
        delay_s = renew_at(cert_file.read_bytes()) - time.time()
        await asyncio.sleep(max(MIN_RENEW_GAP_S, delay_s * random.uniform(0.95, 1.0)))
        try:
            key = tls.new_key()
            answer = await _post(
                url, context, "/renew", RenewRequest(csr=tls.make_csr(key, "renew").decode()), RenewResponse
            )
        except Exception as exc:
            if not retryable(exc):
                raise
            log.warning("certificate renewal failed (%s); trying again soon", exc)
            await asyncio.sleep(random.uniform(5, 15))
            continue
        tls.write_private(key_file, tls.key_to_pem(key))
        cert_file.write_text(answer.certificate)
        context.load_cert_chain(cert_file, key_file)
        log.info(
            "certificate renewed; valid until %s", time.ctime(tls.cert_expiry(cert_file.read_bytes())[1])
        )

"""The agent's identity: joining with a join string, and renewing its certificate before it expires.

The private key is made here, written 0600, and never sent. Before anything is sent to a coordinator it
has not met, its CA is fetched and checked against the pin in the join string, so a man in the middle
learns nothing (not even the token). With several coordinators, joining tries them in order until one
answers; renewal goes to whichever the agent's client is at.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import aiohttp
import msgspec

from agent.client import fails_over, protocol_headers, raise_for_status, retryable
from agent.transport import Transport
from shared import constants as C
from shared import tls
from shared.errors import reason_of
from shared.join import JoinString
from shared.wire import EnrollRequest, EnrollResponse, RenewRequest, RenewResponse

log = logging.getLogger("gpuctl.agent")
T = TypeVar("T")

RENEW_AT_FRACTION = 2 / 3  # of the certificate's life
MIN_RENEW_GAP_S = 1.0


class JoinError(Exception):
    """Joining failed; one line that says why and what to do."""


class Unreachable(JoinError):
    """This coordinator did not answer; another of the list may."""


class CertificateExpired(Exception):
    pass


async def fetch_pinned_ca(url: str, pin: str, transport: Transport | None = None) -> bytes:
    """The coordinator's CA certificate, if its public key matches `pin`. Sends no secret."""
    transport = transport or Transport()
    insecure = ssl.create_default_context()
    insecure.check_hostname = False
    insecure.verify_mode = ssl.CERT_NONE  # only to read the CA, which the pin then verifies
    async with transport.session(insecure) as session:
        try:
            async with session.get(
                f"{url.rstrip('/')}{C.AGENT_PREFIX}/ca", timeout=aiohttp.ClientTimeout(total=30)
            ) as resp:
                ca_pem = await resp.read()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            via = "" if transport.description == "direct" else f" through {transport.description}"
            why = transport.problem() or str(exc)
            raise Unreachable(f"cannot reach the coordinator at {url}{via}: {why}") from None
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


async def join(
    urls: str | Sequence[str],
    join: JoinString,
    pki_dir: Path,
    hostname: str,
    transport: Transport | None = None,
) -> str:
    """Enroll with a join string at the first of `urls` that answers; store key (0600), certificate and CA
    under `pki_dir`. Returns the host id. A coordinator that refuses (a wrong pin, a used-up token) ends it:
    the replicas share the CA and the tokens, so another would refuse as well."""
    urls = (urls,) if isinstance(urls, str) else tuple(urls)
    for url in urls[:-1]:
        try:
            return await _join_at(url, join, pki_dir, hostname, transport)
        except Exception as exc:
            if not (isinstance(exc, Unreachable) or fails_over(exc)):
                raise
            log.warning("joining at %s failed (%s); trying the next coordinator", url, reason_of(exc))
    return await _join_at(urls[-1], join, pki_dir, hostname, transport)


async def _join_at(
    url: str, join: JoinString, pki_dir: Path, hostname: str, transport: Transport | None
) -> str:
    ca_pem = await fetch_pinned_ca(url, join.ca_pin, transport)
    pki_dir.mkdir(parents=True, exist_ok=True)
    (pki_dir / "ca.pem").write_bytes(ca_pem)
    key = tls.new_key()
    request = EnrollRequest(
        token=f"{join.token_id}.{join.secret}", csr=tls.make_csr(key, hostname).decode(), hostname=hostname
    )
    context = tls.client_context(pki_dir / "ca.pem")
    answer = await _post(url, context, "/enroll", request, EnrollResponse, transport)
    tls.write_private(pki_dir / "agent-key.pem", tls.key_to_pem(key))
    (pki_dir / "agent.pem").write_text(answer.certificate)
    log.info("joined as host %s", answer.host_id)
    return answer.host_id


async def _post(
    url: str,
    context: ssl.SSLContext,
    path: str,
    request: object,
    type_: type[T],
    transport: Transport | None = None,
) -> T:
    target = f"{url.rstrip('/')}{C.AGENT_PREFIX}{path}"
    async with (
        (transport or Transport()).session(context) as session,
        session.post(
            target,
            data=msgspec.json.encode(request),
            timeout=aiohttp.ClientTimeout(total=30),
            headers=protocol_headers(),
        ) as resp,
    ):
        data = await resp.read()
    raise_for_status(resp.status, data)
    return msgspec.json.decode(data, type=type_)


def install_pair(pki_dir: Path, key_pem: bytes, cert_pem: bytes) -> None:
    """Replace the agent's key and certificate so that a crash at any point leaves a matching pair: both are
    staged as `.new` files first, and `finish_pending_pair` completes an install a crash cut short."""
    tls.write_private(pki_dir / "agent-key.pem.new", key_pem)
    tls.write_private(pki_dir / "agent.pem.new", cert_pem)
    finish_pending_pair(pki_dir)


def finish_pending_pair(pki_dir: Path) -> None:
    """Idempotent; run at start. Moves a fully staged pair into place (key first, certificate last)."""
    staged_key, staged_cert = pki_dir / "agent-key.pem.new", pki_dir / "agent.pem.new"
    if staged_cert.exists():
        if staged_key.exists():
            staged_key.replace(pki_dir / "agent-key.pem")
        staged_cert.replace(pki_dir / "agent.pem")
    elif staged_key.exists():  # the certificate never got staged: the old pair is still whole
        staged_key.unlink()


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


async def renew_loop(
    url_of: Callable[[], str], context: ssl.SSLContext, pki_dir: Path, transport: Transport | None = None
) -> None:
    """Renew at about two thirds of the certificate's life, over the existing mTLS identity, at the
    coordinator `url_of()` names then (the one the agent's client is at). New connections use the new
    certificate at once (the shared SSL context is reloaded)."""
    cert_file, key_file = pki_dir / "agent.pem", pki_dir / "agent-key.pem"
    while True:
        delay_s = renew_at(cert_file.read_bytes()) - time.time()
        await asyncio.sleep(max(MIN_RENEW_GAP_S, delay_s * random.uniform(0.95, 1.0)))
        try:
            key = tls.new_key()
            answer = await _post(
                url_of(),
                context,
                "/renew",
                RenewRequest(csr=tls.make_csr(key, "renew").decode()),
                RenewResponse,
                transport,
            )
        except Exception as exc:
            if not retryable(exc):
                raise
            left_s = tls.cert_expiry(cert_file.read_bytes())[1] - time.time()
            log.warning(
                "certificate renewal failed (%s); %.0f s of validity left, trying again soon", exc, left_s
            )
            await asyncio.sleep(random.uniform(0.5, 1.0) * min(15.0, max(1.0, left_s / 4)))
            continue
        install_pair(pki_dir, tls.key_to_pem(key), answer.certificate.encode())
        context.load_cert_chain(cert_file, key_file)
        log.info(
            "certificate renewed; valid until %s", time.ctime(tls.cert_expiry(cert_file.read_bytes())[1])
        )

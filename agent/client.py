"""The agent's HTTPS client for the coordinators (mutual TLS). It never retries: the loops choose how, using
`retryable()`.

With several coordinators (replicas on one PostgreSQL), it talks to one at a time: a call that finds the
current one unreachable or failing (`fails_over()`) points the client at the next, in the configured order and
round again, so whichever loop tries next (after its own backoff) tries there. Every loop's work is resumable
at any replica: the sync sends the last desired index seen, logs go by acknowledged offset, files by hash.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import ssl
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path

import aiohttp
import msgspec

from agent.transport import Transport
from shared import constants as C
from shared.errors import reason_of
from shared.wire import ErrorBody, LogAck, SyncRequest, SyncResponse

log = logging.getLogger("gpuctl.agent")

RETRY_AFTER_MAX_S = 600.0  # a Retry-After past this is read as this: an agent never sleeps for hours


class ApiError(Exception):
    def __init__(self, status: int, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(f"coordinator answered {status}: {message}")
        self.status = status
        self.retry_after_s = retry_after_s  # the coordinator's Retry-After, if it sent one


def retryable(exc: BaseException) -> bool:
    """Worth trying again later: connection trouble, timeouts, 429 and 5xx, and 426 (a protocol version the
    coordinator does not serve: one side of a rolling upgrade is still to come). Another 4xx is a verdict."""
    if isinstance(exc, ApiError):
        return exc.status in (426, 429) or exc.status >= 500
    return isinstance(exc, aiohttp.ClientError | TimeoutError | OSError)


def fails_over(exc: BaseException) -> bool:
    """This coordinator cannot serve now, another may: connection trouble, timeouts, 5xx, and 426 (one
    side of a rolling upgrade of the replicas). Not 429: a busy coordinator asks to come back later, and a
    fleet that all moved to the next replica at once would make that one busy too."""
    if isinstance(exc, ApiError):
        return exc.status == 426 or exc.status >= 500
    return retryable(exc)


def retry_after_of(exc: BaseException) -> float | None:
    """The seconds a refusing coordinator asked for (`Retry-After`), or None."""
    return exc.retry_after_s if isinstance(exc, ApiError) else None


def protocol_headers() -> dict[str, str]:
    """Sent on every agent request, so the coordinator can refuse a version it does not serve."""
    return {C.PROTOCOL_HEADER: C.PROTOCOL_VERSION}


class CoordinatorClient:
    """Safe to use from every loop of one event loop at once."""

    def __init__(
        self, urls: str | Sequence[str], ssl_context: ssl.SSLContext, transport: Transport | None = None
    ) -> None:
        self.urls = tuple(u.rstrip("/") for u in ((urls,) if isinstance(urls, str) else urls))
        self._current = 0
        self.transport = transport or Transport()  # direct, a proxy, or an SSH tunnel: TLS end to end
        self.session = self.transport.session(ssl_context, limit=8)

    @property
    def base_url(self) -> str:
        """The coordinator the next call goes to."""
        return self.urls[self._current]

    def fail_over(self, failed_url: str, reason: str) -> None:
        """`failed_url` could not serve: the next call goes to the coordinator after it. Idempotent per
        failure: when several loops see the same coordinator fail, the client moves on once, not once each."""
        if len(self.urls) < 2 or failed_url != self.base_url:
            return
        self._current = (self._current + 1) % len(self.urls)
        log.warning("coordinator %s failed (%s); the next call goes to %s", failed_url, reason, self.base_url)

    @contextlib.asynccontextmanager
    async def _at(self, path: str) -> AsyncIterator[str]:
        """The URL of `path` at the current coordinator; a failure that another might not have moves on."""
        base = self.base_url
        try:
            yield f"{base}{C.AGENT_PREFIX}{path}"
        except Exception as exc:
            if fails_over(exc):
                self.fail_over(base, reason_of(exc))
            raise

    async def close(self) -> None:
        await self.session.close()

    async def sync(self, request: SyncRequest, timeout_s: float) -> SyncResponse:
        timeout = aiohttp.ClientTimeout(total=timeout_s)
        data = msgspec.json.encode(request)
        async with (
            self._at("/sync") as url,
            self.session.post(url, data=data, timeout=timeout, headers=protocol_headers()) as resp,
        ):
            body = await resp.read()
            raise_for_status(resp.status, body, _retry_after(resp))
            return msgspec.json.decode(body, type=SyncResponse)

    async def post_log(self, alloc_id: str, offset: int, data: bytes) -> int:
        timeout = aiohttp.ClientTimeout(total=60)
        params = {"offset": str(offset)}
        async with (
            self._at(f"/allocations/{alloc_id}/logs") as url,
            self.session.post(
                url, params=params, data=data, timeout=timeout, headers=protocol_headers()
            ) as resp,
        ):
            body = await resp.read()
            raise_for_status(resp.status, body, _retry_after(resp))
            return msgspec.json.decode(body, type=LogAck).acked

    async def fetch_files(self, archive_id: str, dest: Path) -> None:
        """Download a files archive to `dest` (atomically: a temporary file, then a rename), checking that
        its bytes hash to `archive_id` and stay within the size limit. Raises ApiError, aiohttp errors,
        or ValueError (a wrong or oversize answer)."""
        timeout = aiohttp.ClientTimeout(total=600, sock_read=60)
        temp = dest.with_name(dest.name + ".part")
        dest.parent.mkdir(parents=True, exist_ok=True)
        digest, size = hashlib.sha256(), 0
        try:
            async with (
                self._at(f"/files/{archive_id}") as url,
                self.session.get(url, timeout=timeout, headers=protocol_headers()) as resp,
            ):
                if resp.status >= 400:
                    raise_for_status(resp.status, await resp.read(), _retry_after(resp))
                with temp.open("wb") as f:
                    async for chunk in resp.content.iter_chunked(C.FILES_CHUNK_BYTES):
                        size += len(chunk)
                        if size > C.MAX_FILES_ARCHIVE_BYTES:
                            raise ValueError(f"the archive is over {C.MAX_FILES_ARCHIVE_BYTES} bytes")
                        digest.update(chunk)
                        f.write(chunk)
            if digest.hexdigest() != archive_id:
                raise ValueError("the bytes received do not match the archive's id")
            os.replace(temp, dest)
        finally:
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()


def _retry_after(resp: aiohttp.ClientResponse) -> float | None:
    return retry_after(resp.headers)


def retry_after(headers: Mapping[str, str] | None) -> float | None:
    """`Retry-After` in seconds (the HTTP date form is not used by the coordinator, so it reads as absent)."""
    raw = (headers or {}).get("Retry-After", "").strip()
    try:
        value = float(raw)
    except ValueError:
        return None
    return min(value, RETRY_AFTER_MAX_S) if value >= 0 else None


def raise_for_status(status: int, body: bytes, retry_after_s: float | None = None) -> None:
    """Raise ApiError with the coordinator's one-line message for a 4xx or 5xx answer."""
    if status < 400:
        return
    try:
        message = msgspec.json.decode(body, type=ErrorBody).error
    except (msgspec.DecodeError, msgspec.ValidationError):
        message = body[:200].decode(errors="replace")
    raise ApiError(status, message, retry_after_s)

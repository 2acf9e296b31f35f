"""HTTP/1.1 to a service's replica over one tcp stream of its agent's channel: the request written, the
response read as it comes.

One stream carries one request (`Connection: close`), so a replica's keep-alive needs no bookkeeping here.
Nothing is held whole: the request body goes up as the user sends it, and the response body comes back
piece by piece (a chunked or server-sent-events answer reaches the user chunk by chunk), each piece granted
back to the agent once the user's connection took it, so a stream holds at most its window.

Hop-by-hop headers (RFC 9110 section 7.6.1, and those a `Connection` header names) never cross, either way.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterable

from multidict import CIMultiDict

from coordinator.channels import RelayStream
from shared.channel import Close, Data, Eof, Window

MAX_HEAD_BYTES = 64 * 1024  # of a response's status line and headers together
MAX_HEADERS = 200
HOP_BY_HOP = frozenset(
    (
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    )
)

_CODE = re.compile(r"[1-5][0-9][0-9]")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # a header's name (RFC 9110 section 5.6.2)
_LENGTH = re.compile(r"[0-9]{1,18}")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # never in a header's value nor a reason (a tab may be)


class UpstreamError(Exception):
    """The replica's stream ended, or its answer broke HTTP; one line. `answered`: some of the response
    had come (a retry elsewhere could run the request twice)."""

    def __init__(self, message: str, answered: bool) -> None:
        super().__init__(message)
        self.answered = answered


def hop_by_hop(headers: Iterable[tuple[str, str]]) -> set[str]:
    """The hop-by-hop header names, lower case: the standard ones and those a Connection header names."""
    named = {
        token.strip().lower()
        for name, value in headers
        if name.lower() == "connection"
        for token in value.split(",")
    }
    return set(HOP_BY_HOP) | named


def request_head(method: str, target: str, headers: list[tuple[str, str]], body: str) -> bytes:
    """The request line and headers, ending the head; `headers` already filtered. `body`: a
    `Content-Length: N` or `Transfer-Encoding: chunked` line, or "" for none."""
    lines = [f"{method} {target} HTTP/1.1", *(f"{name}: {value}" for name, value in headers)]
    if body:
        lines.append(body)
    lines += ["Connection: close", "", ""]
    return "\r\n".join(lines).encode("latin-1")


def chunk(data: bytes) -> bytes:
    """One piece of a chunked request body (an empty piece ends it)."""
    return b"%x\r\n%s\r\n" % (len(data), data) if data else b"0\r\n\r\n"


class Upstream:
    """The replica's bytes on one stream, as they come: read a line, some bytes. Each byte is granted back
    to the agent once taken from here, so the buffer never holds more than the stream's window."""

    def __init__(self, stream: RelayStream) -> None:
        self.stream = stream
        self._buffer = bytearray()
        self.ended = False  # the replica closed its side
        self.answered = False  # some bytes came

    async def _fill(self) -> None:
        """Wait for the next frame. Raises UpstreamError when the stream closed with an error, or closed
        before an Eof."""
        frame = await self.stream.outbox.get()
        if isinstance(frame, Data):
            self._buffer += frame.data
            self.answered = True
        elif isinstance(frame, Eof):
            self.ended = True
        elif isinstance(frame, Close):
            self.ended = True
            self.stream.outbox.put_nowait(frame)  # every later read sees it too
            if frame.error:
                raise UpstreamError(frame.error, self.answered)

    async def _take(self, size: int) -> bytes:
        taken = bytes(self._buffer[:size])
        del self._buffer[:size]
        self.stream.window.passed_on(len(taken))
        await self.stream.channel.send(Window(self.stream.id, len(taken)))
        return taken

    async def line(self, limit: int) -> bytes:
        """One line without its CRLF. Raises UpstreamError past `limit` bytes or at the end."""
        while (end := self._buffer.find(b"\r\n")) < 0:
            if len(self._buffer) > limit:
                raise UpstreamError(f"a line of the answer is over {limit} bytes", self.answered)
            if self.ended:
                raise UpstreamError("the replica closed the connection mid-answer", self.answered)
            await self._fill()
        return (await self._take(end + 2))[:-2]

    async def some(self, most: int) -> bytes:
        """Up to `most` bytes as soon as any are here; b"" at the end."""
        while not self._buffer and not self.ended:
            await self._fill()
        return await self._take(min(most, len(self._buffer))) if self._buffer else b""


class ResponseHead:
    def __init__(self, status: int, reason: str, headers: CIMultiDict[str]) -> None:
        self.status, self.reason, self.headers = status, reason, headers


async def response_head(upstream: Upstream) -> ResponseHead:
    """The final response's status and headers (1xx interim answers skipped). Raises UpstreamError."""
    while True:
        head = await _one_head(upstream)
        if head.status == 101:  # no Upgrade header ever reaches a replica
            raise UpstreamError("the replica switched protocols, which no request asked", True)
        if head.status >= 200:
            return head


async def _one_head(upstream: Upstream) -> ResponseHead:
    status_line = (await upstream.line(MAX_HEAD_BYTES)).decode("latin-1")
    version, _, rest = status_line.partition(" ")
    code, _, reason = rest.partition(" ")
    if not version.startswith("HTTP/1.") or not _CODE.fullmatch(code) or _CONTROL.search(reason):
        raise UpstreamError(f"not an HTTP/1 answer: {status_line[:80]!r}", True)
    headers: CIMultiDict[str] = CIMultiDict()
    size = len(status_line)
    while line := (await upstream.line(MAX_HEAD_BYTES - size)).decode("latin-1"):
        size += len(line) + 2
        name, colon, value = line.partition(":")
        if not colon or not _TOKEN.fullmatch(name) or _CONTROL.search(value) or len(headers) >= MAX_HEADERS:
            raise UpstreamError(f"a bad header line in the answer: {line[:80]!r}", True)
        headers.add(name, value.strip())
    return ResponseHead(int(code), reason.strip(), headers)


def response_headers(head: ResponseHead) -> CIMultiDict[str]:
    """The headers the user gets: the replica's, less hop-by-hop ones and the framing (set anew)."""
    drop = hop_by_hop(head.headers.items()) | {"content-length"}
    return CIMultiDict((name, value) for name, value in head.headers.items() if name.lower() not in drop)


def content_length(head: ResponseHead) -> int | None:
    """The body's length, if the replica gave one and does not chunk. Raises UpstreamError for a bad one."""
    if is_chunked(head) or "Content-Length" not in head.headers:
        return None
    value = head.headers["Content-Length"]
    if not _LENGTH.fullmatch(value):  # not str.isdigit(), which passes "²" that int() refuses
        raise UpstreamError(f"a bad Content-Length in the answer: {value[:40]!r}", True)
    return int(value)


def is_chunked(head: ResponseHead) -> bool:
    codings = ",".join(head.headers.getall("Transfer-Encoding", ()))
    return codings.rsplit(",", 1)[-1].strip().lower() == "chunked"


async def body_pieces(upstream: Upstream, head: ResponseHead, method: str, most: int) -> AsyncIterator[bytes]:
    """The response body in pieces of at most `most` bytes, each as soon as it came: de-chunked, up to its
    Content-Length, or up to the replica's close. Raises UpstreamError for a body cut short."""
    if method == "HEAD" or head.status in (204, 304) or 100 <= head.status < 200:
        return
    if is_chunked(head):
        async for piece in _chunks(upstream, most):
            yield piece
        return
    left = content_length(head)
    while left is None or left > 0:
        piece = await upstream.some(most if left is None else min(most, left))
        if not piece:
            if left is not None:
                raise UpstreamError(f"the replica closed the connection {left} bytes before the end", True)
            return
        if left is not None:
            left -= len(piece)
        yield piece


async def _chunks(upstream: Upstream, most: int) -> AsyncIterator[bytes]:
    while True:
        size_text = (await upstream.line(1024)).split(b";", 1)[0].strip()
        try:
            left = int(size_text, 16)
        except ValueError:
            raise UpstreamError(f"a bad chunk size in the answer: {size_text[:40]!r}", True) from None
        if left == 0:
            while await upstream.line(MAX_HEAD_BYTES):  # trailers: dropped
                pass
            return
        while left > 0:
            piece = await upstream.some(min(most, left))
            if not piece:
                raise UpstreamError("the replica closed the connection mid-chunk", True)
            left -= len(piece)
            yield piece
        if await upstream.line(2):
            raise UpstreamError("a chunk of the answer did not end with CRLF", True)

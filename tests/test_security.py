"""What the coordinator's one TLS port refuses: plaintext, agent calls without our client certificate,
user calls without a token, and certificates of another CA."""

from __future__ import annotations

import asyncio
import http.client
import ssl

import pytest

from cli.api import Api, ApiError
from cli.config import CliConfig
from shared import tls
from tests.harness import cluster


def _https(
    port: int, context: ssl.SSLContext, method: str, path: str, headers: dict[str, str] | None = None
) -> int:
    conn = http.client.HTTPSConnection("localhost", port, context=context, timeout=10)
    try:
        conn.request(method, path, body=b"{}", headers=headers or {})
        return conn.getresponse().status
    finally:
        conn.close()


async def test_plaintext_http_is_refused() -> None:
    """Plain HTTP to the TLS port gets no HTTP answer at all, not even a 401 or 400: TLS comes first."""
    async with cluster() as c:
        for request in (
            b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
            b"GET /healthz HTTP/1.0\r\n\r\n",
        ):
            reader, writer = await asyncio.open_connection("127.0.0.1", c.coordinator.port)
            try:
                writer.write(request)
                await writer.drain()
                async with asyncio.timeout(10):
                    answer = await reader.read(100)  # the first bytes back, or b"" once it hangs up
            except ConnectionResetError:
                answer = b""
            finally:
                writer.close()
            assert not answer.startswith(b"HTTP/"), answer


async def test_agent_api_needs_a_client_certificate_of_this_ca() -> None:
    async with cluster() as c:
        port, ca = c.coordinator.port, c.coordinator.pki.ca_cert
        no_cert = tls.client_context(ca)
        assert await asyncio.to_thread(_https, port, no_cert, "POST", "/agent/v1/sync") == 401
        stranger = tls.create_ca("another CA")
        pair = tls.issue_client_cert(stranger, "intruder", 3600)
        (c.root / "x.pem").write_bytes(pair.cert_pem)
        (c.root / "x-key.pem").write_bytes(pair.key_pem)
        forged = tls.client_context(ca, c.root / "x.pem", c.root / "x-key.pem")
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await asyncio.to_thread(_https, port, forged, "POST", "/agent/v1/sync")


async def test_user_api_needs_a_known_token() -> None:
    async with cluster() as c:
        port, ca = c.coordinator.port, c.coordinator.pki.ca_cert
        assert await asyncio.to_thread(_https, port, tls.client_context(ca), "GET", "/api/v1/jobs") == 401
        wrong = Api(CliConfig(c.coordinator.url, "gpuctl_not-a-token", ca))
        with pytest.raises(ApiError, match="token"):
            await asyncio.to_thread(wrong.jobs, True)
        assert await asyncio.to_thread(_https, port, tls.client_context(ca), "GET", "/healthz") == 200


async def test_the_cli_refuses_a_coordinator_of_another_ca() -> None:
    async with cluster() as c:
        other = tls.create_ca("another CA")
        (c.root / "other-ca.pem").write_bytes(other.cert_pem)
        api = Api(CliConfig(c.coordinator.url, "t", c.root / "other-ca.pem"))
        with pytest.raises(ApiError, match="cannot reach"):
            await asyncio.to_thread(api.jobs, True)


async def test_malformed_requests_answer_400_with_the_field() -> None:
    async with cluster() as c:
        token = c.api.config.token
        conn_ctx = tls.client_context(c.coordinator.pki.ca_cert)

        def post(body: bytes) -> tuple[int, bytes]:
            conn = http.client.HTTPSConnection("localhost", c.coordinator.port, context=conn_ctx, timeout=10)
            try:
                conn.request("POST", "/api/v1/jobs", body=body, headers={"Authorization": f"Bearer {token}"})
                resp = conn.getresponse()
                return resp.status, resp.read()
            finally:
                conn.close()

        status, body = await asyncio.to_thread(post, b"{not json")
        assert status == 400 and b"malformed JSON" in body
        status, body = await asyncio.to_thread(post, b'{"spec": {"commands": ["x"], "priority": "high"}}')
        assert status == 400 and b"spec.priority" in body
        status, body = await asyncio.to_thread(post, b'{"spec": {"commands": ["x"], "priority": 500}}')
        assert status == 400 and b"priority" in body

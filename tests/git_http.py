"""A git server for the tests: git's smart HTTP protocol on 127.0.0.1, each request handed to the real
`git http-backend` as a CGI program, so a clone crosses a real connection as it would from a forge."""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

MAX_BODY_BYTES = 1 << 20  # a clone of a test repository asks for far less
BACKEND_TIMEOUT_S = 30.0
SOCKET_TIMEOUT_S = 10.0  # a client that stops talking frees its thread


@contextmanager
def git_http_server(project_root: Path) -> Iterator[str]:
    """Serve every repository under `project_root`; yields "http://127.0.0.1:PORT". Closing it waits for the
    requests in flight, each bounded by the timeouts above."""

    class Handler(BaseHTTPRequestHandler):
        timeout = SOCKET_TIMEOUT_S

        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            self.answer()

        def do_POST(self) -> None:
            self.answer()

        def answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if "Transfer-Encoding" in self.headers:  # git streams only bodies past its 1 MiB postBuffer
                self.send_error(411)
                return
            if length > MAX_BODY_BYTES:
                self.send_error(413)
                return
            backend = subprocess.run(
                ["git", "http-backend"],
                input=self.rfile.read(length),
                env=self.cgi_env(length),
                capture_output=True,
                timeout=BACKEND_TIMEOUT_S,
                check=False,
            )
            status, headers, body = parse_cgi(backend.stdout)
            self.send_response(*status)
            for name, value in headers:
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def cgi_env(self, length: int) -> dict[str, str]:
            path, _, query = self.path.partition("?")
            return {
                "PATH": os.environ["PATH"],
                "GIT_CONFIG_NOSYSTEM": "1",
                "GIT_CONFIG_GLOBAL": "/dev/null",
                "GIT_PROJECT_ROOT": str(project_root),
                "GIT_HTTP_EXPORT_ALL": "1",
                "REQUEST_METHOD": self.command,
                "PATH_INFO": path,
                "QUERY_STRING": query,
                "CONTENT_TYPE": self.headers.get("Content-Type", ""),
                "CONTENT_LENGTH": str(length),
                "HTTP_CONTENT_ENCODING": self.headers.get("Content-Encoding", ""),
                "GIT_PROTOCOL": self.headers.get("Git-Protocol", ""),  # protocol v2
                "REMOTE_ADDR": self.client_address[0],
            }

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = False  # so that server_close joins the handlers
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def parse_cgi(output: bytes) -> tuple[tuple[int, str], list[tuple[str, str]], bytes]:
    """A CGI response: its status (`Status:`, else 200 OK), its other headers, its body."""
    ends = [(output.find(end), end) for end in (b"\r\n\r\n", b"\n\n") if end in output]
    head, body = output, b""
    if ends:
        at, end = min(ends)
        head, body = output[:at], output[at + len(end) :]
    status = (200, "OK")
    headers: list[tuple[str, str]] = []
    for line in head.decode("latin-1").splitlines():
        name, _, value = line.partition(":")
        if name.lower() == "status":
            code, _, reason = value.strip().partition(" ")
            status = (int(code), reason)
        elif name and name.lower() != "content-length":  # the server sets it, once
            headers.append((name, value.strip()))
    return status, headers, body

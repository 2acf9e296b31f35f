"""A replica of a test service: a small HTTP/1.1 server that a job runs from its source text (`APP`).

`GET /who`: which replica answers ($GPUCTL_ARRAY_INDEX). `GET /echo-request`: the request line and headers
it got, as JSON. `POST /upload`: the body's size and sha256 (and "chunked" for a chunked one). `GET /stream`: a chunked answer whose first
chunk goes out at once and whose last waits until `GET /release` comes: a proxy that held the answer whole
would never pass the first chunk on. `GET /drip`: a chunk every 50 ms, until the caller goes. `GET /zeros/N`: N zero bytes. `GET /probe?job=ID`: a page whose script reads what it can of the console.
`GET /set-cookies`: two Set-Cookie headers, one
named as the console's session cookie. `GET /exit`: the process exits with 3. `GET /bad-header`: an answer with a bare LF in a header.

Run as `python3 -c "$APP" PORT`. It binds with SO_REUSEPORT: the agents of a test share one machine's
loopback, so two replicas (run as one user) listen on the same port there, as they would on two hosts.
"""

import hashlib
import json
import os
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

released = threading.Event()

# `/probe?job=ID`: what a service's page could read of the console, shared origin and all: its title ends as
# `ui:STATUS log:STATUS` (the console's jobs page, with a CSRF token or not; job ID's log)
PROBE = """<!doctype html><title>probing</title><script>
(async () => {
  const job = new URLSearchParams(location.search).get("job");
  const found = [];
  try {
    const page = await fetch("/ui/jobs");
    const text = await page.text();
    found.push(`ui:${page.status}${text.includes('name="csrf"') ? ":csrf" : ""}`);
  } catch (e) {
    found.push("ui:error");
  }
  try {
    found.push(`log:${(await fetch(`/api/v1/jobs/${job}/logs`)).status}`);
  } catch (e) {
    found.push("log:error");
  }
  document.title = found.join(" ");
})();
</script>"""


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        if self.path == "/who":
            self._send(f"replica {os.environ.get('GPUCTL_ARRAY_INDEX')}".encode())
        elif self.path.startswith("/echo-request"):
            self._send(json.dumps({"path": self.path, "headers": dict(self.headers.items())}).encode())
        elif self.path == "/stream":
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self._chunk(b"data: first\n\n")
            released.wait()
            self._chunk(b"data: last\n\n")
            self._chunk(b"")
        elif self.path == "/drip":  # a chunk every 50 ms until the caller goes
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            try:
                while True:
                    self._chunk(b"drop\n")
                    time.sleep(0.05)
            except OSError:
                return
        elif self.path.startswith("/zeros/"):  # /zeros/N: N zero bytes, with their length
            size = int(self.path.rsplit("/", 1)[1])
            self.send_response(200)
            self.send_header("Content-Length", str(size))
            self.end_headers()
            block = bytes(1 << 20)
            for start in range(0, size, len(block)):
                self.wfile.write(block[: size - start])
        elif self.path == "/bad-header":  # a header value with a bare LF: a header injected past a proxy
            self.wfile.write(b"HTTP/1.1 200 OK\r\nX-A: a\nSet-Cookie: stolen=1\r\nContent-Length: 0\r\n\r\n")
            self.close_connection = True
        elif self.path.startswith("/probe"):  # a page whose script tries the console of whoever opens it
            body = PROBE.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cross-Origin-Opener-Policy", "same-origin")
            self.send_header("Service-Worker-Allowed", "/")
            self.end_headers()
            self.wfile.write(body)
        elif self.path == "/set-cookies":  # its own cookie, and one named as the console's session
            self.send_response(200)
            self.send_header("Set-Cookie", "app=1; Path=/")
            self.send_header("Set-Cookie", "gpuctl_session=chosen-by-the-app; Path=/; Secure")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path == "/exit":  # the application fails
            os._exit(3)
        elif self.path == "/release":
            released.set()
            self._send(b"released")
        else:
            self.send_error(404)

    def do_POST(self) -> None:
        digest, size = hashlib.sha256(), 0
        for data in self._body():
            digest.update(data)
            size += len(data)
        self._send(
            f"{size} {digest.hexdigest()} {self.headers.get('Transfer-Encoding', '')}".strip().encode()
        )

    def _body(self):  # type: ignore[no-untyped-def]
        if self.headers.get("Transfer-Encoding") == "chunked":
            while size := int(self.rfile.readline().split(b";")[0], 16):
                yield self.rfile.read(size)
                self.rfile.readline()
            self.rfile.readline()
            return
        left = int(self.headers["Content-Length"])
        while left:
            data = self.rfile.read(min(left, 1 << 16))
            yield data
            left -= len(data)

    def _send(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def log_message(self, format: str, *args: object) -> None:
        pass


class Server(ThreadingHTTPServer):
    def server_bind(self) -> None:
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()


Server(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()

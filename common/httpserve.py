"""The small HTTP(S) servers that sit beside the gRPC services for outside readers.

The consent service's public JWKS and status list, the ledger's C2SP tlog-tiles and a
node's C2SP tlog-witness endpoint all need the same thing: a threaded stdlib server on
``host:port`` (port 0 picks one), TLS on the server side only when a certificate is
given (the documents are public, or carry their own signatures: no client
certificate), started on its own thread and closed cleanly.
"""

from __future__ import annotations

import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self

from fedcredit.common.tls import TlsFiles


class SideServer(ThreadingHTTPServer):
    """A threaded HTTP(S) server with ``start``/``close``, ``port`` and ``url``."""

    daemon_threads = True

    def __init__(
        self,
        address: str,
        handler: type[BaseHTTPRequestHandler],
        *,
        tls: TlsFiles | None = None,
        name: str = "http",
    ) -> None:
        host, _, port = address.rpartition(":")
        self.host = host.strip("[]")
        super().__init__((self.host, int(port)), handler)
        if tls is not None:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(str(tls.cert), str(tls.key))
            ctx.verify_mode = ssl.CERT_NONE  # public readers: no client certificate
            # the handshake runs in the connection's thread, not in accept(): a slow
            # client cannot stall the listener
            self.socket = ctx.wrap_socket(
                self.socket, server_side=True, do_handshake_on_connect=False
            )
        self.tls = tls is not None
        self._thread = threading.Thread(target=self.serve_forever, name=name, daemon=True)

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}/"

    def start(self) -> Self:
        self._thread.start()
        return self

    def close(self) -> None:
        self.shutdown()
        self.server_close()
        self._thread.join(5)


class ReadOnlyHandler(BaseHTTPRequestHandler):
    """GET and HEAD answered by :meth:`answer`; every other method 405."""

    protocol_version = "HTTP/1.1"  # keep-alive: a reader fetches many documents
    # headers and body go out in two writes; with Nagle each response would wait for
    # the client's delayed ACK (40 ms)
    disable_nagle_algorithm = True
    refusal = b"read-only: GET or HEAD\n"

    def answer(self, path: str, body: bool) -> None:
        raise NotImplementedError

    def do_GET(self) -> None:
        self.answer(self.path.split("?", 1)[0], body=True)

    def do_HEAD(self) -> None:
        self.answer(self.path.split("?", 1)[0], body=False)

    def _refuse_method(self) -> None:
        self.send(405, self.refusal, "text/plain", "no-store")

    do_POST = do_PUT = do_PATCH = do_DELETE = _refuse_method

    def send(self, status: int, data: bytes, ctype: str, cache: str, body: bool = True) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        if cache:
            self.send_header("Cache-Control", cache)
        if status == 405:
            self.send_header("Allow", "GET, HEAD")
        self.end_headers()
        if body:
            self.wfile.write(data)

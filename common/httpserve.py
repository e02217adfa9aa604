"""The small HTTP(S) servers that sit beside the gRPC services for outside readers.

The consent service's public JWKS and status list, the ledger's C2SP tlog-tiles and a
node's C2SP tlog-witness endpoint all need the same thing: a threaded stdlib server on
``host:port`` (port 0 picks one), TLS when a certificate is given, started on its own
thread and closed cleanly. Their documents are public or carry their own signatures, so
no client certificate is required; a server with some private paths (the ledger's entry
bundles) *requests* one (``client_certs=True``): a reader without one still completes the
handshake and gets the public paths, and a certificate it does present must chain to the
deployment's CA or the handshake fails. :meth:`ReadOnlyHandler.peer_identity` reads the
verified certificate's organisation and role, as gRPC's ``common.tls.peer_identity`` does.
"""

from __future__ import annotations

import logging
import ssl
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

from fedcredit.common.tls import Identity, TlsFiles, identity_from_der

log = logging.getLogger(__name__)


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
        client_certs: bool = False,
    ) -> None:
        """``client_certs``: request (not require) a client certificate from ``tls.ca``."""
        host, _, port = address.rpartition(":")
        self.host = host.strip("[]")
        super().__init__((self.host, int(port)), handler)
        if tls is not None:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(str(tls.cert), str(tls.key))
            if client_certs:
                # only the deployment's CA is trusted for client certificates, never the
                # system store; CERT_OPTIONAL asks for one and verifies it when sent
                ctx.load_verify_locations(cafile=str(tls.ca))
                ctx.verify_mode = ssl.CERT_OPTIONAL
            else:
                ctx.verify_mode = ssl.CERT_NONE  # public readers: no client certificate
            # the handshake runs in the connection's thread, not in accept(): a slow
            # client cannot stall the listener
            self.socket = ctx.wrap_socket(
                self.socket, server_side=True, do_handshake_on_connect=False
            )
        self.tls = tls is not None
        self.name = name
        self.tls_files = tls
        self._thread = threading.Thread(target=self.serve_forever, name=name, daemon=True)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """One log line, not socketserver's traceback on stderr, for a reader whose TLS
        handshake fails (a certificate from another CA, a plain-HTTP request) or who hangs
        up; anything else is a bug here and keeps its trace, in our log."""
        exc = sys.exc_info()[1]
        if isinstance(exc, ssl.SSLError | ConnectionError | TimeoutError):
            log.info("%s: connection from %s dropped: %s", self.name, client_address[0], exc)
        else:
            log.error("%s: request from %s failed", self.name, client_address[0], exc_info=exc)

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

    def peer_identity(self) -> Identity | None:
        """The organisation and role of the verified client certificate; None without one
        (plaintext, or a reader that sent none). Raises Unauthenticated when the certificate
        chains to the CA but carries no single CN and OU."""
        conn = self.connection
        if not isinstance(conn, ssl.SSLSocket):
            return None
        der = conn.getpeercert(binary_form=True)
        return None if der is None else identity_from_der(der)

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

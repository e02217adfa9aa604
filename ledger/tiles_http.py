"""Read-only HTTP(S) server for the C2SP tlog-tiles interface of a Log.

Beside the gRPC API and without client certificates: the tiles hold exactly
what a checkpoint commits to, which an auditor verifies against the log's
public key, so serving them needs no authentication. TLS (server side only)
uses the ledger's deployment certificate when one is given.

Caching follows c2sp.org/tlog-tiles: full tiles never change (immutable, a
year); partial tiles and the checkpoint change as the log grows (a few seconds).
"""

from __future__ import annotations

import logging
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from fedcredit.common.tls import TlsFiles
from fedcredit.ledger.tiles import (
    TileError,
    TileSource,
    parse_tile_path,
    read_checkpoint,
    read_tile,
)

log = logging.getLogger(__name__)

IMMUTABLE = "public, max-age=31536000, immutable"
SHORT_LIVED = "public, max-age=5"


class _Handler(BaseHTTPRequestHandler):
    server: TilesHTTPServer
    protocol_version = "HTTP/1.1"  # keep-alive: an auditor fetches thousands of tiles
    # headers and body go out in two writes; with Nagle each response would wait for
    # the client's delayed ACK (40 ms), which made a 67,000-entry sync take minutes
    disable_nagle_algorithm = True

    def do_GET(self) -> None:
        self._answer(body=True)

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def _refuse_method(self) -> None:
        self._send(405, b"the tlog-tiles interface is read-only: GET or HEAD\n", "text/plain", "")

    do_POST = do_PUT = do_DELETE = _refuse_method

    def _answer(self, body: bool) -> None:
        path = self.path.split("?", 1)[0].lstrip("/")
        try:
            if path == "checkpoint":
                data = read_checkpoint(self.server.source)
                self._send(200, data, "text/plain; charset=utf-8", SHORT_LIVED, body)
                return
            ref = parse_tile_path(path)
            data = read_tile(self.server.source, ref)
        except TileError as exc:
            msg = f"{exc.reason}: {exc}\n".encode()
            self._send(exc.status, msg, "text/plain; charset=utf-8", "no-store", body)
            return
        except Exception:  # a store failure: one line to the client, the trace to our log
            log.exception("tlog-tiles: reading %s failed", path)
            self._send(
                503,
                b"STORE_UNAVAILABLE: the ledger store could not be read\n",
                "text/plain; charset=utf-8",
                "no-store",
                body,
            )
            return
        self._send(
            200, data, "application/octet-stream", IMMUTABLE if ref.full else SHORT_LIVED, body
        )

    def _send(self, status: int, data: bytes, ctype: str, cache: str, body: bool = True) -> None:
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

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("tlog-tiles %s " + format, self.client_address[0], *args)


class TilesHTTPServer(ThreadingHTTPServer):
    """Serves ``source`` at ``host:port`` (port 0 picks one) until :meth:`close`."""

    daemon_threads = True

    def __init__(self, source: TileSource, address: str, tls: TlsFiles | None = None) -> None:
        host, _, port = address.rpartition(":")
        self.source = source
        self.host = host.strip("[]")
        super().__init__((host.strip("[]"), int(port)), _Handler)
        if tls is not None:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(str(tls.cert), str(tls.key))
            ctx.verify_mode = ssl.CERT_NONE  # no client certificate: the tiles are public
            # the handshake runs in the connection's thread, not in accept(): a slow client
            # cannot stall the listener
            self.socket = ctx.wrap_socket(
                self.socket, server_side=True, do_handshake_on_connect=False
            )
        self.tls = tls is not None
        self._thread = threading.Thread(
            target=self.serve_forever, name="ledger-tiles-http", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}/"

    def start(self) -> TilesHTTPServer:
        self._thread.start()
        return self

    def close(self) -> None:
        self.shutdown()
        self.server_close()
        self._thread.join(5)

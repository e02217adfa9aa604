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
from typing import Any

from fedcredit.common.httpserve import ReadOnlyHandler, SideServer
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


class _Handler(ReadOnlyHandler):
    server: TilesHTTPServer
    refusal = b"the tlog-tiles interface is read-only: GET or HEAD\n"

    def answer(self, path: str, body: bool) -> None:
        path = path.lstrip("/")
        try:
            if path == "checkpoint":
                data = read_checkpoint(self.server.source)
                self.send(200, data, "text/plain; charset=utf-8", SHORT_LIVED, body)
                return
            ref = parse_tile_path(path)
            data = read_tile(self.server.source, ref)
        except TileError as exc:
            msg = f"{exc.reason}: {exc}\n".encode()
            self.send(exc.status, msg, "text/plain; charset=utf-8", "no-store", body)
            return
        except Exception:  # a store failure: one line to the client, the trace to our log
            log.exception("tlog-tiles: reading %s failed", path)
            self.send(
                503,
                b"STORE_UNAVAILABLE: the ledger store could not be read\n",
                "text/plain; charset=utf-8",
                "no-store",
                body,
            )
            return
        self.send(
            200, data, "application/octet-stream", IMMUTABLE if ref.full else SHORT_LIVED, body
        )

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("tlog-tiles %s " + format, self.client_address[0], *args)


class TilesHTTPServer(SideServer):
    """Serves ``source`` at ``host:port`` (port 0 picks one) until :meth:`close`; TLS
    (server side only) with the ledger's deployment certificate when one is given."""

    def __init__(self, source: TileSource, address: str, tls: TlsFiles | None = None) -> None:
        self.source = source
        super().__init__(address, _Handler, tls=tls, name="ledger-tiles-http")

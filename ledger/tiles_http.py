"""Read-only HTTP(S) server for the C2SP tlog-tiles interface of a Log.

Beside the gRPC API. What it serves splits in two:

- ``/checkpoint`` and the hash tiles ``/tile/<L>/<N>[.p/<W>]`` are public: signed tree
  heads and Merkle hashes reveal nothing about any entry, and they are all a witness or
  monitor needs to check that the log only grows (consistency). No certificate.
- The entry bundles ``/tile/entries/<N>[.p/<W>]`` carry every entry's bytes (who asked
  for which enterprise's score, its rating, the policies it qualified for), so they go
  only to a client certificate from the deployment's CA whose role reads every entry
  (``LedgerSettings.may_read_all``, the rule the gRPC reads use: auditor, operator,
  coordinator by default). Anyone else gets 403 and one line naming the reason, nothing
  is read from the store, and the refusal is counted (``fedcredit_refusals``).

TLS uses the ledger's deployment certificate and *requests* a client certificate, so a
reader without one still reads the public paths; over plaintext (no TLS files, debugging)
no bundle is served at all. The caller's role comes only from the verified certificate.

Caching follows c2sp.org/tlog-tiles: full tiles never change (immutable, a year); partial
tiles and the checkpoint change as the log grows (a few seconds). Entry bundles are
``private``: a browser or the auditor's own cache may keep them, a shared cache or CDN in
front of the log must not (it would hand them to the next reader without a certificate).
"""

from __future__ import annotations

import logging
from typing import Any

from fedcredit.common import metrics
from fedcredit.common.errors import Unauthenticated
from fedcredit.common.httpserve import ReadOnlyHandler, SideServer
from fedcredit.common.tls import TlsFiles
from fedcredit.ledger.settings import LedgerSettings
from fedcredit.ledger.tiles import (
    TileError,
    TileRef,
    TileSource,
    parse_tile_path,
    read_checkpoint,
    read_tile,
)

log = logging.getLogger(__name__)

IMMUTABLE = "public, max-age=31536000, immutable"
SHORT_LIVED = "public, max-age=5"
PRIVATE_IMMUTABLE = "private, max-age=31536000, immutable"
PRIVATE_SHORT_LIVED = "private, max-age=5"


class BundleRefused(TileError):
    """An entry bundle asked for without a client certificate whose role reads every entry."""

    status = 403
    reason = "TILES_ENTRIES_NOT_ALLOWED"


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
            if ref.level is None:
                self._check_reader()  # before any store read: a refusal reveals nothing
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
        self.send(200, data, "application/octet-stream", _cache_control(ref), body)

    def _check_reader(self) -> None:
        """Raise BundleRefused unless the verified client certificate may read every entry."""
        settings = self.server.settings
        roles = ", ".join(sorted(settings.audit_roles))
        try:
            who = self.peer_identity()
        except (Unauthenticated, ValueError) as exc:
            self._refused("invalid certificate")
            raise BundleRefused(f"entry bundles need a usable client certificate: {exc}") from exc
        if who is None:
            self._refused("no certificate")
            how = "connect over HTTPS with" if self.server.tls else "this server is plaintext; use"
            raise BundleRefused(
                f"entry bundles need a client certificate of role {roles} from the "
                f"deployment's CA; none was presented ({how} one)"
            )
        if not settings.may_read_all(who.role):
            self._refused(f"role {who.role}")
            raise BundleRefused(
                f"the client certificate has role {who.role!r}; entry bundles are for roles {roles} "
                "(read your own entries over the LedgerService)"
            )

    def _refused(self, why: str) -> None:
        metrics.refusal("PERMISSION_DENIED", BundleRefused.reason)
        log.info("tlog-tiles: entry bundle refused to %s (%s)", self.client_address[0], why)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("tlog-tiles %s " + format, self.client_address[0], *args)


def _cache_control(ref: TileRef) -> str:
    if ref.level is None:  # entry bundles: never in a shared cache
        return PRIVATE_IMMUTABLE if ref.full else PRIVATE_SHORT_LIVED
    return IMMUTABLE if ref.full else SHORT_LIVED


class TilesHTTPServer(SideServer):
    """Serves ``source`` at ``host:port`` (port 0 picks one) until :meth:`close`. With
    ``tls`` (the ledger's deployment certificate) it requests a client certificate from
    ``tls.ca`` and serves entry bundles only to roles ``settings.may_read_all`` admits;
    without ``tls`` it serves the checkpoint and hash tiles only."""

    def __init__(
        self,
        source: TileSource,
        address: str,
        tls: TlsFiles | None = None,
        settings: LedgerSettings | None = None,
    ) -> None:
        self.source = source
        self.settings = settings or LedgerSettings()
        super().__init__(address, _Handler, tls=tls, name="ledger-tiles-http", client_certs=True)

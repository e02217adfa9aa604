"""Public verification: the JWKS and the signed status list, read-only over HTTPS without
a client certificate, at the URIs the tokens name.

A consent token's ``iss`` is the service's public base URL and its status claim names
``<iss>/statuslists/1``; this server answers exactly there, so a third party holding a
token checks it with any JOSE library (signature with the key of ``<iss>/.well-known/
jwks.json``, RFC 8414-style well-known path) and zlib (the status bits), trusting only the
deployment's CA. Neither document holds anything secret: the JWKS has public keys only,
the status list 2-bit statuses at random, unlinkable indexes (:mod:`consent.statusidx`).

Cache-Control: the JWKS briefly (``JWKS_MAX_AGE_S``: a withdrawn, compromised key must
not linger in public caches), the status list for its own ``ttl``.
"""

from __future__ import annotations

import json
import logging
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from fedcredit.common.tls import TlsFiles

if TYPE_CHECKING:
    from fedcredit.consent.authority import ConsentAuthority

log = logging.getLogger(__name__)

JWKS_PATH = "/.well-known/jwks.json"
JWKS_MAX_AGE_S = 60
JWKS_TYPE = "application/jwk-set+json"  # RFC 7517 §8.5.1
STATUSLIST_TYPE = "application/statuslist+jwt"  # draft-ietf-oauth-status-list §14


class _Handler(BaseHTTPRequestHandler):
    server: PublicServer
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def do_GET(self) -> None:
        self._answer(body=True)

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def _refuse_method(self) -> None:
        self._send(405, b"read-only: GET or HEAD\n", "text/plain", "no-store")

    do_POST = do_PUT = do_PATCH = do_DELETE = _refuse_method

    def _answer(self, body: bool) -> None:
        path = self.path.split("?", 1)[0]
        a = self.server.authority
        try:
            if path == JWKS_PATH:
                data = json.dumps(a.jwks(), sort_keys=True).encode()
                self._send(200, data, JWKS_TYPE, f"public, max-age={JWKS_MAX_AGE_S}", body)
            elif path == self.server.status_path:
                ttl = a.settings.status_ttl_s
                data = a.status.token().encode("ascii")
                self._send(200, data, STATUSLIST_TYPE, f"public, max-age={ttl}", body)
            else:
                self._send(404, b"not found\n", "text/plain", "no-store", body)
        except Exception:  # answer 503, keep serving; the details go to the log
            log.exception("public verification endpoint failed for %s", path)
            self._send(503, b"unavailable\n", "text/plain", "no-store", body)

    def _send(self, status: int, data: bytes, ctype: str, cache: str, body: bool = True) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", cache)
        if status == 405:
            self.send_header("Allow", "GET, HEAD")
        self.end_headers()
        if body:
            self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("public verification %s " + format, self.client_address[0], *args)


class PublicServer(ThreadingHTTPServer):
    """Serves ``authority``'s JWKS and status list at ``host:port`` until :meth:`close`."""

    daemon_threads = True

    def __init__(self, authority: ConsentAuthority, address: str, tls: TlsFiles | None) -> None:
        host, _, port = address.rpartition(":")
        self.authority = authority
        self.status_path = urlsplit(authority.settings.status_uri).path
        super().__init__((host.strip("[]"), int(port)), _Handler)
        if tls is not None:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(str(tls.cert), str(tls.key))
            ctx.verify_mode = ssl.CERT_NONE  # public documents: no client certificate
            self.socket = ctx.wrap_socket(
                self.socket, server_side=True, do_handshake_on_connect=False
            )
        self._thread = threading.Thread(
            target=self.serve_forever, name="consent-public-https", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def start(self) -> PublicServer:
        self._thread.start()
        return self

    def close(self) -> None:
        self.shutdown()
        self.server_close()
        self._thread.join(5)

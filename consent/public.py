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
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from fedcredit.common.httpserve import ReadOnlyHandler, SideServer
from fedcredit.common.tls import TlsFiles

if TYPE_CHECKING:
    from fedcredit.consent.authority import ConsentAuthority

log = logging.getLogger(__name__)

JWKS_PATH = "/.well-known/jwks.json"
JWKS_MAX_AGE_S = 60
JWKS_TYPE = "application/jwk-set+json"  # RFC 7517 §8.5.1
STATUSLIST_TYPE = "application/statuslist+jwt"  # draft-ietf-oauth-status-list §14


class _Handler(ReadOnlyHandler):
    server: PublicServer

    def answer(self, path: str, body: bool) -> None:
        a = self.server.authority
        try:
            if path == JWKS_PATH:
                data = json.dumps(a.jwks(), sort_keys=True).encode()
                self.send(200, data, JWKS_TYPE, f"public, max-age={JWKS_MAX_AGE_S}", body)
            elif path == self.server.status_path:
                ttl = a.settings.status_ttl_s
                data = a.status.token().encode("ascii")
                self.send(200, data, STATUSLIST_TYPE, f"public, max-age={ttl}", body)
            else:
                self.send(404, b"not found\n", "text/plain", "no-store", body)
        except Exception:  # answer 503, keep serving; the details go to the log
            log.exception("public verification endpoint failed for %s", path)
            self.send(503, b"unavailable\n", "text/plain", "no-store", body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("public verification %s " + format, self.client_address[0], *args)


class PublicServer(SideServer):
    """Serves ``authority``'s JWKS and status list at ``host:port`` until :meth:`close`."""

    def __init__(self, authority: ConsentAuthority, address: str, tls: TlsFiles | None) -> None:
        self.authority = authority
        self.status_path = urlsplit(authority.settings.status_uri).path
        super().__init__(address, _Handler, tls=tls, name="consent-public-https")

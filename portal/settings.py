"""Portal settings, from the deployment's ``[portal]`` table (each documented here).

``address``          where the portal listens (``127.0.0.1:PORT``); without ``tls`` only
                     loopback is allowed: http://localhost is a secure context for WebAuthn
                     and Secure cookies, no other plain-HTTP origin is.
``org``              the portal's organisation id (its certificate, role ``portal``).
``rp_id``            the WebAuthn relying-party id: the host name people type (default
                     ``localhost``); passkeys are bound to it.
``origins``          the origins assertions may come from (default ``http(s)://rp_id:PORT``).
``tls``              serve HTTPS with the portal's certificate (default false).
``idle_timeout_s``   a session ends after this long without a request (default 900).
``session_max_s``    and after this long in any case (default 43,200: 12 hours).
``signin_burst`` / ``signin_per_minute``  sign-in attempts per client address and per
                     organisation: a burst, then a steady rate (defaults 10 and 6).
``database``         the portal's own database: the banks' batch jobs and their results,
                     and each bank's last watch-list check
                     (portal/jobstore.py; default ``sqlite:///data/portal.sqlite`` under the
                     deployment's directory; PostgreSQL URLs work too). Built without a
                     deployment and without it, jobs live in memory only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fedcredit.common.config import Deployment, resolve_database
from fedcredit.common.errors import ConfigError

DEFAULT_DATABASE = "sqlite:///data/portal.sqlite"


@dataclass(frozen=True)
class PortalSettings:
    address: str = "127.0.0.1:8640"
    org: str = "portal"
    rp_id: str = "localhost"
    origins: list[str] = field(default_factory=list)
    tls: bool = False
    idle_timeout_s: float = 900.0
    session_max_s: float = 43_200.0
    signin_burst: int = 10
    signin_per_minute: float = 6.0
    database: str = ""

    @property
    def host(self) -> str:
        return self.address.rpartition(":")[0]

    @property
    def port(self) -> int:
        return int(self.address.rpartition(":")[2])

    @property
    def url(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{self.rp_id}:{self.port}"

    @classmethod
    def from_deployment(cls, dep: Deployment, **overrides: Any) -> PortalSettings:
        if "portal" not in dep.raw:
            raise ConfigError(f"{dep.path}: no [portal] table; the deployment has no portal")
        sec = dep.section("portal")
        sec.check_keys(set(cls.__dataclass_fields__))
        s = cls(
            address=sec.get_str("address"),
            org=sec.get_str("org", "portal"),
            rp_id=sec.get_str("rp_id", "localhost"),
            origins=list(sec.get_list("origins", [])),
            tls=sec.get_bool("tls", False),
            idle_timeout_s=sec.get_float("idle_timeout_s", 900.0, min=1.0),
            session_max_s=sec.get_float("session_max_s", 43_200.0, min=60.0),
            signin_burst=sec.get_int("signin_burst", 10, min=1),
            signin_per_minute=sec.get_float("signin_per_minute", 6.0, min=0.1),
            database=resolve_database(sec.get_str("database", DEFAULT_DATABASE), dep.dir, f"{dep.path}: [portal]"),
        )  # fmt: skip
        s = cls(**{**s.__dict__, **overrides})
        if not s.tls and s.host not in ("127.0.0.1", "localhost", "::1", "[::1]"):
            raise ConfigError(
                f"{dep.path}: [portal] address {s.address} is not loopback; a portal reachable "
                "from elsewhere needs tls = true (WebAuthn and Secure cookies need HTTPS)"
            )
        return s

"""mTLS credentials and the verified identity of the caller.

Every fedcredit server requires a client certificate signed by the
deployment's CA; the caller's organisation id and role are read from the
*verified* peer certificate (subject CN and OU), never from a request body.
Clients pin the organisation they expect to reach (``server_org``), which must
appear among the server certificate's DNS SANs.

``--insecure`` (plaintext) exists only for local debugging; then the caller's
identity comes from unauthenticated metadata and every server says so loudly
in its log.
"""

from __future__ import annotations

import base64
import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.x509.oid import NameOID

from fedcredit.common.errors import ConfigError, Unauthenticated

log = logging.getLogger(__name__)

INSECURE_ORG_HEADER = "x-fedcredit-insecure-org"
INSECURE_ROLE_HEADER = "x-fedcredit-insecure-role"

# Set by common.server when a server is started with insecure=True.
_insecure_servers_running = False

DEFAULT_CHANNEL_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    # A peer that stops answering (frozen, SIGSTOP, a dead host) is found within about
    # 6 s while a call is open: a ping every 2 s, 4 s to answer it (servers allow this,
    # common.server). A failed connection is retried at most 1 s after the last attempt
    # (initial 0.25 s, doubling up to 1 s) and an attempt gives up after 2 s, so calls to a
    # dead peer fail fast and a peer that is back is used again within about 2 s (issue 17).
    ("grpc.keepalive_time_ms", 2_000),
    ("grpc.keepalive_timeout_ms", 4_000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.http2.ping_timeout_ms", 4_000),
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.min_reconnect_backoff_ms", 2_000),
    ("grpc.max_reconnect_backoff_ms", 1_000),
    ("grpc.enable_retries", 0),
)


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """Paths of the CA certificate, an organisation's certificate and its key (PEM)."""

    ca: Path
    cert: Path
    key: Path

    def read(self) -> tuple[bytes, bytes, bytes]:
        out = []
        for what, path in (
            ("CA certificate", self.ca),
            ("certificate", self.cert),
            ("private key", self.key),
        ):
            try:
                out.append(Path(path).read_bytes())
            except OSError as exc:
                raise ConfigError(f"cannot read the {what} at {path}: {exc.strerror}") from exc
        return out[0], out[1], out[2]

    def identity(self) -> Identity:
        """The identity this organisation's own certificate asserts."""
        return identity_from_pem(self.read()[1])


# The gRPC metadata key of a delegation ticket (consent/delegation.py).
DELEGATION_METADATA_KEY = "x-fedcredit-delegation"


@dataclass(frozen=True, slots=True)
class Identity:
    """A caller authenticated by its certificate."""

    org_id: str
    role: str
    cert_sha256: bytes  # SHA-256 of the DER certificate
    # "portal": the organisation acts through the portal under a delegated session
    # (consent/delegation.py); its ledger entries say so. "" for a direct caller.
    via: str = ""

    @property
    def x5t_s256(self) -> str:
        """The certificate thumbprint as used in ``cnf`` (RFC 8705 §3.1): base64url, no padding."""
        return base64.urlsafe_b64encode(self.cert_sha256).rstrip(b"=").decode()

    def __str__(self) -> str:
        return f"{self.role}:{self.org_id}"


@lru_cache(maxsize=4096)
def identity_from_pem(pem: bytes) -> Identity:
    cert = x509.load_pem_x509_certificate(pem)
    return _identity_from_cert(cert)


@lru_cache(maxsize=4096)
def identity_from_der(der: bytes) -> Identity:
    """The identity of a peer certificate as ``ssl.SSLSocket.getpeercert(binary_form=True)``
    gives it (the HTTP side servers that request client certificates)."""
    return _identity_from_cert(x509.load_der_x509_certificate(der))


def _identity_from_cert(cert: x509.Certificate) -> Identity:
    from cryptography.hazmat.primitives.serialization import Encoding

    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    ous = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    if len(cns) != 1 or len(ous) != 1:
        raise Unauthenticated(
            "the client certificate must carry exactly one organisation id (CN) and one role (OU); "
            f"got {len(cns)} CN and {len(ous)} OU"
        )
    der = cert.public_bytes(Encoding.DER)
    return Identity(
        org_id=str(cns[0].value), role=str(ous[0].value), cert_sha256=hashlib.sha256(der).digest()
    )


def server_credentials(tls: TlsFiles) -> grpc.ServerCredentials:
    """Server credentials that demand a client certificate from the same CA."""
    ca, cert, key = tls.read()
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=ca, require_client_auth=True
    )


def channel_credentials(tls: TlsFiles) -> grpc.ChannelCredentials:
    ca, cert, key = tls.read()
    return grpc.ssl_channel_credentials(
        root_certificates=ca, private_key=key, certificate_chain=cert
    )


def check_address(address: str) -> str:
    """``address`` if it is HOST:PORT (what every fedcredit address is); one line if not,
    never gRPC's UNKNOWN "Failed to create channel" from deep inside."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535:
        shown = address[:80] + ("..." if len(address) > 80 else "")
        raise ConfigError(f"expected an address HOST:PORT, got {shown!r}")
    return address


def channel(
    address: str,
    tls: TlsFiles | None,
    *,
    server_org: str,
    aio: bool = False,
    options: Sequence[tuple[str, Any]] = (),
    insecure: bool = False,
) -> Any:
    """An mTLS channel to ``address`` whose server must be organisation ``server_org``.

    ``tls=None`` is accepted only with ``insecure=True`` (plaintext, debugging only).
    """
    check_address(address)
    opts = list(DEFAULT_CHANNEL_OPTIONS) + list(options)
    if tls is None:
        if not insecure:
            raise ConfigError(
                "no TLS files given for a secure channel; pass --insecure to use plaintext"
            )
        return (
            grpc.aio.insecure_channel(address, options=opts)
            if aio
            else grpc.insecure_channel(address, options=opts)
        )
    # The server certificate must name the organisation we mean to reach.
    opts.append(("grpc.ssl_target_name_override", server_org))
    creds = channel_credentials(tls)
    if aio:
        return grpc.aio.secure_channel(address, creds, options=opts)
    return grpc.secure_channel(address, creds, options=opts)


def insecure_metadata(identity: Identity) -> tuple[tuple[str, str], ...]:
    """Metadata claiming an identity on a plaintext (``--insecure``) connection."""
    return ((INSECURE_ORG_HEADER, identity.org_id), (INSECURE_ROLE_HEADER, identity.role))


def peer_identity(context: Any) -> Identity:
    """The verified identity of the caller of a sync or grpc.aio servicer method."""
    auth = context.auth_context()
    pems = auth.get("x509_pem_cert")
    if pems:
        try:
            return identity_from_pem(bytes(pems[0]))
        except ValueError as exc:
            raise Unauthenticated(f"the client certificate could not be parsed: {exc}") from exc
    if _insecure_servers_running:
        md = dict(context.invocation_metadata() or ())
        org, role = md.get(INSECURE_ORG_HEADER), md.get(INSECURE_ROLE_HEADER)
        if org and role:
            return Identity(org_id=str(org), role=str(role), cert_sha256=b"\x00" * 32)
    raise Unauthenticated("the call carries no verified client certificate; connect with mTLS")


def require_role(identity: Identity, *roles: str) -> Identity:
    """Refuse a caller whose role is not among ``roles``."""
    from fedcredit.common.errors import RoleNotAllowed

    if identity.role not in roles:
        raise RoleNotAllowed(
            f"{identity.org_id} has role {identity.role!r}; this call needs role "
            + " or ".join(repr(r) for r in roles)
        )
    return identity

"""A deployment's certificate authority and one key + certificate per organisation.

Layout of a PKI directory::

    ca.pem  ca.key            the deployment's CA (ECDSA P-256)
    orgs/<org_id>.pem         the organisation's certificate, signed by the CA
    orgs/<org_id>.key         its private key (mode 0600)

Each certificate carries the organisation id as subject CN and the role as
subject OU (see :data:`common.departments.ROLES`), and is valid for TLS
client and server use with SANs ``DNS:<org id>``, ``DNS:localhost`` and
``IP:127.0.0.1`` so the same certificate serves a loopback deployment and
containers addressed by organisation id. This is a development CA: a real
deployment replaces ``ca.pem`` and the organisation files with its own.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedcredit.common.departments import ROLES
from fedcredit.common.errors import AlreadyExists, InvalidArgument, NotFound
from fedcredit.common.tls import TlsFiles

ORG_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{1,62}$")
CA_LIFETIME = dt.timedelta(days=3650)
LEAF_LIFETIME = dt.timedelta(days=825)


class InvalidOrgId(InvalidArgument):
    reason = "INVALID_ORG_ID"


class InvalidRole(InvalidArgument):
    reason = "INVALID_ROLE"


class PkiNotFound(NotFound):
    reason = "PKI_NOT_FOUND"


class OrgExists(AlreadyExists):
    reason = "ORG_CERT_EXISTS"


def check_org_id(org_id: str) -> str:
    if not ORG_ID_RE.match(org_id):
        raise InvalidOrgId(
            f"organisation id {org_id!r} is not valid: expected 2-63 characters of letters, "
            "digits, '.', '_' or '-', starting with a letter or digit"
        )
    return org_id


def check_role(role: str) -> str:
    if role not in ROLES:
        raise InvalidRole(f"role {role!r} is not one of {', '.join(ROLES)}")
    return role


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def ca_paths(directory: Path) -> tuple[Path, Path]:
    return directory / "ca.pem", directory / "ca.key"


def org_files(directory: Path, org_id: str) -> TlsFiles:
    return TlsFiles(
        ca=directory / "ca.pem",
        cert=directory / "orgs" / f"{org_id}.pem",
        key=directory / "orgs" / f"{org_id}.key",
    )


def create_ca(directory: Path, name: str = "fedcredit development CA") -> None:
    """Create the CA in ``directory`` (refuses to overwrite an existing one)."""
    cert_path, key_path = ca_paths(directory)
    if cert_path.exists():
        raise OrgExists(f"a CA already exists at {cert_path}; remove the directory to start over")
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + CA_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_private(key_path, _key_pem(key))


def issue(
    directory: Path,
    org_id: str,
    role: str,
    *,
    extra_dns: Sequence[str] = (),
    overwrite: bool = False,
) -> TlsFiles:
    """Issue a key and certificate for ``org_id`` with ``role``, signed by the CA in ``directory``."""
    check_org_id(org_id)
    check_role(role)
    cert_path, key_path = ca_paths(directory)
    if not cert_path.exists() or not key_path.exists():
        raise PkiNotFound(
            f"no CA in {directory}: expected {cert_path} and {key_path}; run `fedcredit pki init`"
        )
    files = org_files(directory, org_id)
    if files.cert.exists() and not overwrite:
        raise OrgExists(f"organisation {org_id!r} already has a certificate at {files.cert}")
    ca_cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    ca_key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, org_id),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedcredit"),
        ]
    )
    sans: list[x509.GeneralName] = [x509.DNSName(org_id), x509.DNSName("localhost")]
    sans += [x509.DNSName(d) for d in extra_dns]
    sans += [
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ]
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + LEAF_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    files.cert.parent.mkdir(parents=True, exist_ok=True)
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_private(files.key, _key_pem(key))
    return files


def init_pki(directory: Path, orgs: Iterable[tuple[str, str]]) -> dict[str, TlsFiles]:
    """Create a CA in ``directory`` and issue a certificate for each ``(org_id, role)``."""
    create_ca(directory)
    return {org_id: issue(directory, org_id, role) for org_id, role in orgs}

"""Ed25519 signing keys on disk (PEM, PKCS#8, mode 0600), created on first use."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedcredit.common.errors import ConfigError
from fedcredit.ledger.checkpoint import SIG_COSIGNATURE_V1, SIG_ED25519, Signer, Verifier

if TYPE_CHECKING:
    from fedcredit.common.config import Deployment


def load_or_create_signer(path: Path | str, name: str, sig_type: int = SIG_ED25519) -> Signer:
    """The signer stored at ``path``; a new key is generated (and written) if the file is absent."""
    p = Path(path)
    if p.exists():
        try:
            return Signer.from_pem(name, p.read_bytes(), sig_type)
        except (ValueError, OSError) as exc:
            raise ConfigError(f"cannot load the Ed25519 signing key at {p}: {exc}") from exc
    signer = Signer(name, Ed25519PrivateKey.generate(), sig_type)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(signer.to_pem())
    return signer


# --- a deployment's key files (<deployment dir>/keys/) ------------------------------
# The ledger's log key and each witness's cosigning key live next to the
# deployment's PKI; public keys are published as signed-note vkeys beside
# them, which is where auditors and witnesses read them from.


def keys_dir(deployment: Deployment) -> Path:
    return Path(deployment.dir) / "keys"


def publish_vkey(path: Path, verifier: Verifier) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(verifier.vkey + "\n")
    tmp.replace(path)


def read_vkey(path: Path | str) -> Verifier:
    """A verifier key from a file holding a vkey, or the vkey string itself."""
    p = Path(path)
    try:
        text = p.read_text().strip() if p.exists() else str(path)
    except OSError as exc:
        raise ConfigError(f"cannot read the public key file {p}: {exc.strerror}") from exc
    return Verifier.parse(text)


def log_signer(deployment: Deployment, origin: str) -> Signer:
    d = keys_dir(deployment)
    signer = load_or_create_signer(d / "ledger.key", origin)
    publish_vkey(d / "ledger.vkey", signer.verifier)
    return signer


def log_verifier(deployment: Deployment) -> Verifier:
    p = keys_dir(deployment) / "ledger.vkey"
    if not p.exists():
        raise ConfigError(f"the ledger's public key {p} does not exist yet; start the ledger once")
    return read_vkey(p)


def witness_signer(deployment: Deployment, org_id: str) -> Signer:
    d = keys_dir(deployment)
    signer = load_or_create_signer(d / f"{org_id}.witness.key", org_id, SIG_COSIGNATURE_V1)
    publish_vkey(d / f"{org_id}.witness.vkey", signer.verifier)
    return signer


def witness_verifier(deployment: Deployment, org_id: str) -> Verifier | None:
    p = keys_dir(deployment) / f"{org_id}.witness.vkey"
    return read_vkey(p) if p.exists() else None


def published_logs(deployment: Deployment) -> dict[str, Verifier]:
    """Logs a witness of this deployment watches: the central ledger, once its key exists."""
    p = keys_dir(deployment) / "ledger.vkey"
    if not p.exists():
        return {}
    v = read_vkey(p)
    return {v.name: v}

"""One-round secure sums: pairwise masks from keys agreed once per run.

Flower's SecAgg+ costs four message rounds per sum (advertise keys, share keys,
collect masked vectors, unmask); a `hist` tree needs one sum per level, so 4 round
trips per level. Its first two stages do not depend on the data and its last one
exists to recover from banks that drop out after masking. A `hist` run stops on any
drop anyway (training on part of the rows is not the model the banks agreed to), so
this module keeps only what protects the vectors: the pairwise masks of Bonawitz et
al., "Practical Secure Aggregation for Privacy-Preserving Machine Learning" (CCS
2017), §4, without the self-mask and secret sharing that serve dropout recovery.

- Once per run each bank makes an X25519 key pair and sends its public key with its
  setup reply. The coordinator sends every bank the roster (node id -> public key)
  with each secure request; a bank refuses a roster that leaves it out, names its own
  node with another key, or changes during the run.
- For request ``seq``, banks u and v derive a mask from HKDF-SHA256 over their X25519
  shared secret (salt: run id, info: seq) expanded by ChaCha20 to one uint64 per
  value. u adds it if u < v and subtracts it otherwise, modulo 2**64, so the masks
  cancel in the sum of all banks' vectors and nowhere else.
- Each ``seq`` is used once: a bank refuses a request whose seq is not above the last
  one it answered (the same mask on two vectors would reveal their difference).

- Keys are signed: a bank with an identity in the deployment's PKI (city mode: its
  certificate, role ``bank``) signs (run id, its node id, its organisation id, its
  X25519 key) with its certificate's key (ECDSA P-256, SHA-256) and sends the
  signature and certificate with the key. Before it masks anything, such a bank
  checks every other roster entry: a certificate issued by its own CA, valid now,
  role ``bank``, naming the organisation the entry names, and a valid signature over
  that entry's run, node and key. A coordinator that substitutes a key (a man in the
  middle on the masked sums) cannot sign it as that bank: the bank refuses the roster
  (``SECURE_KEY_NOT_SIGNED`` / ``SECURE_KEY_SIGNATURE_INVALID``, naming the entry) and
  drops out. The run id in the signature stops a key signed for an earlier run.

What the coordinator sees: each bank's vector plus masks that are uniformly random
to anyone without one of the two private keys, and the exact sum (int64, modulo
2**64). Up to B - 2 banks colluding with it learn the sum of the others' vectors,
never one of them. Limit: banks without an identity (CSV files, no PKI) cannot sign
nor check keys, and accept an unsigned roster; the roster digest is then checked for
consistency within a run only.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fedcredit.common.errors import FailedPrecondition, PermissionDenied

IntArray = npt.NDArray[np.int64]


class RosterRefused(PermissionDenied):
    """The coordinator's list of banks and keys is not one this bank can mask for."""

    reason = "SECURE_ROSTER_REFUSED"


class MaskReuseRefused(PermissionDenied):
    """A secure request reuses (or goes back to) a round number this bank already masked."""

    reason = "SECURE_ROUND_REPLAYED"


class SecureSumFailed(FailedPrecondition):
    reason = "SECURE_SUM_FAILED"


class KeyNotSigned(PermissionDenied):
    """A roster entry carries no signature by the bank it names (this bank requires one)."""

    reason = "SECURE_KEY_NOT_SIGNED"


class KeySignatureInvalid(PermissionDenied):
    """A roster entry's key is not signed by the bank it names (substituted, replayed from
    another run, or signed by a certificate this bank's CA did not issue to a bank)."""

    reason = "SECURE_KEY_SIGNATURE_INVALID"


KEY_CONTEXT = "fedcredit secure-sum key v1"
BANK_ROLE = "bank"


@dataclass(frozen=True)
class Entry:
    """One roster line: a node's X25519 key and, when signed, who signed it."""

    node: int
    key: bytes
    bank: str = ""
    certificate: str = ""  # PEM
    signature: bytes = b""

    @property
    def signed(self) -> bool:
        return bool(self.certificate and self.signature)


def key_statement(run: int, node: int, bank: str, key: bytes) -> bytes:
    """What a bank signs: its key bound to this run, its node and its organisation."""
    return json.dumps([KEY_CONTEXT, int(run), int(node), bank, key.hex()]).encode()


def sign_key(private_key_pem: bytes, run: int, node: int, bank: str, key: bytes) -> bytes:
    """ECDSA P-256 / SHA-256 signature of :func:`key_statement` with the bank's identity key."""
    sk = serialization.load_pem_private_key(private_key_pem, password=None)
    if not isinstance(sk, ec.EllipticCurvePrivateKey):
        raise KeySignatureInvalid(
            f"expected an EC identity key to sign the secure-sum key, got {type(sk).__name__}"
        )
    return sk.sign(key_statement(run, node, bank, key), ec.ECDSA(hashes.SHA256()))


def verify_entry(ca_pem: bytes, run: int, entry: Entry, now: dt.datetime | None = None) -> None:
    """Refuse an entry whose key is not signed, for this run and node, by a bank
    certificate that ``ca_pem``'s CA issued and that is valid ``now``."""
    who = f"node {entry.node} ({entry.bank or 'no bank named'})"
    if not entry.signed:
        raise KeyNotSigned(f"secure roster: the key of {who} carries no bank signature")
    try:
        ca = x509.load_pem_x509_certificate(ca_pem)
        cert = x509.load_pem_x509_certificate(entry.certificate.encode())
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise KeySignatureInvalid(
            f"secure roster: the certificate of {who} was not issued by this deployment's CA "
            f"({type(exc).__name__})"
        ) from None
    at = now or dt.datetime.now(dt.UTC)
    if not cert.not_valid_before_utc <= at <= cert.not_valid_after_utc:
        raise KeySignatureInvalid(f"secure roster: the certificate of {who} is not valid now")
    from fedcredit.common.tls import identity_from_pem

    ident = identity_from_pem(entry.certificate.encode())
    if ident.role != BANK_ROLE or ident.org_id != entry.bank:
        raise KeySignatureInvalid(
            f"secure roster: {who} is signed by {ident}, expected {BANK_ROLE}:{entry.bank}"
        )
    pk = cert.public_key()
    if not isinstance(pk, ec.EllipticCurvePublicKey):
        raise KeySignatureInvalid(f"secure roster: the certificate of {who} has no EC key")
    try:
        statement = key_statement(run, entry.node, entry.bank, entry.key)
        pk.verify(entry.signature, statement, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise KeySignatureInvalid(
            f"secure roster: the key of {who} is not the one {entry.bank} signed for this run "
            "(substituted or replayed)"
        ) from None


def verify_roster(ca_pem: bytes, run: int, own: int, entries: list[Entry]) -> None:
    """A bank with an identity: every other entry signed by a distinct bank."""
    others = [e for e in entries if e.node != own]
    for e in others:
        verify_entry(ca_pem, run, e)
    if len({e.bank for e in others}) != len(others):
        raise KeySignatureInvalid("secure roster names one bank for two nodes")


def new_private_key() -> bytes:
    key = X25519PrivateKey.generate()
    return key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )


def public_key(private: bytes) -> bytes:
    return (
        X25519PrivateKey.from_private_bytes(private)
        .public_key()
        .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )


def roster_json(roster: dict[int, bytes], proofs: dict[int, Entry] | None = None) -> str:
    """``[[node, key hex]]``, or ``[[node, key hex, bank, certificate, signature hex]]``
    for a node whose key came signed (``proofs``)."""
    rows: list[list[object]] = []
    for n, k in sorted(roster.items()):
        p = (proofs or {}).get(n)
        row: list[object] = [int(n), k.hex()]
        if p is not None and p.signed:
            row += [p.bank, p.certificate, p.signature.hex()]
        rows.append(row)
    return json.dumps(rows)


def _entry(row: list[object]) -> Entry:
    node, key = int(str(row[0])), bytes.fromhex(str(row[1]))
    if len(row) == 2:
        return Entry(node, key)
    if len(row) != 5:
        raise ValueError(f"a roster line has 2 or 5 fields, got {len(row)}")
    return Entry(node, key, str(row[2]), str(row[3]), bytes.fromhex(str(row[4])))


def parse_entries(text: str) -> list[Entry]:
    try:
        entries = [_entry(r) for r in json.loads(text)]
    except (ValueError, TypeError, IndexError, KeyError) as exc:
        raise RosterRefused(f"secure roster is malformed: {exc}") from None
    if len({e.node for e in entries}) != len(entries) or any(len(e.key) != 32 for e in entries):
        raise RosterRefused("secure roster must list each bank once with a 32-byte X25519 key")
    return entries


def parse_roster(text: str) -> dict[int, bytes]:
    return {e.node: e.key for e in parse_entries(text)}


def roster_digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _mask(shared: bytes, run: int, seq: int, size: int) -> npt.NDArray[np.uint64]:
    seed = HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=f"fedcredit-mask-run-{run}".encode(),
        info=f"seq-{seq}".encode(),
    ).derive(shared)
    stream = Cipher(algorithms.ChaCha20(seed, b"\0" * 16), mode=None).encryptor()
    raw = stream.update(b"\0" * (8 * size))
    return np.frombuffer(raw, dtype="<u8").astype(np.uint64)


@dataclass
class Masker:
    """One bank's side: mask its vector for round ``seq`` of run ``run``."""

    node: int
    private: bytes
    run: int

    def mask(self, values: IntArray, roster: dict[int, bytes], seq: int) -> IntArray:
        if roster.get(self.node) != public_key(self.private):
            raise RosterRefused(
                f"secure roster does not list this bank (node {self.node}) with its own key"
            )
        if len(roster) < 3:
            raise RosterRefused(
                f"secure sums need at least 3 banks, the roster has {len(roster)}: with 2, "
                "each could subtract its own vector from the sum and read the other's"
            )
        me = X25519PrivateKey.from_private_bytes(self.private)
        out = np.asarray(values, dtype=np.int64).ravel().view(np.uint64).copy()
        for other, key in sorted(roster.items()):
            if other == self.node:
                continue
            shared = me.exchange(X25519PublicKey.from_public_bytes(key))
            m = _mask(shared, self.run, seq, out.size)
            if self.node < other:
                out += m  # uint64 arithmetic wraps: modulo 2**64
            else:
                out -= m
        return out.view(np.int64)


def unmask_sum(masked: list[IntArray]) -> IntArray:
    """The coordinator's side: the sum of all banks' masked vectors is the sum of theirs."""
    if not masked:
        raise SecureSumFailed("no masked vectors to sum")
    sizes = {m.size for m in masked}
    if len(sizes) != 1:
        raise SecureSumFailed(f"masked vectors differ in length: {sorted(sizes)}")
    total = np.zeros(masked[0].size, dtype=np.uint64)
    for m in masked:
        total += np.asarray(m, dtype=np.int64).ravel().view(np.uint64)
    return total.view(np.int64)

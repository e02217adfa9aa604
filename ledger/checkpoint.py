"""Signed checkpoints in the C2SP formats.

* c2sp.org/tlog-checkpoint: the note text is ``origin\\nsize\\nbase64(root)\\n``
  (plus optional extension lines).
* c2sp.org/signed-note: text, one empty line, then signature lines
  ``— <key name> base64(key id ‖ signature)``; Ed25519 key id =
  SHA-256(name ‖ "\\n" ‖ 0x01 ‖ public key)[:4]; the signature covers the text.
* c2sp.org/tlog-cosignature (v1, Ed25519): key id uses type byte 0x04, the
  signature is ``u64 timestamp ‖ Ed25519 sig`` over
  ``"cosignature/v1\\ntime <ts>\\n" ‖ note text``.

Verifier keys use the signed-note vkey encoding ``name+hexkeyid+base64(type ‖ key)``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fedcredit.ledger.errors import (
    CheckpointRollback,
    CosignatureQuorum,
    NoteMalformed,
    OriginMismatch,
    SignatureInvalid,
    UnknownKey,
)
from fedcredit.ledger.merkle import HASH_SIZE

SIG_ED25519 = 0x01
SIG_COSIGNATURE_V1 = 0x04
_DASH = "\u2014 "  # em dash + space starts every signature line


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise NoteMalformed(f"{what} is not valid base64: {text!r}") from exc


def _check_name(name: str) -> str:
    if not name or any(c.isspace() for c in name) or "+" in name:
        raise NoteMalformed(f"a key name must be non-empty without spaces or '+'; got {name!r}")
    return name


def key_id(name: str, sig_type: int, public_key: bytes) -> bytes:
    return hashlib.sha256(name.encode() + b"\n" + bytes([sig_type]) + public_key).digest()[:4]


def _raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


# --- keys ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Verifier:
    """A trusted public key: a log key (type 0x01) or a witness cosigner key (type 0x04)."""

    name: str
    sig_type: int
    public_key: bytes

    @property
    def key_id(self) -> bytes:
        return key_id(self.name, self.sig_type, self.public_key)

    @property
    def vkey(self) -> str:
        return f"{self.name}+{self.key_id.hex()}+{_b64(bytes([self.sig_type]) + self.public_key)}"

    @staticmethod
    def parse(vkey: str) -> Verifier:
        parts = vkey.strip().split("+", 2)  # the base64 key may itself contain "+"
        if len(parts) != 3:
            raise NoteMalformed(f"a verifier key has the form name+keyid+base64key; got {vkey!r}")
        name, kid_hex, b64 = parts
        _check_name(name)
        raw = _unb64(b64, "the verifier key")
        if len(raw) != 33 or raw[0] not in (SIG_ED25519, SIG_COSIGNATURE_V1):
            raise NoteMalformed(
                f"verifier key {name!r} must be type 0x01 or 0x04 plus a 32-byte Ed25519 key; "
                f"got {len(raw)} bytes of type {raw[:1].hex() or 'none'}"
            )
        v = Verifier(name, raw[0], raw[1:])
        if v.key_id.hex() != kid_hex.lower():
            raise NoteMalformed(
                f"verifier key {name!r} declares key id {kid_hex}; its key gives {v.key_id.hex()}"
            )
        return v

    def _ed(self) -> Ed25519PublicKey:
        return Ed25519PublicKey.from_public_bytes(self.public_key)


@dataclass(frozen=True)
class Signer:
    """A private key that signs notes (log) or cosignatures (witness)."""

    name: str
    private_key: Ed25519PrivateKey
    sig_type: int = SIG_ED25519

    @staticmethod
    def generate(name: str, sig_type: int = SIG_ED25519) -> Signer:
        return Signer(_check_name(name), Ed25519PrivateKey.generate(), sig_type)

    @staticmethod
    def from_pem(name: str, pem: bytes, sig_type: int = SIG_ED25519) -> Signer:
        key = serialization.load_pem_private_key(pem, password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise NoteMalformed(f"the signing key for {name!r} must be an Ed25519 private key")
        return Signer(_check_name(name), key, sig_type)

    def to_pem(self) -> bytes:
        return self.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    @property
    def verifier(self) -> Verifier:
        return Verifier(self.name, self.sig_type, _raw_public(self.private_key.public_key()))


# --- notes --------------------------------------------------------------------------


@dataclass(frozen=True)
class NoteSignature:
    name: str
    key_id: bytes
    signature: bytes

    def line(self) -> str:
        return f"{_DASH}{self.name} {_b64(self.key_id + self.signature)}\n"


@dataclass(frozen=True)
class Note:
    text: str  # ends with a newline
    signatures: tuple[NoteSignature, ...] = ()

    def format(self) -> str:
        return self.text + "\n" + "".join(s.line() for s in self.signatures)

    def with_signatures(self, extra: Iterable[NoteSignature]) -> Note:
        seen = {(s.name, s.key_id) for s in self.signatures}
        sigs = list(self.signatures)
        for s in extra:
            if (s.name, s.key_id) not in seen:
                sigs.append(s)
                seen.add((s.name, s.key_id))
        return Note(self.text, tuple(sigs))

    @staticmethod
    def parse(data: str | bytes) -> Note:
        if isinstance(data, bytes):
            try:
                data = data.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise NoteMalformed("a signed note must be UTF-8") from exc
        split = data.rfind("\n\n")
        if split < 0:
            raise NoteMalformed("a signed note needs its text, an empty line, then signature lines")
        text, sig_block = data[: split + 1], data[split + 2 :]
        if not sig_block.endswith("\n"):
            raise NoteMalformed("the last signature line of a note must end with a newline")
        sigs = []
        for n, line in enumerate(sig_block[:-1].split("\n"), 1):
            if not line.startswith(_DASH):
                raise NoteMalformed(f"signature line {n} must start with '— '; got {line[:20]!r}")
            parts = line[len(_DASH) :].split(" ")
            if len(parts) != 2:
                raise NoteMalformed(f"signature line {n} must be '— name base64'; got {line!r}")
            raw = _unb64(parts[1], f"signature line {n}")
            if len(raw) < 5:
                raise NoteMalformed(
                    f"signature line {n} is too short to hold a key id and signature"
                )
            sigs.append(NoteSignature(_check_name(parts[0]), raw[:4], raw[4:]))
        if not sigs:
            raise NoteMalformed("a signed note must carry at least one signature")
        return Note(text, tuple(sigs))


def sign_note(text: str, signer: Signer) -> NoteSignature:
    if signer.sig_type != SIG_ED25519:
        raise ValueError("note signatures use a type-0x01 key")
    sig = signer.private_key.sign(text.encode("utf-8"))
    return NoteSignature(signer.name, signer.verifier.key_id, sig)


def _cosigned_message(text: str, timestamp: int) -> bytes:
    return f"cosignature/v1\ntime {timestamp}\n".encode() + text.encode("utf-8")


def cosign(text: str, signer: Signer, timestamp: int | None = None) -> NoteSignature:
    """A tlog-cosignature/v1 over a checkpoint's note text."""
    if signer.sig_type != SIG_COSIGNATURE_V1:
        raise ValueError("cosignatures use a type-0x04 key")
    ts = int(time.time()) if timestamp is None else timestamp
    sig = signer.private_key.sign(_cosigned_message(text, ts))
    return NoteSignature(signer.name, signer.verifier.key_id, struct.pack(">Q", ts) + sig)


def _verify_sig(note: Note, sig: NoteSignature, v: Verifier) -> int | None:
    """Check one signature by a matching verifier; returns the cosignature timestamp if any."""
    try:
        if v.sig_type == SIG_ED25519:
            v._ed().verify(sig.signature, note.text.encode("utf-8"))
            return None
        if len(sig.signature) != 72:
            raise SignatureInvalid(
                f"the cosignature by {v.name} is {len(sig.signature)} bytes; expected 8 + 64",
                key=v.name,
            )
        ts = struct.unpack(">Q", sig.signature[:8])[0]
        v._ed().verify(sig.signature[8:], _cosigned_message(note.text, ts))
        return int(ts)
    except InvalidSignature as exc:
        raise SignatureInvalid(
            f"the signature by {v.name} (key id {v.key_id.hex()}) does not verify over this note",
            key=v.name,
        ) from exc


# --- checkpoints --------------------------------------------------------------------


@dataclass(frozen=True)
class Checkpoint:
    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = field(default=())

    def text(self) -> str:
        ext = "".join(line + "\n" for line in self.extensions)
        return f"{self.origin}\n{self.size}\n{_b64(self.root)}\n{ext}"

    @staticmethod
    def parse_text(text: str) -> Checkpoint:
        if not text.endswith("\n"):
            raise NoteMalformed("checkpoint text must end with a newline")
        lines = text[:-1].split("\n")
        if len(lines) < 3:
            raise NoteMalformed(
                f"a checkpoint has an origin, a size and a root hash line; got {len(lines)} lines"
            )
        origin, size_s, root_s = lines[:3]
        if not origin:
            raise NoteMalformed("the checkpoint origin line is empty")
        if (
            not size_s.isdigit()
            or (size_s != "0" and size_s.startswith("0"))
            or not size_s.isascii()
        ):
            raise NoteMalformed(
                f"the checkpoint size must be a decimal without leading zeros; got {size_s!r}"
            )
        root = _unb64(root_s, "the checkpoint root hash")
        if len(root) != HASH_SIZE:
            raise NoteMalformed(
                f"the checkpoint root hash must be {HASH_SIZE} bytes; got {len(root)}"
            )
        if any(not line for line in lines[3:]):
            raise NoteMalformed("checkpoint extension lines must not be empty")
        return Checkpoint(origin, int(size_s), root, tuple(lines[3:]))


@dataclass(frozen=True)
class SignedCheckpoint:
    checkpoint: Checkpoint
    note: Note
    cosigned_by: tuple[str, ...] = ()  # witness names whose cosignatures verified
    cosigned_at: tuple[int, ...] = ()  # their cosignature/v1 timestamps (Unix s), same order

    @property
    def size(self) -> int:
        return self.checkpoint.size

    @property
    def root(self) -> bytes:
        return self.checkpoint.root

    def format(self) -> str:
        return self.note.format()


def sign_checkpoint(cp: Checkpoint, signer: Signer) -> str:
    text = cp.text()
    return Note(text, (sign_note(text, signer),)).format()


def open_checkpoint(
    data: str | bytes,
    log_key: Verifier,
    *,
    origin: str | None = None,
    witnesses: Sequence[Verifier] = (),
    quorum: int = 0,
) -> SignedCheckpoint:
    """Verify a signed checkpoint: the log's signature and at least ``quorum`` witness cosignatures.

    Signatures by unknown keys are ignored (signed-note rules); a signature by
    a known name and key id that does not verify is an error.
    """
    note = Note.parse(data)
    cp = Checkpoint.parse_text(note.text)
    if origin is not None and cp.origin != origin:
        raise OriginMismatch(
            f"the checkpoint is for log {cp.origin!r}; expected {origin!r}",
            expected=origin,
            got=cp.origin,
        )
    if cp.origin != log_key.name:
        raise OriginMismatch(
            f"the checkpoint origin {cp.origin!r} is not the log key's name {log_key.name!r}",
            expected=log_key.name,
            got=cp.origin,
        )
    known = {(v.name, v.key_id): v for v in (log_key, *witnesses)}
    log_ok = False
    cosigners: list[str] = []
    times: list[int] = []
    for sig in note.signatures:
        v = known.get((sig.name, sig.key_id))
        if v is None:
            continue
        ts = _verify_sig(note, sig, v)
        if v is log_key:
            log_ok = True
        elif v.name not in cosigners:
            cosigners.append(v.name)
            times.append(ts or 0)
    if not log_ok:
        raise UnknownKey(
            f"the checkpoint carries no signature by the log key {log_key.name}+{log_key.key_id.hex()}; "
            f"signers present: {sorted({s.name + '+' + s.key_id.hex() for s in note.signatures})}",
            key=log_key.name,
        )
    if len(cosigners) < quorum:
        raise CosignatureQuorum(
            f"the checkpoint of size {cp.size} has {len(cosigners)} valid witness cosignatures "
            f"({', '.join(cosigners) or 'none'}); at least {quorum} required",
            expected=quorum,
            got=len(cosigners),
        )
    return SignedCheckpoint(cp, note, tuple(cosigners), tuple(times))


def check_not_rollback(previous: Checkpoint, new: Checkpoint) -> None:
    """A newer checkpoint may not be smaller, nor differ at the same size."""
    if new.size < previous.size:
        raise CheckpointRollback(
            f"the checkpoint has size {new.size}, smaller than the size {previous.size} already seen",
            expected_at_least=previous.size,
            got=new.size,
        )
    if new.size == previous.size and new.root != previous.root:
        raise CheckpointRollback(
            f"two checkpoints of size {new.size} have different roots (split view)",
            size=new.size,
        )

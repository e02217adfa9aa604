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

What the coordinator sees: each bank's vector plus masks that are uniformly random
to anyone without one of the two private keys, and the exact sum (int64, modulo
2**64). Up to B - 2 banks colluding with it learn the sum of the others' vectors,
never one of them. Limits: the public keys are not signed, so a coordinator that
substitutes keys in the roster (a man in the middle, as against Flower's SecAgg+)
can unmask a bank; the roster digest is checked for consistency within a run only.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives import hashes, serialization
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


def roster_json(roster: dict[int, bytes]) -> str:
    return json.dumps([[int(n), k.hex()] for n, k in sorted(roster.items())])


def parse_roster(text: str) -> dict[int, bytes]:
    try:
        rows = json.loads(text)
        roster = {int(n): bytes.fromhex(str(k)) for n, k in rows}
    except (ValueError, TypeError) as exc:
        raise RosterRefused(f"secure roster is malformed: {exc}") from None
    if len(roster) != len(rows) or any(len(k) != 32 for k in roster.values()):
        raise RosterRefused("secure roster must list each bank once with a 32-byte X25519 key")
    return roster


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

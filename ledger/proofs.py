"""RFC 9162 inclusion and consistency proof verification.

The algorithms are RFC 9162 §2.1.3.2 and §2.1.4.2, written in the equivalent
"inner / border" form (as in transparency-dev/merkle) so that the expected
proof length is known up front and a short or long proof is named as such
instead of surfacing as a root mismatch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from fedcredit.ledger.errors import (
    ProofIndexOutOfRange,
    ProofLengthMismatch,
    ProofMalformed,
    ProofSizesInvalid,
    RootMismatch,
)
from fedcredit.ledger.merkle import HASH_SIZE

_sha256 = hashlib.sha256
_NODE = b"\x01"


def _decompose(index: int, size: int) -> tuple[int, int]:
    """(inner, border): proof hashes below and on the right border (RFC 9162 path shape)."""
    inner = (index ^ (size - 1)).bit_length()
    border = (index >> inner).bit_count()
    return inner, border


def _check_hashes(proof: Sequence[bytes]) -> None:
    if all(len(h) == HASH_SIZE for h in proof):
        return
    for i, h in enumerate(proof):
        if len(h) != HASH_SIZE:
            raise ProofMalformed(
                f"proof element {i} is {len(h)} bytes long; expected a {HASH_SIZE}-byte SHA-256 hash",
                position=i,
            )


def root_from_inclusion_proof(index: int, size: int, leaf: bytes, proof: Sequence[bytes]) -> bytes:
    """The root implied by an inclusion proof (raises on impossible index or wrong length)."""
    if not 0 <= index < size:
        raise ProofIndexOutOfRange(
            f"leaf index {index} is outside a tree of size {size}", index=index, size=size
        )
    inner, border = _decompose(index, size)
    if len(proof) != inner + border:
        raise ProofLengthMismatch(
            f"an inclusion proof for leaf {index} in a tree of size {size} has "
            f"{inner + border} hashes; got {len(proof)}",
            expected=inner + border,
            got=len(proof),
        )
    _check_hashes(proof)
    if len(leaf) != HASH_SIZE:
        raise ProofMalformed(f"the leaf hash is {len(leaf)} bytes; expected {HASH_SIZE}")
    h = leaf
    sha, node = _sha256, _NODE
    for i, p in enumerate(proof):
        # below `inner` the leaf's side decides; on the right border the path is always the right child
        if i >= inner or index >> i & 1:
            h = sha(node + p + h).digest()
        else:
            h = sha(node + h + p).digest()
    return h


def verify_inclusion(
    index: int, size: int, leaf: bytes, proof: Sequence[bytes], root: bytes
) -> None:
    """RFC 9162 §2.1.3.2: raise unless ``leaf`` is at ``index`` in the tree with ``root``."""
    got = root_from_inclusion_proof(index, size, leaf, proof)
    if got != root:
        raise RootMismatch(
            f"the inclusion proof for leaf {index} leads to root {got.hex()}; "
            f"the checkpoint of size {size} has root {root.hex()}",
            expected=root.hex(),
            got=got.hex(),
        )


def verify_consistency(
    old_size: int, new_size: int, proof: Sequence[bytes], old_root: bytes, new_root: bytes
) -> None:
    """RFC 9162 §2.1.4.2: raise unless the tree (new_size, new_root) extends (old_size, old_root)."""
    if old_size < 0 or new_size < old_size:
        raise ProofSizesInvalid(
            f"a consistency proof goes from a smaller tree to a larger one; got sizes {old_size} -> {new_size}",
            old_size=old_size,
            new_size=new_size,
        )
    if old_size == new_size or old_size == 0:
        if proof:
            raise ProofLengthMismatch(
                f"a consistency proof from size {old_size} to {new_size} is empty; got {len(proof)} hashes",
                expected=0,
                got=len(proof),
            )
        if old_size == new_size and old_root != new_root:
            raise RootMismatch(
                f"two checkpoints of the same size {old_size} have different roots "
                f"{old_root.hex()} and {new_root.hex()}",
                expected=old_root.hex(),
                got=new_root.hex(),
            )
        return
    inner, border = _decompose(old_size - 1, new_size)
    shift = (old_size & -old_size).bit_length() - 1
    inner -= shift
    if old_size == 1 << shift:
        seed, start = old_root, 0
    else:
        if not proof:
            raise ProofLengthMismatch(
                f"a consistency proof from size {old_size} to {new_size} cannot be empty",
                expected=1 + inner + border,
                got=0,
            )
        seed, start = proof[0], 1
    want = start + inner + border
    if len(proof) != want:
        raise ProofLengthMismatch(
            f"a consistency proof from size {old_size} to {new_size} has {want} hashes; got {len(proof)}",
            expected=want,
            got=len(proof),
        )
    _check_hashes(proof)
    if len(old_root) != HASH_SIZE or len(new_root) != HASH_SIZE:
        raise ProofMalformed(f"roots must be {HASH_SIZE}-byte hashes")
    mask = (old_size - 1) >> shift
    h1 = seed
    h2 = seed
    sha, node = _sha256, _NODE
    for i, p in enumerate(proof[start:]):
        if i >= inner or mask >> i & 1:
            h1 = sha(node + p + h1).digest()
            h2 = sha(node + p + h2).digest()
        else:
            h2 = sha(node + h2 + p).digest()
    if h1 != old_root:
        raise RootMismatch(
            f"the consistency proof {old_size} -> {new_size} leads to old root {h1.hex()}; "
            f"the old checkpoint has {old_root.hex()}",
            expected=old_root.hex(),
            got=h1.hex(),
            which="old",
        )
    if h2 != new_root:
        raise RootMismatch(
            f"the consistency proof {old_size} -> {new_size} leads to new root {h2.hex()}; "
            f"the new checkpoint has {new_root.hex()}",
            expected=new_root.hex(),
            got=h2.hex(),
            which="new",
        )

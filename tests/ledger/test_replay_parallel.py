"""Replay in chunk-aligned runs across forked worker processes.

The verdict and the error (type and message, so the first bad entry named) must
not depend on the chunk size or on how many processes share the export: small
chunks and several workers are forced here on small logs, so that runs, chunk
boundaries and checkpoint sizes fall everywhere.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator

import pytest

from fedcredit.ledger import audit
from fedcredit.ledger.audit import Trust, replay
from fedcredit.ledger.checkpoint import Checkpoint, Signer, sign_checkpoint
from fedcredit.ledger.entry import PREFIX_RE
from fedcredit.ledger.errors import VerificationError
from fedcredit.ledger.export import Export
from fedcredit.ledger.log import _entry_bytes
from fedcredit.ledger.merkle import leaf_hash
from tests.ledger.reference import Reference

ORIGIN = "fedcredit.test/replay"
SIGNER = Signer.generate(ORIGIN)
TRUST = Trust(SIGNER.verifier)
KINDS = ["score_access", "consent_event", "model_published"]


def _export(n: int, sizes: list[int], seed: int = 1) -> Export:
    rng = random.Random(seed)
    entries: list[bytes] = []
    prev = bytes(32)
    for i in range(n):
        payload = b'{"n":%d,"request":"%s"}' % (i, hashlib.sha256(b"%d" % i).hexdigest().encode())
        d = _entry_bytes(
            i,
            "2026-12-01T10:00:00.000000Z",
            KINDS[rng.randrange(3)],
            "coordinator",
            None,
            payload,
            prev,
        )
        prev = leaf_hash(d)
        entries.append(d)
    ref = Reference([leaf_hash(d) for d in entries])
    notes = [sign_checkpoint(Checkpoint(ORIGIN, s, ref.mth(0, s)), SIGNER) for s in sizes]
    return Export(ORIGIN, SIGNER.verifier.vkey, notes, entries)


@pytest.fixture(
    params=[(2, 1), (2, 2), (3, 3), (4, 2), (12, 1)], ids=lambda p: f"chunk2^{p[0]}x{p[1]}"
)
def layout(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    bits, workers = request.param
    monkeypatch.setattr(audit, "CHUNK_BITS", bits)
    yield workers


def _outcome(
    ex: Export, workers: int, strict: bool = False
) -> tuple[str, str] | tuple[bytes, dict[str, int]]:
    try:
        r = replay(ex, TRUST, strict=strict, workers=workers)
    except VerificationError as exc:
        return type(exc).__name__, exc.message
    return r.root, r.kinds


def _sequential(ex: Export, monkeypatch: pytest.MonkeyPatch, strict: bool = False) -> object:
    with monkeypatch.context() as m:
        m.setattr(audit, "CHUNK_BITS", 12)
        return _outcome(ex, 1, strict)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 16, 17, 63, 64, 65, 100, 257])
def test_roots_at_every_checkpoint_size(n: int, layout: int) -> None:
    rng = random.Random(n)
    sizes = sorted({*rng.sample(range(1, n + 1), min(n, 6)), n})
    ex = _export(n, sizes)
    r = replay(ex, TRUST, strict=True, workers=layout)
    assert r.entries == n and r.latest_size == n and r.checkpoints == len(sizes)
    assert sum(r.kinds.values()) == n


def _rechain(entries: list[bytes], start: int) -> None:
    prev = leaf_hash(entries[start - 1]) if start else bytes(32)
    for j in range(start, len(entries)):
        m = PREFIX_RE.match(entries[j])
        assert m is not None
        entries[j] = entries[j][: m.start(2)] + prev.hex().encode() + entries[j][m.end(2) :]
        prev = leaf_hash(entries[j])


def _tamper(ex: Export, rng: random.Random) -> None:
    e = ex.entries
    what = rng.randrange(7)
    i = rng.randrange(len(e))
    if what == 0:  # flip a byte
        b = bytearray(e[i])
        b[rng.randrange(len(b))] ^= rng.randrange(1, 256)
        e[i] = bytes(b)
    elif what == 1:
        del e[i]
    elif what == 2:
        j = rng.randrange(len(e))
        e[i], e[j] = e[j], e[i]
    elif what == 3:
        e.insert(i, e[rng.randrange(len(e))])
    elif what == 4:  # rewrite a payload and re-chain everything after it
        e[i] = e[i].replace(b'"n":', b'"n":7', 1)
        _rechain(e, i + 1)
    elif what == 5:  # valid prefix and chain, not canonical (only strict sees it)
        e[i] = e[i].replace(b'{"n":', b'{ "n":', 1)
        _rechain(e, i + 1)
    else:  # two faults: a strict one early, a chain break later
        e[i] = e[i].replace(b'{"n":', b'{ "n":', 1)
        _rechain(e, i + 1)
        k = rng.randrange(i, len(e))
        e[k] = e[k].replace(b'"n":', b'"n":9', 1)


def test_tampering_gives_the_same_error_in_any_layout(
    layout: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = _export(300, [40, 128, 200, 300])
    rng = random.Random(layout)
    for _ in range(60):
        ex = Export(base.origin, base.log_key, list(base.checkpoints), list(base.entries))
        _tamper(ex, rng)
        strict = rng.random() < 0.5
        got = _outcome(ex, layout, strict)
        assert got == _sequential(ex, monkeypatch, strict)
        if ex.entries != base.entries and strict:
            assert isinstance(got[0], str), "a tampering went undetected"


def test_a_dead_worker_is_replaced_by_the_parent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(audit, "CHUNK_BITS", 3)
    collect = audit._collect

    def dead(pid: int, fd: int) -> tuple[bool, object]:
        collect(pid, fd)  # reap the child, then pretend it died
        return False, None

    monkeypatch.setattr(audit, "_collect", dead)
    ex = _export(100, [50, 100])
    assert replay(ex, TRUST, workers=3).root == _outcome(ex, 1)[0]


def test_workers_by_default_only_for_big_exports() -> None:
    assert audit._worker_count(audit.PARALLEL_MIN - 1, None) == 1
    assert audit._worker_count(10, 4) == 1  # never more runs than chunks
    assert audit._worker_count(3 << audit.CHUNK_BITS, 8) == 3


def test_an_altered_entry_is_named_at_every_position(
    layout: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Including the last entry of a chunk or of a worker's run, which only the next
    chunk's or run's first chain member exposes."""
    base = _export(70, [33, 70])
    for i in range(70):
        ex = Export(base.origin, base.log_key, list(base.checkpoints), list(base.entries))
        ex.entries[i] = ex.entries[i].replace(b'"n":', b'"n":5', 1)
        got = _outcome(ex, layout)
        assert got == _sequential(ex, monkeypatch)
        want = "RootMismatch" if i == 69 else "ChainBroken"
        assert got[0] == want, (i, got)


def _strict_walk(entries: list[bytes]) -> tuple[str, str] | None:
    """The entry-by-entry check with the strict PREFIX_RE (what replay must agree with)."""
    try:
        audit._name_first_bad(entries, 0, bytes(32))
    except VerificationError as exc:
        return type(exc).__name__, exc.message
    return None


@pytest.mark.parametrize("bits", [3, 12])
def test_fast_prefix_check_accepts_exactly_what_prefix_re_accepts(
    bits: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Mutate bytes of the fixed members (actor, chain, index, kind) with characters on
    both sides of each member's class, re-chain, and compare with the strict walk."""
    monkeypatch.setattr(audit, "CHUNK_BITS", bits)
    base = _export(40, [40])
    alphabet = b'"\\,:{}\n Az09aZ._-\x00\xff'
    rng = random.Random(bits)
    specials = [
        (b'"actor":"coordinator"', b'"actor":"Coordinator"'),
        (b'"actor":"coordinator"', b'"actor":""'),
        (b'"actor":"coordinator"', b'"actor":"' + b"c" * 129 + b'"'),
        (b'"actor":"coordinator"', b'"actor":"' + b"c" * 128 + b'"'),
        (b'"actor":"coordinator"', b'"actor":"-coordinator"'),
        (b'"kind":"', b'"kind":"9'),
        (b'"kind":"', b'"kind":"' + b"k" * 64),
        (b'"kind":"', b'"kind":"_'),
    ]
    for trial in range(400):
        ex = Export(base.origin, base.log_key, list(base.checkpoints), list(base.entries))
        i = rng.randrange(len(ex.entries))
        d = ex.entries[i]
        if trial < len(specials) * 5:
            old, new = specials[trial % len(specials)]
            d = d.replace(old, new, 1)
        else:
            m = PREFIX_RE.match(d)
            assert m is not None
            b = bytearray(d)
            b[rng.randrange(m.end())] = alphabet[rng.randrange(len(alphabet))]
            d = bytes(b)
        ex.entries[i] = d
        _rechain(ex.entries, i + 1)
        want = _strict_walk(ex.entries)
        got = _outcome(ex, 2)
        if want is not None:
            assert got == want, (trial, d[:80])
        elif ex.entries != base.entries:
            assert got[0] == "RootMismatch", (trial, d[:80], got)

"""Tamper evidence: 1,000 random tamperings of a stored 10,000-entry log, every one detected.

The log is built and exported once per session; each tampering edits a cheap
copy of the export (lists of entry bytes and checkpoint notes) the way an
attacker with write access to the store or the file could, and the offline
auditor (``ledger.audit.replay`` with the checkpoint it obtained
independently) must refuse it.
"""

from __future__ import annotations

import hashlib
import io
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from fedcredit.ledger.audit import Trust, replay
from fedcredit.ledger.checkpoint import Checkpoint, Note, Signer, sign_checkpoint
from fedcredit.ledger.entry import PREFIX_RE
from fedcredit.ledger.errors import VerificationError
from fedcredit.ledger.export import Export, parse_export
from fedcredit.ledger.log import Log
from fedcredit.ledger.settings import LogSettings

N = 10_000
TAMPERINGS = 1_000
ORIGIN = "fedcredit.test/ledger"


@dataclass
class Stored:
    export: Export
    trust: Trust
    trusted_latest: str
    signer: Signer
    cache: dict[bytes, bytes]


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> Stored:
    d: Path = tmp_path_factory.mktemp("tamper")
    signer = Signer.generate(ORIGIN)
    log = Log.open(
        f"sqlite:///{d}/ledger.sqlite",
        signer,
        ORIGIN,
        actor="coordinator",
        settings=LogSettings(checkpoint_interval=3600),
    )
    rng = random.Random(2026)
    kinds = ["score_access", "guarantee_decision", "consent_event", "model_published"]
    for chunk in range(10):
        log.append_many(
            [
                (
                    kinds[rng.randrange(4)],
                    None,
                    {
                        "request": hashlib.sha256(f"{chunk}/{i}".encode()).hexdigest(),
                        "n": i,
                        "bank": f"bank-{i % 7}",
                    },
                )
                for i in range(N // 10)
            ]
        )
        if chunk % 3 == 2 or chunk == 9:
            log.checkpoint()
    buf = io.StringIO()
    log.export(buf)
    trusted = log.latest_checkpoint()
    log.close()
    ex = parse_export(buf.getvalue())
    assert len(ex.entries) == N and len(ex.checkpoints) >= 4
    trust = Trust(signer.verifier)
    cache = {e: hashlib.sha256(b"\x00" + e).digest() for e in ex.entries}
    replay(ex, trust, trusted_checkpoints=[trusted], strict=True)  # the untouched log verifies
    return Stored(ex, trust, trusted, signer, cache)


def _flip_entry_byte(ex: Export, rng: random.Random) -> str:
    i = rng.randrange(len(ex.entries))
    b = bytearray(ex.entries[i])
    j = rng.randrange(len(b))
    b[j] ^= rng.randrange(1, 256)
    ex.entries[i] = bytes(b)
    return "flip a byte of an entry"


def _delete(ex: Export, rng: random.Random) -> str:
    del ex.entries[rng.randrange(len(ex.entries))]
    return "delete an entry"


def _reorder(ex: Export, rng: random.Random) -> str:
    i, j = rng.sample(range(len(ex.entries)), 2)
    ex.entries[i], ex.entries[j] = ex.entries[j], ex.entries[i]
    return "swap two entries"


def _insert_forged(ex: Export, rng: random.Random) -> str:
    i = rng.randrange(len(ex.entries) + 1)
    ex.entries.insert(i, ex.entries[rng.randrange(len(ex.entries))])
    return "insert a copied entry"


def _duplicate(ex: Export, rng: random.Random) -> str:
    i = rng.randrange(len(ex.entries))
    ex.entries.insert(i + 1, ex.entries[i])
    return "duplicate an entry in place"


def _truncate(ex: Export, rng: random.Random) -> str:
    k = rng.randrange(1, 2000)
    del ex.entries[-k:]
    return "truncate the entries"


def _truncate_and_hide(ex: Export, rng: random.Random) -> str:
    # Drop the tail and every checkpoint covering it: a consistent prefix that
    # only the independently obtained (trusted) checkpoint exposes.
    keep = Checkpoint.parse_text(
        Note.parse(ex.checkpoints[rng.randrange(len(ex.checkpoints) - 1)]).text
    ).size
    del ex.entries[keep:]
    ex.checkpoints = [
        c for c in ex.checkpoints if Checkpoint.parse_text(Note.parse(c).text).size <= keep
    ]
    return "truncate entries and checkpoints"


def _rewrite_and_rechain(ex: Export, rng: random.Random) -> str:
    # An attacker without the log key rewrites one payload and recomputes the
    # chain of every later entry: only the signed roots can catch it.
    i = rng.randrange(len(ex.entries))
    ex.entries[i] = ex.entries[i].replace(b'"n":', b'"n":1', 1)
    prev = hashlib.sha256(b"\x00" + ex.entries[i]).digest()
    for j in range(i + 1, len(ex.entries)):
        m = PREFIX_RE.match(ex.entries[j])
        assert m is not None
        ex.entries[j] = (
            ex.entries[j][: m.start(2)] + prev.hex().encode() + ex.entries[j][m.end(2) :]
        )
        prev = hashlib.sha256(b"\x00" + ex.entries[j]).digest()
    return "rewrite an entry and re-chain the rest"


def _replace_checkpoint_other_key(ex: Export, rng: random.Random) -> str:
    k = rng.randrange(len(ex.checkpoints))
    cp = Checkpoint.parse_text(Note.parse(ex.checkpoints[k]).text)
    forged_root = hashlib.sha256(rng.randbytes(8)).digest()
    ex.checkpoints[k] = sign_checkpoint(replace(cp, root=forged_root), Signer.generate(ORIGIN))
    return "replace a checkpoint (signed by another key)"


def _replace_checkpoint_old(ex: Export, rng: random.Random) -> str:
    k = rng.randrange(1, len(ex.checkpoints))
    ex.checkpoints[k] = ex.checkpoints[0]
    return "replace a checkpoint with an older one"


def _flip_signature(ex: Export, rng: random.Random) -> str:
    k = rng.randrange(len(ex.checkpoints))
    note = Note.parse(ex.checkpoints[k])
    sig = note.signatures[0]
    b = bytearray(sig.signature)
    b[rng.randrange(len(b))] ^= rng.randrange(1, 256)
    ex.checkpoints[k] = Note(note.text, (type(sig)(sig.name, sig.key_id, bytes(b)),)).format()
    return "flip a byte of a checkpoint signature"


def _edit_checkpoint_body(ex: Export, rng: random.Random) -> str:
    k = rng.randrange(len(ex.checkpoints))
    note = Note.parse(ex.checkpoints[k])
    cp = Checkpoint.parse_text(note.text)
    if rng.random() < 0.5:
        cp = replace(cp, size=cp.size + rng.choice([-1, 1]))
    else:
        root = bytearray(cp.root)
        root[rng.randrange(32)] ^= 1
        cp = replace(cp, root=bytes(root))
    ex.checkpoints[k] = Note(cp.text(), note.signatures).format()
    return "edit a checkpoint's size or root"


def _drop_all_checkpoints(ex: Export, rng: random.Random) -> str:
    ex.checkpoints = []
    return "remove every checkpoint"


TAMPERS: list[Callable[[Export, random.Random], str]] = [
    _flip_entry_byte,
    _flip_entry_byte,
    _flip_entry_byte,
    _delete,
    _reorder,
    _insert_forged,
    _duplicate,
    _truncate,
    _truncate_and_hide,
    _rewrite_and_rechain,
    _replace_checkpoint_other_key,
    _replace_checkpoint_old,
    _flip_signature,
    _edit_checkpoint_body,
    _drop_all_checkpoints,
]


def test_every_tampering_is_detected(stored: Stored) -> None:
    rng = random.Random(7)
    detected: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    for n in range(TAMPERINGS):
        ex = Export(
            stored.export.origin,
            stored.export.log_key,
            list(stored.export.checkpoints),
            list(stored.export.entries),
        )
        what = rng.choice(TAMPERS)(ex, rng)
        assert (ex.entries, ex.checkpoints) != (stored.export.entries, stored.export.checkpoints), (
            what
        )
        try:
            replay(
                ex,
                stored.trust,
                trusted_checkpoints=[stored.trusted_latest],
                # strict entry parsing on a sample; hashes, chain and roots always
                strict=n % 250 == 0,
                leaf_cache=stored.cache,
            )
        except VerificationError as exc:
            detected[what] += 1
            reasons[exc.reason] += 1
            continue
        pytest.fail(f"tampering #{n} ({what}) was not detected")
    total = sum(detected.values())
    print(f"\ntamper test: {total}/{TAMPERINGS} tamperings of a {N}-entry log detected")
    for what, k in sorted(detected.items()):
        print(f"  {k:4d}  {what}")
    print("  by reason: " + ", ".join(f"{r}={k}" for r, k in sorted(reasons.items())))
    assert total == TAMPERINGS


def test_tampered_export_file_bytes_are_detected(stored: Stored, tmp_path: Path) -> None:
    """Edits to the file itself (inside entry strings) fail parsing or verification."""
    buf = io.StringIO()
    from fedcredit.ledger.export import write_export

    write_export(
        buf,
        origin=stored.export.origin,
        log_key=stored.export.log_key,
        checkpoints=stored.export.checkpoints,
        entries=stored.export.entries,
    )
    text = buf.getvalue()
    starts = [i for i in range(0, len(text), 997) if text[i].isalnum()][:20]
    for pos in starts:
        ch = "A" if text[pos] != "A" else "B"
        bad = text[:pos] + ch + text[pos + 1 :]
        with pytest.raises(VerificationError):
            replay(
                parse_export(bad),
                stored.trust,
                trusted_checkpoints=[stored.trusted_latest],
                strict=False,
            )


def test_replay_names_the_first_bad_entry(stored: Stored) -> None:
    ex = Export(
        stored.export.origin,
        stored.export.log_key,
        list(stored.export.checkpoints),
        list(stored.export.entries),
    )
    ex.entries[1234] = ex.entries[1234].replace(b'"n":', b'"n":9', 1)
    with pytest.raises(VerificationError) as e:
        replay(ex, stored.trust)
    assert e.value.reason == "LEDGER_CHAIN_BROKEN"
    assert "entry 1234 was altered" in e.value.message

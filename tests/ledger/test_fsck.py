"""Finding 3 of issue 16: fsck and the start check recompute the log from its entries.

Each tampering is done the way an operator with SQL access would do it: silence
the append-only guards (drop the SQLite triggers / disable the PostgreSQL ones),
rewrite, and put the guards back so the store opens. Then ``fedcredit ledger
fsck``'s check (``ledger.fsck.fsck``) and the check every start runs must each
refuse the store with LEDGER_STORE_CORRUPT naming the first bad index.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from fedcredit.ledger.checkpoint import SIG_COSIGNATURE_V1, Signer
from fedcredit.ledger.errors import StoreCorrupt
from fedcredit.ledger.fsck import WitnessState, fsck, witness_states
from fedcredit.ledger.log import Log
from fedcredit.ledger.settings import LogSettings
from fedcredit.ledger.store import APPEND_ONLY_TABLES, PG_TRIGGERS, SQLITE_TRIGGERS, LedgerStore
from fedcredit.ledger.witness import Witness, WitnessStore

ORIGIN = "fedcredit.test/ledger"
KEY = Signer.generate(ORIGIN)


@dataclass
class LocalWitness:
    """The real witness rules (ledger.witness.Witness) reached in-process, as the log's
    witnessing thread and start check reach a remote one."""

    witness: Witness

    @property
    def name(self) -> str:
        return self.witness.name

    @property
    def verifier(self) -> Any:
        return self.witness.verifier

    def add_checkpoint(self, old_size: int, proof: Sequence[bytes], note: str) -> str:
        return self.witness.add_checkpoint(old_size, list(proof), note).line()

    def info(self) -> Any:
        from fedcredit.ledger.witness import _info

        return _info(self.witness)


def _witness(tmp_path: Path, name: str = "dept-tax") -> LocalWitness:
    store = WitnessStore.open(f"sqlite:///{tmp_path}/witness-{name}.sqlite")
    return LocalWitness(
        Witness(Signer.generate(name, SIG_COSIGNATURE_V1), {ORIGIN: KEY.verifier}, store)
    )


def _open(url: str, witnesses: Sequence[Any] = (), full_max: int = 250_000) -> Log:
    settings = LogSettings(checkpoint_interval=3600, start_full_check_max=full_max)
    return Log.open(url, KEY, ORIGIN, settings=settings, witnesses=witnesses)


def _build(url: str, n: int = 100, witnesses: Sequence[Any] = ()) -> None:
    """n entries in 4 batches, a checkpoint after each; cosigned when witnesses are given."""
    with _open(url, witnesses) as log:
        for b in range(4):
            log.append_many([("k", None, {"i": i, "b": b}) for i in range(n // 4)])
            cp = log.checkpoint()
            deadline = time.monotonic() + 20
            while witnesses and time.monotonic() < deadline:  # the witnessing thread cosigns
                if all(log.store.witness_sizes().get(w.name) == cp.size for w in witnesses):
                    break
                time.sleep(0.02)
            assert all(log.store.witness_sizes().get(w.name) == cp.size for w in witnesses)


def _tamper(url: str, *sql: str) -> None:
    """Rewrite the store with its guards silenced, then restore them."""
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        if url.startswith("postgresql"):
            for t in APPEND_ONLY_TABLES:
                conn.exec_driver_sql(f"ALTER TABLE {t} DISABLE TRIGGER USER")
            for s in sql:
                conn.exec_driver_sql(s)
            for name, (t, _, _) in PG_TRIGGERS.items():
                conn.exec_driver_sql(f"ALTER TABLE {t} ENABLE ALWAYS TRIGGER {name}")
        else:
            for name in SQLITE_TRIGGERS:
                conn.exec_driver_sql(f"DROP TRIGGER {name}")
            for s in sql:
                conn.exec_driver_sql(s)
            for _, create in SQLITE_TRIGGERS.values():
                conn.exec_driver_sql(create)
    engine.dispose()


def _fsck(url: str, witnesses: Sequence[Any] = ()) -> Any:
    store = LedgerStore.open(url)
    try:
        states, down = witness_states(witnesses, ORIGIN)
        assert not down
        return fsck(store, KEY.verifier, witnesses=states)
    finally:
        store.close()


def _refused(url: str, index: int, words: str, witnesses: Sequence[Any] = ()) -> None:
    """Both fsck and the start check refuse the store, naming ``index``."""
    with pytest.raises(StoreCorrupt) as e:
        _fsck(url, witnesses)
    assert e.value.reason == "LEDGER_STORE_CORRUPT"
    assert e.value.code.name == "DATA_LOSS"
    assert e.value.metadata["index"] == str(index), e.value.message
    assert words in e.value.message
    with pytest.raises(StoreCorrupt) as e2:
        _open(url, witnesses)
    assert e2.value.metadata["index"] == str(index), e2.value.message


def test_a_clean_store_passes_and_start_continues_from_the_verified_size(db_url: str) -> None:
    _build(db_url)
    report = _fsck(db_url)
    assert (report.size, report.checked_from, report.checkpoints) == (100, 0, 4)
    with _open(db_url, full_max=0) as log:  # incremental
        assert log.startup_check.checked_from == 100
        log.append_many([("k", None, {"i": i}) for i in range(10)])
        log.checkpoint()
    with _open(db_url, full_max=0) as log:
        assert (log.startup_check.checked_from, log.startup_check.size) == (100, 110)
        assert log.startup_check.checkpoints == 1


def test_changed_entry_bytes(db_url: str) -> None:
    _build(db_url)
    # the payload's "i": 3 becomes 4 (same length); leaf hash left as it was
    blob = "CAST(REPLACE(CAST(data AS TEXT), '\"i\":3}', '\"i\":4}') AS BLOB)"
    if db_url.startswith("postgresql"):
        blob = "convert_to(replace(convert_from(data, 'UTF8'), '\"i\":3}', '\"i\":4}'), 'UTF8')"
    _tamper(db_url, f"UPDATE ledger_entries SET data = {blob} WHERE idx = 53")
    _refused(db_url, 53, "the entry or its hash was changed")


def test_changed_entry_with_its_leaf_hash_recomputed(db_url: str) -> None:
    """The stored leaf hash follows the new bytes: the next entry's chain breaks."""
    import hashlib

    _build(db_url)
    store = LedgerStore.open(db_url)
    data = store.get_entries(53, 54)[0].data.replace(b'"i":3}', b'"i":4}')
    store.close()
    leaf = hashlib.sha256(b"\x00" + data).hexdigest()
    if db_url.startswith("postgresql"):
        sql = f"UPDATE ledger_entries SET data = '\\x{data.hex()}', leaf_hash = '\\x{leaf}' WHERE idx = 53"
    else:
        sql = f"UPDATE ledger_entries SET data = X'{data.hex()}', leaf_hash = X'{leaf}' WHERE idx = 53"
    _tamper(db_url, sql)
    _refused(db_url, 54, "chain or index")


def test_a_deleted_middle_entry(db_url: str) -> None:
    _build(db_url)
    _tamper(db_url, "DELETE FROM ledger_entries WHERE idx = 41")
    _refused(db_url, 41, "missing from the store")


def test_a_deleted_middle_entry_found_by_an_incremental_start(db_url: str) -> None:
    _build(db_url)
    _fsck(db_url)  # records size 100 as verified
    _tamper(db_url, "DELETE FROM ledger_entries WHERE idx = 41")
    with pytest.raises(StoreCorrupt, match="some were deleted"):
        _open(db_url, full_max=0)


def _rollback_sql(keep: int) -> list[str]:
    return [
        f"DELETE FROM ledger_cosignatures WHERE size > {keep}",
        f"DELETE FROM ledger_checkpoints WHERE size > {keep}",
        f"DELETE FROM ledger_fsck WHERE size > {keep}",
        f"DELETE FROM ledger_entries WHERE idx >= {keep}",
        # every interior node over an entry at or beyond keep
        f"DELETE FROM ledger_nodes WHERE (idx + 1) * (CAST(1 AS BIGINT) << level) > {keep}",
    ]


def test_a_consistent_rollback_is_caught_by_the_witnesses(db_url: str, tmp_path: Path) -> None:
    """Truncated to the checkpoint of size 50 with everything after it, so that the
    store agrees with itself: only the witness, which cosigned 100, knows."""
    w = _witness(tmp_path)
    _build(db_url, witnesses=[w])
    assert w.witness.store.get(ORIGIN).size == 100
    _tamper(db_url, *_rollback_sql(50))
    store = LedgerStore.open(db_url)
    assert store.size() == 50 and fsck(store, KEY.verifier, record=False).size == 50
    store.close()
    _refused(db_url, 50, "witness dept-tax cosigned size 100", witnesses=[w])


def test_a_rollback_that_keeps_the_fsck_record_or_cosignatures(db_url: str) -> None:
    _build(db_url)
    _fsck(db_url)  # verified 100
    _tamper(db_url, *[s for s in _rollback_sql(50) if "ledger_fsck" not in s])
    _refused(db_url, 50, "verified 100 entries")


def test_a_rollback_keeping_stored_cosignatures(db_url: str, tmp_path: Path) -> None:
    w = _witness(tmp_path)
    _build(db_url, witnesses=[w])
    _tamper(
        db_url,
        "DELETE FROM ledger_fsck",
        "DELETE FROM ledger_entries WHERE idx >= 75",
        "DELETE FROM ledger_nodes WHERE (idx + 1) * (CAST(1 AS BIGINT) << level) > 75",
    )
    with pytest.raises(StoreCorrupt, match="signed a checkpoint of size 100") as e:
        _fsck(db_url)
    assert e.value.metadata["index"] == "75"


def test_a_rewritten_history_at_the_witnessed_size(db_url: str, tmp_path: Path) -> None:
    """A rollback to 50 followed by 50 different entries: sizes agree with the witness,
    the root at 100 does not."""
    w = _witness(tmp_path)
    _build(db_url, witnesses=[w])
    _tamper(db_url, *_rollback_sql(50))
    with _open(db_url) as log:  # no witness asked: the forged history is appended and signed
        log.append_many([("k", None, {"forged": i}) for i in range(50)])
        log.checkpoint()
    states, _ = witness_states([w], ORIGIN)
    assert states == [WitnessState("dept-tax", 100, states[0].root)]
    _refused(db_url, 99, "rewritten history", witnesses=[w])


def test_a_changed_stored_node(db_url: str) -> None:
    _build(db_url)
    zero = "'\\x" + "00" * 32 + "'" if db_url.startswith("postgresql") else "zeroblob(32)"
    _tamper(db_url, f"UPDATE ledger_nodes SET hash = {zero} WHERE level = 2 AND idx = 5")
    _refused(db_url, 20, "stored tree node (2, 5)")


def test_a_forged_checkpoint_row(db_url: str) -> None:
    _build(db_url)
    zero = "'\\x" + "00" * 32 + "'" if db_url.startswith("postgresql") else "zeroblob(32)"
    _tamper(db_url, f"UPDATE ledger_checkpoints SET root = {zero} WHERE size = 50")
    with pytest.raises(StoreCorrupt, match="differs from its signed note"):
        _fsck(db_url)


def test_a_large_store_by_whole_chunks(tmp_path: Path) -> None:
    """Beyond one aligned chunk (ledger.fsck.CHUNK) the tree is hashed level by level:
    the same roots as the sequencer's, checkpoints inside a chunk, tampering found there."""
    from fedcredit.ledger.fsck import CHUNK

    url = f"sqlite:///{tmp_path}/big.sqlite"
    n = 2 * CHUNK + 1000
    with _open(url) as log:
        log.append_many([("k", None, {"i": i}) for i in range(CHUNK + 123)])
        log.checkpoint()  # inside the second chunk
        log.append_many([("k", None, {"i": i}) for i in range(CHUNK + 123, n)])
        last = log.checkpoint()
    report = _fsck(url)
    assert (report.size, report.checkpoints, report.root) == (n, 2, last.root)
    with _open(url, full_max=0) as log:  # incremental from n: nothing to recompute
        assert log.startup_check.checked_from == n
        log.append_many([("k", None, {"i": i}) for i in range(n, n + CHUNK)])
        cp = log.checkpoint()
    with _open(url, full_max=0) as log:  # from an unaligned size through a whole chunk
        assert (log.startup_check.checked_from, log.startup_check.size) == (n, n + CHUNK)
    assert _fsck(url).root == cp.root
    _tamper(url, "UPDATE ledger_nodes SET hash = zeroblob(32) WHERE level = 5 AND idx = 700")
    _refused(url, 700 << 5, "stored tree node (5, 700)")


def test_a_clean_store_takes_the_bulk_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The entry-by-entry pass only runs to name a failure: on a clean store the chunk-wide
    compares must agree on their own (else fsck is silently several times slower)."""
    from fedcredit.ledger import fsck as fsck_mod
    from fedcredit.ledger.fsck import CHUNK

    url = f"sqlite:///{tmp_path}/l.sqlite"
    with _open(url) as log:
        log.append_many([("k", None, {"i": i}) for i in range(CHUNK + 77)])
        log.checkpoint()

    def refuse(*_: object) -> None:
        raise AssertionError("the entry-by-entry pass ran on a clean store")

    monkeypatch.setattr(fsck_mod._Walk, "_first_bad", refuse)
    assert _fsck(url).size == CHUNK + 77

"""The Log library on SQLite and PostgreSQL: durable group commit, checkpoints, proofs, append-only."""

from __future__ import annotations

import random
import threading
import time

import pytest
import sqlalchemy as sa

from fedcredit.common import uscc
from fedcredit.common.evidence import EvidenceSink, Receipt
from fedcredit.ledger.checkpoint import Signer, open_checkpoint
from fedcredit.ledger.entry import Entry
from fedcredit.ledger.errors import IndexOutOfRange, InvalidEntry, LogClosed, NoCheckpoint
from fedcredit.ledger.log import Log
from fedcredit.ledger.merkle import leaf_hash
from fedcredit.ledger.proofs import verify_consistency, verify_inclusion
from fedcredit.ledger.settings import LogSettings

ORIGIN = "dept-tax/disclosures"
KEY = Signer.generate(ORIGIN)
CODES = [uscc.generate(random.Random(i)) for i in range(5)]


def _open(url: str, **kw: object) -> Log:
    settings = LogSettings(checkpoint_interval=kw.pop("interval", 3600.0))  # type: ignore[arg-type]
    return Log.open(url, KEY, ORIGIN, settings=settings, **kw)  # type: ignore[arg-type]


def test_is_an_evidence_sink(db_url: str) -> None:
    with _open(db_url) as log:
        assert isinstance(log, EvidenceSink)
        r = log.append("feature_access", CODES[0], {"request": "ab" * 32})
        assert r == Receipt(0, r.leaf_hash)
        stored = log.get_entries(0, 1)[0]
        assert leaf_hash(stored.data) == r.leaf_hash == stored.leaf_hash
        e = Entry.parse(stored.data)
        assert (e.index, e.kind, e.actor, e.subject, e.payload) == (
            0,
            "feature_access",
            "dept-tax",
            CODES[0],
            {"request": "ab" * 32},
        )
        assert e.chain == bytes(32)


def test_chain_proofs_and_checkpoints(db_url: str) -> None:
    with _open(db_url) as log:
        with pytest.raises(NoCheckpoint):
            log.latest_checkpoint()
        rs = log.append_many([("feature_access", CODES[i % 5], {"i": i}) for i in range(300)])
        assert [r.index for r in rs] == list(range(300))
        cp1 = log.checkpoint()
        assert cp1.size == 300
        log.append_many([("feature_access", None, {"i": i}) for i in range(77)])
        cp2 = log.checkpoint()
        sc = open_checkpoint(log.latest_checkpoint(), KEY.verifier, origin=ORIGIN)
        assert (sc.size, sc.root) == (377, cp2.root)
        verify_consistency(300, 377, log.consistency_proof(300, 377), cp1.root, cp2.root)
        prev = bytes(32)
        for stored in log.get_entries(0, 377):
            e = Entry.parse(stored.data)
            assert e.chain == prev
            prev = stored.leaf_hash
        for i in (0, 1, 150, 299, 376):
            verify_inclusion(
                i,
                377,
                rs[i].leaf_hash if i < 300 else log.get_entries(i, i + 1)[0].leaf_hash,
                log.inclusion_proof(i, 377),
                cp2.root,
            )
        about = log.entries_by_subject(CODES[2], below=377)
        assert [s.index for s in about] == list(range(2, 300, 5))
        with pytest.raises(IndexOutOfRange):
            log.inclusion_proof(377, 377)
        with pytest.raises(IndexOutOfRange):
            log.consistency_proof(10, 378)
        # the subject's proofs read together (ListBySubject) are the single ones
        idx = [s.index for s in about]
        assert log.inclusion_proofs(idx, 377) == [log.inclusion_proof(i, 377) for i in idx]
        with pytest.raises(IndexOutOfRange):
            log.inclusion_proofs([0, 377], 377)


def test_restart_resumes_tree_and_chain(db_url: str) -> None:
    with _open(db_url) as log:
        log.append_many([("k", None, {"i": i}) for i in range(45)])
        cp = log.checkpoint()
    with _open(db_url) as log:
        assert log.size == 45 and log.last_checkpoint() == cp
        r = log.append("k", None, {"i": 45})
        assert r.index == 45
        assert (
            Entry.parse(log.get_entries(45, 46)[0].data).chain
            == log.get_entries(44, 45)[0].leaf_hash
        )
        cp2 = log.checkpoint()
        verify_consistency(45, 46, log.consistency_proof(45, 46), cp.root, cp2.root)


def test_concurrent_appends_group_commit(db_url: str) -> None:
    with _open(db_url) as log:
        got: list[int] = []
        lock = threading.Lock()

        def worker(w: int) -> None:
            for i in range(40):
                r = log.append("k", None, {"w": w, "i": i})
                with lock:
                    got.append(r.index)

        threads = [threading.Thread(target=worker, args=(w,)) for w in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(got) == list(range(320))
        cp = log.checkpoint()
        assert cp.size == 320


def test_periodic_checkpoint_interval(tmp_path: object) -> None:
    url = f"sqlite:///{tmp_path}/l.sqlite"
    seen: list[int] = []
    with _open(url, interval=0.05) as log:
        log.on_checkpoint(lambda cp: seen.append(cp.size))
        for i in range(5):
            log.append("k", None, {"i": i})
            time.sleep(0.08)
        deadline = time.time() + 2
        while (not seen or seen[-1] < 5) and time.time() < deadline:
            time.sleep(0.01)
    assert seen and seen[-1] == 5 and seen == sorted(set(seen))


def test_invalid_entries_change_nothing(db_url: str) -> None:
    with _open(db_url) as log:
        with pytest.raises(InvalidEntry):
            log.append("Bad Kind", None, {})
        with pytest.raises(InvalidEntry):
            log.append("k", None, {"x": "y" * 20000})
        with pytest.raises(InvalidEntry):
            log.append_many([("k", None, {}), ("k", None, {"x": float("inf")})])
        assert log.size == 0 and log.store.size() == 0


def test_closed_log_refuses(tmp_path: object) -> None:
    log = _open(f"sqlite:///{tmp_path}/l.sqlite")
    log.close()
    with pytest.raises(LogClosed):
        log.append("k", None, {})


def test_tables_refuse_update_and_delete(db_url: str) -> None:
    with _open(db_url) as log:
        log.append_many([("k", None, {"i": i}) for i in range(3)])
        log.checkpoint()
        engine = log.store.engine
        for stmt in (
            "UPDATE ledger_entries SET kind = 'x'",
            "DELETE FROM ledger_entries",
            "UPDATE ledger_nodes SET hash = hash",
            "DELETE FROM ledger_nodes",
            "DELETE FROM ledger_checkpoints",
            "UPDATE ledger_checkpoints SET note = ''",
        ):
            with pytest.raises(sa.exc.DBAPIError, match="append-only"), engine.begin() as conn:
                conn.execute(sa.text(stmt))
        if engine.dialect.name == "postgresql":
            with pytest.raises(sa.exc.DBAPIError, match="append-only"), engine.begin() as conn:
                conn.execute(sa.text("TRUNCATE ledger_entries CASCADE"))
        assert log.store.size() == 3


def test_reopen_detects_a_rewritten_store(tmp_path: object) -> None:
    """Someone drops the append-only trigger, rewrites a stored subtree hash and puts the
    trigger back: the log refuses to open (the stored tree no longer matches the signed
    checkpoint). A trigger left dropped is refused by name (test_append_only); rewritten
    entries are found by fsck (test_fsck), `audit replay` and inclusion proofs."""
    from fedcredit.ledger.errors import StoreCorrupt

    url = f"sqlite:///{tmp_path}/l.sqlite"
    with _open(url) as log:
        log.append_many([("k", None, {"i": i}) for i in range(10)])
        log.checkpoint()
        engine = log.store.engine
        with engine.begin() as conn:
            conn.execute(sa.text("DROP TRIGGER ledger_nodes_no_update"))
            conn.execute(
                sa.text("UPDATE ledger_nodes SET hash = zeroblob(32) WHERE level = 3 AND idx = 0")
            )
            from fedcredit.ledger.store import SQLITE_TRIGGERS

            conn.exec_driver_sql(SQLITE_TRIGGERS["ledger_nodes_no_update"][1])
    with pytest.raises(StoreCorrupt) as e:
        _open(url)
    assert "signed checkpoint" in e.value.message


def test_fast_entry_time_is_the_entry_time_format() -> None:
    from datetime import UTC, datetime

    from fedcredit.ledger.entry import TIME_RE
    from fedcredit.ledger.log import format_time_fast

    for _ in range(3):
        t = format_time_fast()
        now = datetime.now(UTC)
        assert TIME_RE.fullmatch(t)
        parsed = datetime.strptime(t, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
        assert abs((now - parsed).total_seconds()) < 1


def test_prepare_each_is_prepare_of_each_entry(db_url: str) -> None:
    template = {"node": "dept-tax", "features": ["a", "b"], "consent_jti": "", "n": 3}
    rows = [(CODES[0], "jti-1"), (CODES[1], "jti-2"), (None, "jti-3")]
    with _open(db_url) as log:
        each = log.prepare_each("feature_disclosure", template, "consent_jti", rows)
        assert each == [
            log.prepare("feature_disclosure", s, {**template, "consent_jti": j}) for s, j in rows
        ]
        with pytest.raises(InvalidEntry):
            log.prepare_each("Bad Kind", template, "consent_jti", rows)
        with pytest.raises(uscc.InvalidUSCC):
            log.prepare_each("feature_disclosure", template, "consent_jti", [("nope", "j")])
        receipts = log.submit_many(each).result(10)
        assert [Entry.parse(e.data).payload["consent_jti"] for e in log.get_entries(0, 3)] == [
            "jti-1",
            "jti-2",
            "jti-3",
        ]
        assert [r.index for r in receipts] == [0, 1, 2]

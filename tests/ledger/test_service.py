"""LedgerService over real gRPC with mTLS: append rights, reads, proofs, witnesses, audit helpers."""

from __future__ import annotations

import asyncio
import io
import random
import time
from typing import Any

import pytest

from fedcredit.common import uscc
from fedcredit.common.errors import BatchTooLarge, RoleNotAllowed
from fedcredit.common.evidence import AsyncEvidenceSink, EvidenceSink
from fedcredit.common.uscc import InvalidUSCC
from fedcredit.ledger.audit import (
    Trust,
    replay,
    verify_bundle,
    verify_checkpoints,
    verify_subject_entries,
)
from fedcredit.ledger.client import AsyncLedgerClient
from fedcredit.ledger.entry import Entry
from fedcredit.ledger.errors import (
    IndexOutOfRange,
    InvalidEntry,
    KindNotAllowed,
    ReadNotAllowed,
    SubjectNotAllowed,
)
from fedcredit.ledger.export import Bundle, parse_export
from tests.ledger.conftest import LedgerEnv

CODE = uscc.generate(random.Random(11))
OTHER = uscc.generate(random.Random(12))


def _trust(env: LedgerEnv, quorum: int = 0) -> Trust:
    return Trust(env.signer.verifier, [n.witness.verifier for n in env.witnesses], quorum)


def test_append_rights_follow_roles(ledger_env: LedgerEnv) -> None:
    with ledger_env.client("coordinator") as coord:
        assert isinstance(coord, EvidenceSink)
        r = coord.append("score_access", CODE, {"bank": "bank-icbc-weihai", "request": "ab" * 32})
        assert r.index == 0
    with ledger_env.client("consent-service") as c:
        assert c.append("consent_event", CODE, {"event": "granted"}).index == 1
        with pytest.raises(KindNotAllowed) as e:
            c.append("score_access", CODE, {})
        assert "only coordinator may" in e.value.message
    with ledger_env.client("dept-tax") as c:
        assert c.append("node_checkpoint", None, {"size": 3}).index == 2
    with ledger_env.client("bank-icbc-weihai") as c, pytest.raises(KindNotAllowed):
        c.append("score_access", CODE, {})
    with ledger_env.client("coordinator") as c, pytest.raises(KindNotAllowed):
        c.append("unknown_kind", None, {})
    # the actor is the certificate's organisation
    data = ledger_env.log.get_entries(0, 3)
    assert [Entry.parse(d.data).actor for d in data] == [
        "coordinator",
        "consent-service",
        "dept-tax",
    ]


def test_bad_input_is_refused_and_changes_nothing(ledger_env: LedgerEnv) -> None:
    with ledger_env.client("coordinator") as c:
        with pytest.raises(InvalidUSCC):
            c.append("score_access", "91370000XXXXXXXXXX", {})
        with pytest.raises(BatchTooLarge):
            c.append_many([("score_access", None, {})] * 501)
        with pytest.raises(InvalidEntry) as e:
            c.append_many([("score_access", None, {}), ("score_access", None, {"x": "y" * 20000})])
        assert e.value.metadata["position"] == "1"
    assert ledger_env.log.size == 0


def test_checkpoints_proofs_and_bundle(ledger_env: LedgerEnv) -> None:
    with ledger_env.client("coordinator") as c:
        rs = c.append_many(
            [("score_access", CODE if i % 3 == 0 else None, {"i": i}) for i in range(50)]
        )
        assert [r.index for r in rs] == list(range(50))
    with ledger_env.client("bank-icbc-weihai") as bank, pytest.raises(RoleNotAllowed):
        bank.sign_checkpoint()
    with ledger_env.client("operator") as op:
        first = op.sign_checkpoint()
    with ledger_env.client("coordinator") as c:
        c.append_many([("score_access", None, {"i": i}) for i in range(50, 70)])
    with ledger_env.client("operator") as op:
        second = op.sign_checkpoint()
    trust = _trust(ledger_env)
    with ledger_env.client("auditor-pboc-weihai") as aud:
        proof = aud.consistency_proof(50, 70)
        old, new = verify_checkpoints(first, second, proof, trust)
        assert (old.size, new.size) == (50, 70)
        b = aud.bundle(33)
        entry, sc = verify_bundle(Bundle.parse(b.to_json()), trust)
        assert entry.index == 33 and sc.size == 70
        with pytest.raises(IndexOutOfRange):
            aud.inclusion_proof(70, 70)
    with ledger_env.client("bank-icbc-weihai") as bank:
        # anyone may get the proof; only entitled callers get the entry itself
        p = bank.inclusion_proof(3)
        assert p.entry == b"" and len(p.hashes) > 0


def test_list_by_subject_permissions_and_proofs(ledger_env: LedgerEnv) -> None:
    ent = ledger_env.pki.issue(CODE, "enterprise")
    assert ent is not None
    with ledger_env.client("coordinator") as c:
        c.append_many([("score_access", [CODE, OTHER, None][i % 3], {"i": i}) for i in range(30)])
    ledger_env.log.checkpoint()
    with ledger_env.client(CODE) as me:
        pages = list(me.list_by_subject(CODE))
        proven = [
            (p.entry.index, bytes(p.entry.data), [bytes(h) for h in p.inclusion_proof])
            for pg in pages
            for p in pg.entries
        ]
        _sc, entries = verify_subject_entries(
            CODE, pages[0].checkpoint, pages[0].tree_size, proven, _trust(ledger_env)
        )
        assert [e.index for e in entries] == list(range(0, 30, 3))
        with pytest.raises(SubjectNotAllowed):
            list(me.list_by_subject(OTHER))
        # and it may read its own entry with its proof
        assert me.inclusion_proof(3).entry != b""
    with ledger_env.client("bank-icbc-weihai") as bank, pytest.raises(ReadNotAllowed):
        list(bank.list_by_subject(CODE))
    with ledger_env.client("auditor-pboc-weihai") as aud:
        assert sum(len(p.entries) for p in aud.list_by_subject(OTHER)) == 10


def test_export_and_replay(ledger_env: LedgerEnv, tmp_path: Any) -> None:
    with ledger_env.client("coordinator") as c:
        for k in range(3):
            c.append_many([("score_access", None, {"k": k, "i": i}) for i in range(40)])
            ledger_env.log.checkpoint()
    with ledger_env.client("auditor-pboc-weihai") as aud:
        n = aud.export(tmp_path / "export.json")
        assert n == 120
    with ledger_env.client("bank-icbc-weihai") as bank, pytest.raises(ReadNotAllowed):
        bank.export(tmp_path / "nope.json")
    ex = parse_export((tmp_path / "export.json").read_bytes())
    report = replay(ex, _trust(ledger_env))
    assert report.entries == 120 and report.checkpoints >= 3
    # the library's own export agrees
    buf = io.StringIO()
    ledger_env.log.export(buf)
    assert replay(parse_export(buf.getvalue()), _trust(ledger_env)).root == report.root


def test_witnesses_cosign_and_quorum(ledger_env: LedgerEnv) -> None:
    with ledger_env.client("coordinator") as c:
        c.append_many([("score_access", None, {"i": i}) for i in range(10)])
    cp = ledger_env.log.checkpoint()
    deadline = time.time() + 10
    with ledger_env.client("auditor-pboc-weihai") as aud:
        while time.time() < deadline:
            note = aud.checkpoint(min_cosignatures=0)
            sc = _trust(ledger_env).open(note)
            if sc.size == cp.size and len(sc.cosigned_by) == 2:
                break
            time.sleep(0.05)
        sc = _trust(ledger_env, quorum=2).open(aud.checkpoint(min_cosignatures=2))
        assert sc.size == cp.size and set(sc.cosigned_by) == {"dept-tax", "dept-courts"}
        # a second checkpoint is cosigned from the witness's last size (consistency proof)
        with ledger_env.client("coordinator") as c:
            c.append("score_access", None, {"i": 10})
        cp2 = ledger_env.log.checkpoint()
        while time.time() < deadline:
            sc2 = _trust(ledger_env).open(aud.checkpoint())
            if sc2.size == cp2.size and len(sc2.cosigned_by) == 2:
                break
            time.sleep(0.05)
        assert len(sc2.cosigned_by) == 2
    for n in ledger_env.witnesses:
        assert n.witness.store.get(ledger_env.log.origin).size == cp2.size


def test_async_client_is_an_async_evidence_sink(ledger_env: LedgerEnv) -> None:
    async def run() -> list[int]:
        async with AsyncLedgerClient(
            ledger_env.address, ledger_env.pki.tls("coordinator"), server_org="ledger"
        ) as c:
            assert isinstance(c, AsyncEvidenceSink)
            rs = await asyncio.gather(
                *(c.append("score_access", CODE, {"i": i}) for i in range(20))
            )
            return sorted(r.index for r in rs)

    assert asyncio.run(run()) == list(range(20))

"""Batched issuance and batched event delivery, on both engines."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jwt
import pytest
from sqlalchemy import Connection

from fedcredit.common.canonical import canonical_json
from fedcredit.common.evidence import Receipt
from fedcredit.consent import errors as E
from fedcredit.consent.authority import local_verifier
from fedcredit.consent.store import ConsentStore, entry_json, verify_evidence_chain
from tests.consent.conftest import BANK, World, enterprise_code, enterprise_identity


def _args(w: World, ent: str | None = None) -> dict[str, Any]:
    return {
        "bank_org": BANK,
        "bank_cert_sha256": w.bank.cert_sha256,
        "enterprise": ent or w.ent,
        "purposes": ["credit_assessment"],
    }


def test_a_batch_grant_gives_each_consent_its_own_token_slot_and_event(world: World) -> None:
    a = world.authority
    views = a.grant_many(world.enterprise, [world.terms(max_uses=i % 3 + 1) for i in range(25)])
    assert len({v.consent_id for v in views}) == 25
    assert len({v.status_idx for v in views}) == 25
    v = local_verifier(a)
    for i, view in enumerate(views):
        tok = a.token(world.bank, view.consent_id).token or ""
        claims = jwt.decode(tok, options={"verify_signature": False})
        assert claims["status"]["status_list"]["idx"] == view.status_idx
        assert claims["jti"] == view.jti
        assert claims["authorization_details"][0]["max_uses"] == i % 3 + 1
        assert v.verify(tok, **_args(world)).consent_id == view.consent_id
    # Revoking one in the middle refuses that one only: the slots are really distinct.
    a.revoke(world.enterprise, views[12].consent_id)
    toks = [a.token(world.bank, x.consent_id).token or "" for x in views[11:14:2]]
    for tok in toks:
        v.verify(tok, **_args(world))
    with a.store.begin() as conn:
        revoked = a.store.get(conn, views[12].consent_id)
    assert revoked is not None and revoked.token
    with pytest.raises(E.ConsentRevoked):
        v.verify(revoked.token, **_args(world))
    evs = a.store.events()
    assert [e.event for e in evs] == ["granted"] * 25 + ["revoked"]
    assert [e.consent_id for e in evs[:25]] == [x.consent_id for x in views]
    assert all(e.ledger_index is not None for e in evs)
    chain = a.store.evidence()
    assert len(chain) == 26 and verify_evidence_chain(chain) is None


def test_a_batch_is_all_or_nothing(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    a = world.authority
    a.grant(world.enterprise, world.terms())
    with a.store.begin() as conn:
        before = a.store.count(conn)
    n_events = len(a.store.events())
    bad = [world.terms(), world.terms(validity_days=400), world.terms()]  # over the 30-day cap
    with pytest.raises(E.ValidityCapExceeded):
        a.grant_many(world.enterprise, bad)

    # A failure inside the transaction (after the rows and tokens are written) rolls all back.
    def broken(*_: object, **__: object) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(a.store, "add_events", broken)
    with pytest.raises(RuntimeError):
        a.grant_many(world.enterprise, [world.terms()] * 3)
    monkeypatch.undo()
    with a.store.begin() as conn:
        assert a.store.count(conn) == before
    assert len(a.store.events()) == n_events


class BatchSink:
    """A sink with ``append_many`` that can be switched off."""

    def __init__(self) -> None:
        self.up = True
        self.calls: list[int] = []
        self.got: list[tuple[str, str]] = []

    def append(self, kind: str, subject: str | None, payload: Mapping[str, Any]) -> Receipt:
        raise AssertionError("a batching sink is called with append_many")

    def append_many(
        self, items: Sequence[tuple[str, str | None, Mapping[str, Any]]]
    ) -> list[Receipt]:
        if not self.up:
            raise ConnectionError("ledger down")
        self.calls.append(len(items))
        out = []
        for _kind, _subject, payload in items:
            self.got.append((payload["event"], payload["consent_id"]))
            out.append(Receipt(index=len(self.got) - 1, leaf_hash=b"\x01" * 32))
        return out


def test_events_reach_a_batching_sink_in_one_call_per_round(world: World) -> None:
    a = world.authority
    sink = BatchSink()
    a.sink = sink
    sink.up = False  # the grants commit; their events wait in the outbox
    views = a.grant_many(world.enterprise, [world.terms()] * 30)
    a.revoke(world.enterprise, views[0].consent_id)
    assert len(a.store.pending_events()) == 31 and sink.calls == []
    sink.up = True
    assert a.deliver_events() == 31
    assert sink.calls == [31]
    assert sink.got == [("granted", v.consent_id) for v in views] + [
        ("revoked", views[0].consent_id)
    ]
    assert [e.ledger_index for e in a.store.events()] == list(range(31))
    assert a.deliver_events() == 0


def test_concurrent_grants_share_commits_and_lose_no_event(world: World) -> None:
    a = world.authority
    a.start()  # group commit + background delivery, as the service runs
    codes = [enterprise_code(40 + i) for i in range(6)]
    errors: list[BaseException] = []

    def worker(code: str) -> None:
        try:
            me = enterprise_identity(code)
            for _ in range(10):
                a.grant(me, world.terms(enterprise=code))
            a.grant_many(me, [world.terms(enterprise=code)] * 5)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(c,)) for c in codes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    a.close()  # stops the worker after delivering what is left
    evs = a.store.events()
    assert len(evs) == 6 * 15 and all(e.ledger_index is not None for e in evs)
    chain = a.store.evidence()
    assert len(chain) == 90 and verify_evidence_chain(chain) is None
    assert sorted(e.ledger_index for e in evs if e.ledger_index is not None) == list(range(90))
    with a.store.begin() as conn:
        rows = a.store.list_consents(conn, limit=1000)
    assert len(rows) == 90 and len({r.id for r in rows}) == 90
    assert all(r.token and r.jti for r in rows)


def test_the_signer_writes_what_pyjwt_writes(world: World) -> None:
    signer = world.authority.signer()
    claims = {
        "iss": "https://consent-service.fedcredit.invalid",
        "sub": world.ent,
        "aud": BANK,
        "iat": 1,
        "exp": 2,
        "jti": "j",
        "authorization_details": [{"type": "t", "scope": ["judicial"], "note": "é\n\u2028"}],
    }
    for typ in ("consent+jwt", "statuslist+jwt"):
        expected = jwt.encode(
            claims,
            signer.record.private_key,
            algorithm="EdDSA",
            headers={"kid": signer.kid, "typ": typ},
        )
        assert signer.sign(claims, typ=typ) == expected  # Ed25519 signatures are deterministic


@pytest.mark.parametrize(
    "value",
    [
        {"b": 1, "a": [True, False, None], "c": {"z": "", "y": -(2**53) + 1}},
        {"s": 'quote" back\\ ctl\x00\x01\x1f\x7f tab\t nl\n cr\r bs\b ff\f'},
        {"u": "é 汉字 \u2028\u2029 😀 \ufeff", "emoji_key": {"😀": 1, "a": 2}},
        {"big": 2**53, "neg": -(2**60)},
        {"f": 1.5, "g": 1e21, "h": -0.0},
        {"nested": [[{"b": [], "a": {}}]], "": "empty key"},
    ],
    ids=["plain", "escapes", "unicode", "big-ints", "floats", "nested"],
)
def test_entry_json_is_jcs(value: object) -> None:
    try:
        expected = canonical_json(value)
    except ValueError as exc:  # e.g. integers outside the IEEE double range: refused alike
        with pytest.raises(type(exc)):
            entry_json(value)
        return
    assert entry_json(value) == expected


def test_merged_calls_share_one_statement_and_a_failing_item_fails_alone(tmp_path: Path) -> None:
    store = ConsentStore(f"sqlite:///{tmp_path}/gc.sqlite")
    store.create_schema()
    store.start_group_commit()
    seen: list[list[str]] = []

    def fn(conn: Connection, items: list[str]) -> list[str]:
        seen.append(list(items))
        if "bad" in items:
            raise ValueError("bad item")
        return [i.upper() for i in items]

    results: dict[str, object] = {}

    def call(item: str) -> None:
        try:
            results[item] = store.write_merged("k", fn, item)
        except ValueError as exc:
            results[item] = exc

    lock = store._sqlite_lock
    assert lock is not None
    with lock:  # hold the writer in its first transaction while the others queue up
        first = threading.Thread(target=call, args=("first",))
        first.start()
        gc = store._group
        assert gc is not None
        deadline = time.monotonic() + 5
        while not gc._queue.empty() or not first.is_alive():  # until the writer holds it
            assert time.monotonic() < deadline
            time.sleep(0.001)
        # The writer took "first" and waits for the database; queue the rest behind it.
        others = [threading.Thread(target=call, args=(x,)) for x in ("a", "bad", "b")]
        for t in others:
            t.start()
        time.sleep(0.2)
    for t in [first, *others]:
        t.join()
    assert results["first"] == "FIRST" and results["a"] == "A" and results["b"] == "B"
    assert isinstance(results["bad"], ValueError)
    merged = [s for s in seen if len(s) > 1]
    assert merged and {"a", "bad", "b"} <= set(merged[0])  # one call for all three ...
    assert ["a"] in seen and ["b"] in seen and ["bad"] in seen  # ... then each alone
    store.close()

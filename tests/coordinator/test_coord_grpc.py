"""The coordinator over real gRPC with mTLS: model registry, consent refusals, ledger first."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fedcredit.common.errors import FedcreditError, RoleNotAllowed
from fedcredit.coordinator.client import CoordinatorClient
from fedcredit.coordinator.errors import LedgerUnavailable, ModelVersionNotFound, NoActiveModel
from fedcredit.coordinator.model import model_sha256

from .conftest import BANK, OTHER_BANK, City, ConsentEnv, Coord, start_coordinator, stop_coordinator


@pytest.fixture(scope="module")
def coord(
    pki: Any, consent_env: ConsentEnv, city: City, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Coord]:
    c = start_coordinator(
        pki=pki, consent_env=consent_env, city=city, tmp=tmp_path_factory.mktemp("coord")
    )
    yield c
    stop_coordinator(c)


def client(pki: Any, coord: Coord, org: str = BANK) -> CoordinatorClient:
    return CoordinatorClient(coord.target, pki.tls(org), timeout=20)


def test_registry_lists_active_model_with_hash_in_ledger(
    pki: Any, coord: Coord, city: City
) -> None:
    with client(pki, coord, "operator") as c:
        models = c.list_models()
        assert [m.version for m in models] == ["test-v1"]
        m = c.get_model()
        assert m.active and m.sha256 == model_sha256(city.model_text)
        assert list(m.features) == city.features
        assert m.thresholds.a < m.thresholds.b < m.thresholds.c
        # ~1/12 A and D on the calibration population (tree models give tied PDs: a few more)
        n = len(city.codes)
        assert n / 12 <= m.grade_counts["A"] <= n / 12 + 10
        assert n / 12 - 10 <= m.grade_counts["D"] <= n / 12
        assert sum(m.grade_counts.values()) == n
        full = c.get_model("test-v1", include_model_text=True)
        assert model_sha256(full.model_text) == m.sha256
        with pytest.raises(ModelVersionNotFound):
            c.get_model("nope")
    pub = coord.ledger.entries("model_published")
    act = coord.ledger.entries("model_activated")
    assert len(pub) == 1 and len(act) == 1
    assert pub[0].payload["sha256"] == m.sha256 and act[0].payload["sha256"] == m.sha256
    assert m.publish_ledger_index == pub[0].index and m.activate_ledger_index == act[0].index


def test_publish_and_activate_roles_and_ledger(pki: Any, coord: Coord, city: City) -> None:
    text = city.model_text.replace("[learning_rate: 0.1]", "[learning_rate: 0.1] ")
    with client(pki, coord, BANK) as bank:
        with pytest.raises(RoleNotAllowed):
            bank.publish(text, calibration_pds=list(city.pds))
        with pytest.raises(RoleNotAllowed):
            bank.activate("test-v1")
        with pytest.raises(RoleNotAllowed):
            bank.get_model(include_model_text=True)
    before = len(coord.ledger.entries())
    with client(pki, coord, "operator") as op:
        with pytest.raises(FedcreditError) as bad:
            op.publish("not a model", calibration_pds=list(city.pds))
        assert bad.value.reason == "INVALID_MODEL"
        with pytest.raises(FedcreditError) as small:
            op.publish(text, calibration_pds=[0.1] * 5)
        assert small.value.reason == "CALIBRATION_TOO_SMALL"
        assert len(coord.ledger.entries()) == before  # refused publications leave no entry
        v2 = op.publish(
            text, calibration_pds=list(city.pds), version="test-v2", metrics_json='{"auc": 0.8}'
        )
        assert not v2.active and v2.sha256 == model_sha256(text)
        with pytest.raises(FedcreditError) as dup:
            op.publish(text, calibration_pds=list(city.pds), version="test-v2")
        assert dup.value.reason == "MODEL_VERSION_EXISTS"
        act = op.activate("test-v2")
        assert act.active and op.get_model().version == "test-v2"
        op.activate("test-v1")
        assert op.get_model().version == "test-v1"
    kinds = [e.kind for e in coord.ledger.entries()[before:]]
    assert kinds == ["model_published", "model_activated", "model_activated"]


def _score_entries(coord: Coord) -> int:
    return len(coord.ledger.entries("score_access"))


def test_score_valid_consent_answers_after_ledger(
    pki: Any, coord: Coord, consent_env: ConsentEnv, city: City
) -> None:
    ent = city.codes[0]
    _, token = consent_env.grant(ent)
    before = _score_entries(coord)
    with client(pki, coord) as c:
        r = c.score(ent, token)
    assert r.rating in "ABCD" and 0 < r.probability_of_default < 1 and r.model_version == "test-v1"
    entries = coord.ledger.entries("score_access")
    assert len(entries) == before + 1
    e = entries[-1]
    assert e.index == r.ledger_index and e.subject == ent
    assert e.payload["bank"] == BANK and e.payload["jti"] == r.consent_jti
    assert e.payload["feature_hash"] == r.feature_hash and e.payload["rating"] == r.rating
    # no feature values in the ledger
    assert set(e.payload) == {
        "bank",
        "enterprise",
        "jti",
        "purpose",
        "model_version",
        "rating",
        "feature_hash",
        "missing_categories",
    }


@pytest.mark.parametrize(
    "case", ["revoked", "paused", "expired", "wrong_bank", "wrong_purpose", "other_enterprise"]
)
def test_score_refused(
    pki: Any, coord: Coord, consent_env: ConsentEnv, city: City, case: str
) -> None:
    ent, other = city.codes[1], city.codes[2]
    purpose = "guarantee" if case == "wrong_purpose" else "credit_assessment"
    if case == "expired":
        consent_env.clock.offset = -3 * 86400
        try:
            cid, token = consent_env.grant(ent, validity_days=1)
        finally:
            consent_env.clock.offset = 0
    else:
        cid, token = consent_env.grant(ent, purpose=purpose)
    if case == "revoked":
        consent_env.authority.revoke(consent_env.enterprise(ent), cid)
    if case == "paused":
        consent_env.authority.pause(consent_env.enterprise(ent), cid)
    expected = {
        "revoked": "CONSENT_REVOKED",
        "paused": "CONSENT_SUSPENDED",
        "expired": "CONSENT_EXPIRED",
        "wrong_bank": "CONSENT_HOLDER_MISMATCH",
        "wrong_purpose": "CONSENT_PURPOSE_NOT_COVERED",
        "other_enterprise": "CONSENT_ENTERPRISE_MISMATCH",
    }[case]
    before = _score_entries(coord)
    import time

    deadline = time.time() + 3  # revocation reaches the verifier within a second (pushed)
    with client(pki, coord, OTHER_BANK if case == "wrong_bank" else BANK) as c:
        while True:
            try:
                c.score(other if case == "other_enterprise" else ent, token)
            except FedcreditError as exc:
                assert exc.reason == expected, exc
                break
            assert case in ("revoked", "paused") and time.time() < deadline, f"{case} was scored"
            time.sleep(0.05)
    # the refused request wrote no score entry (answers given before the refusal did)
    if case not in ("revoked", "paused"):
        assert _score_entries(coord) == before


def test_ledger_down_no_answer(
    pki: Any, consent_env: ConsentEnv, city: City, tmp_path: Path
) -> None:
    c = start_coordinator(pki=pki, consent_env=consent_env, city=city, tmp=tmp_path)
    try:
        ent = city.codes[3]
        _, token = consent_env.grant(ent)
        _, gtoken = consent_env.grant(ent, purpose="guarantee")
        _, btoken = consent_env.grant(city.codes[6])
        c.ledger.stop_service()
        with client(pki, c) as cl:
            with pytest.raises(LedgerUnavailable) as exc:
                cl.score(ent, token)
            assert exc.value.code.name == "UNAVAILABLE"
            assert "ledger" in exc.value.message
            # a guarantee decision is not answered either, and its reservation is undone
            with pytest.raises(LedgerUnavailable):
                cl.apply(
                    application_id="ld-1", enterprise=ent, token=gtoken, amount_yuan=100_000, term_months=12,
                    collateral_yuan=100_000,
                )  # fmt: skip
            st = cl.fund_status()
            assert st.exposure_yuan == 0 and st.approved == 0 and st.refused == 0
            assert cl.list_guarantees() == []
            # in a batch, each enterprise gets the refusal as its item error, never a result
            out = list(cl.score_batch([(city.codes[6], btoken, "b1")]))
            assert [o.error.reason for o in out] == ["LEDGER_UNAVAILABLE"]
            assert not out[0].HasField("result")
    finally:
        stop_coordinator(c)


def test_no_active_model(pki: Any, consent_env: ConsentEnv, city: City, tmp_path: Path) -> None:
    c = start_coordinator(pki=pki, consent_env=consent_env, city=city, tmp=tmp_path, activate=False)
    try:
        _, token = consent_env.grant(city.codes[4])
        with client(pki, c) as cl, pytest.raises(NoActiveModel):
            cl.score(city.codes[4], token)
        assert c.ledger.entries("score_access") == []
    finally:
        stop_coordinator(c)


def test_only_banks_score(pki: Any, coord: Coord, consent_env: ConsentEnv, city: City) -> None:
    _, token = consent_env.grant(city.codes[5])
    with client(pki, coord, "auditor-pboc-weihai") as c, pytest.raises(RoleNotAllowed):
        c.score(city.codes[5], token)


def test_crash_between_ledger_and_store_is_settled_from_the_ledger(
    pki: Any, consent_env: ConsentEnv, city: City, tmp_path: Path
) -> None:
    """A decision in the ledger but still PENDING in the store becomes final; one not in the ledger is undone."""
    from fedcredit.coordinator.fund import ledger_decision_finder, recover_pending
    from fedcredit.coordinator.policy import FundPolicy, decide
    from fedcredit.ledger.client import LedgerClient

    c = start_coordinator(pki=pki, consent_env=consent_env, city=city, tmp=tmp_path)
    try:
        policy = FundPolicy()
        recs = {}
        for app, code in (("crash-logged", city.codes[7]), ("crash-unlogged", city.codes[8])):
            recs[app], _ = c.store.reserve(
                application_id=app, bank=BANK, enterprise=code, amount=1_000_000, term_months=12,
                collateral_offered=0, pd=0.01, model_version="test-v1", details={},
                decide=lambda books: decide(policy, grade="A", amount=1_000_000, term_months=12,
                                            collateral_offered=0, state=books.state(policy)),
            )  # fmt: skip
        assert c.store.books().exposure == 1_600_000
        with LedgerClient(c.ledger.address, pki.tls("coordinator"), server_org="ledger") as lc:
            logged = lc.append(
                "guarantee_decision",
                city.codes[7],
                {"application_id": "crash-logged", "bank": BANK, "approved": True},
            ).index
            # the same id decided for another bank is not this bank's decision (ids are per bank)
            lc.append("guarantee_decision", city.codes[8], {"application_id": "crash-unlogged", "bank": "bank-other", "approved": True})  # fmt: skip
            finalized, abandoned = recover_pending(c.store, ledger_decision_finder(lc))
        assert (finalized, abandoned) == (["crash-logged"], ["crash-unlogged"])
        g = c.store.get_guarantee(BANK, "crash-logged")
        assert g is not None and g.status == "ACTIVE" and g.ledger_index == logged
        assert c.store.get_guarantee(BANK, "crash-unlogged") is None
        assert c.store.books().exposure == 800_000
    finally:
        stop_coordinator(c)

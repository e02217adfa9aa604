"""Uses counted at the node, federation-wide (issue 14, findings 1 and 5): every fetch is
reserved at the consent service under the bank's use id before anything is disclosed,
checked against the STORED max_uses and matched by jti AND sub AND aud."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from fedcredit.common.tls import Identity
from fedcredit.consent.statuslist import b64url_decode
from fedcredit.consent.verify import UseRef
from tests.consent.test_attack_matrix import jws

from .conftest import BANK, Consents, NodeFactory, world_codes

TRAINING = {"purpose": "model_training"}


def _row(consents: Consents, token: str) -> Any:
    view = consents.authority.get(
        consents.bank(BANK), consents.granted.get(token) or _consent_id(token)
    )
    return view


def _consent_id(token: str) -> str:
    claims = json.loads(b64url_decode(token.split(".")[1]))
    return str(claims["authorization_details"][0]["consent_id"])


def _resign(consents: Consents, token: str, **changes: Any) -> str:
    """``token`` re-signed with the authority's own key (a leaked key) after ``changes``."""
    h, p, _ = token.split(".")
    header, claims = json.loads(b64url_decode(h)), json.loads(b64url_decode(p))
    for k, v in changes.items():
        if k == "max_uses":
            claims["authorization_details"][0]["max_uses"] = v
        else:
            claims[k] = v
    return jws(header, claims, consents.authority.signer().record.private_key)


def test_a_one_use_training_consent_yields_one_use_ids_worth_of_answers(
    make_node: NodeFactory, consents: Consents, small_world: Path
) -> None:
    """Finding 1: ten fetches under ten use ids from the bank itself: one answer, nine
    CONSENT_USES_EXHAUSTED, one disclosure logged, the consent service counts one use."""
    node = make_node("tax")
    code = world_codes(small_world)[0]
    token = consents.token(code, purpose="model_training", max_uses=1)
    before = node.entries()
    reasons = []
    with node.client(BANK) as c:
        for k in range(10):
            (r,) = c.get_features([(code, token)], request_id=f"round-{k}", **TRAINING)
            reasons.append(r.error.reason if r.error else "ok")
    assert reasons == ["ok"] + ["CONSENT_USES_EXHAUSTED"] * 9
    assert node.entries() == before + 1
    assert _row(consents, token).uses == 1
    # The same use id again is the same use: answered, and still one use counted.
    with node.client(BANK) as c:
        (r,) = c.get_features([(code, token)], request_id="round-0", **TRAINING)
    assert r.error is None and _row(consents, token).uses == 1


def test_one_use_id_counts_once_across_nodes(
    make_node: NodeFactory, consents: Consents, small_world: Path
) -> None:
    """One training round asks several nodes under one use id: one use, whatever node."""
    code = world_codes(small_world)[1]
    token = consents.token(
        code, purpose="model_training", scope=["operations_tax", "judicial"], max_uses=1
    )
    for dept in ("tax", "courts"):
        node = make_node(dept)
        with node.client(BANK) as c:
            (r,) = c.get_features([(code, token)], request_id="round-A", **TRAINING)
        assert r.error is None, (dept, r.error)
    assert _row(consents, token).uses == 1
    with node.client(BANK) as c:
        (r,) = c.get_features([(code, token)], request_id="round-B", **TRAINING)
    assert r.error is not None and r.error.reason == "CONSENT_USES_EXHAUSTED"


def test_a_resigned_token_with_more_uses_gains_nothing(
    make_node: NodeFactory, consents: Consents, small_world: Path
) -> None:
    """Finding 1: a token re-signed (leaked key) with max_uses raised to 50 is held to the
    stored max_uses of 1, and the refusal quotes the stored value."""
    node = make_node("tax")
    code = world_codes(small_world)[2]
    token = consents.token(code, purpose="model_training", max_uses=1)
    forged = _resign(consents, token, max_uses=50)
    assert forged != token
    with node.client(BANK) as c:
        (first,) = c.get_features([(code, forged)], request_id="f-0", **TRAINING)
        (second,) = c.get_features([(code, forged)], request_id="f-1", **TRAINING)
    assert first.error is None
    assert second.error is not None and second.error.reason == "CONSENT_USES_EXHAUSTED"
    assert second.error.metadata["max_uses"] == "1"
    assert "allows 1 uses" in second.error.message


def test_counting_is_bound_to_jti_sub_and_aud(consents: Consents, small_world: Path) -> None:
    """Finding 2's use-count half: a token naming another enterprise (or bank) with a real
    consent's jti matches no row: CONSENT_NOT_FOUND, and the real consent is not counted."""
    code, other = world_codes(small_world)[3:5]
    token = consents.token(code, max_uses=2)
    jti = json.loads(b64url_decode(token.split(".")[1]))["jti"]
    counter = _authority_counter(consents)
    bad = counter.reserve(
        "u-1", [UseRef(jti, other, BANK), UseRef(jti, code, "bank-somewhere-else")]
    )
    assert [getattr(r, "reason", None) for r in bad] == ["CONSENT_NOT_FOUND"] * 2
    assert _row(consents, token).uses == 0
    (good,) = counter.reserve("u-1", [UseRef(jti, code, BANK)])
    assert not isinstance(good, Exception) and good.opened and good.uses == 1


def test_a_failed_disclosure_gives_the_use_back(
    make_node: NodeFactory, consents: Consents, small_world: Path
) -> None:
    """Finding 5 at a node: the disclosure log fails, nothing is answered, the use is
    released (the count is unchanged) and the next fetch gets it."""
    node = make_node("tax")
    code = world_codes(small_world)[5]
    token = consents.token(code, purpose="model_training", max_uses=1)
    real = node.log.submit_many

    def broken(*a: Any, **kw: Any) -> Any:
        raise OSError("disk gone")

    node.log.submit_many = broken  # type: ignore[method-assign]
    try:
        with node.client(BANK) as c:
            try:
                c.get_features([(code, token)], request_id="r-1", **TRAINING)
                raise AssertionError("the answer must be refused")
            except Exception as exc:
                assert getattr(exc, "reason", "") == "DISCLOSURE_LOG_UNAVAILABLE"
    finally:
        node.log.submit_many = real  # type: ignore[method-assign]
    assert _row(consents, token).uses == 0
    with node.client(BANK) as c:
        (r,) = c.get_features([(code, token)], request_id="r-2", **TRAINING)
    assert r.error is None and _row(consents, token).uses == 1


def test_a_store_failure_while_the_use_is_reserved_gives_it_back(
    make_node: NodeFactory, consents: Consents, small_world: Path
) -> None:
    """The vectors are computed while the consent service reserves the use; when the store
    fails meanwhile, the call is refused, nothing is logged, and the use the node opened is
    released before the refusal is answered (the next fetch gets it)."""
    node = make_node("tax")
    code = world_codes(small_world)[7]
    token = consents.token(code, purpose="model_training", max_uses=1)
    real = node.engine.vectors

    def broken(*a: Any, **kw: Any) -> Any:
        from fedcredit.common.errors import StoreUnavailable

        raise StoreUnavailable("the store went away")

    node.engine.vectors = broken  # type: ignore[method-assign]
    before = node.entries()
    try:
        with node.client(BANK) as c:
            try:
                c.get_features([(code, token)], request_id="s-1", **TRAINING)
                raise AssertionError("the answer must be refused")
            except Exception as exc:
                assert getattr(exc, "reason", "") == "STORE_UNAVAILABLE", exc
    finally:
        node.engine.vectors = real  # type: ignore[method-assign]
    assert node.entries() == before and _row(consents, token).uses == 0
    with node.client(BANK) as c:
        (r,) = c.get_features([(code, token)], request_id="s-2", **TRAINING)
    assert r.error is None and _row(consents, token).uses == 1


def test_the_node_fails_closed_when_uses_cannot_be_reserved(
    make_node: NodeFactory, consents: Consents, small_world: Path
) -> None:
    """No answer from the consent service: every item refused, nothing disclosed."""
    node = make_node("tax")
    code = world_codes(small_world)[6]
    token = consents.token(code, purpose="model_training", max_uses=3)
    counter = node.servicer.verifier.counter
    assert counter is not None

    def down(*a: Any, **kw: Any) -> Any:
        raise ConnectionError("consent service unreachable")

    real = counter.reserve
    counter.reserve = down  # type: ignore[method-assign]
    before = node.entries()
    try:
        with node.client(BANK) as c:
            (r,) = c.get_features([(code, token)], request_id="r-1", **TRAINING)
    finally:
        counter.reserve = real  # type: ignore[method-assign]
    assert r.error is not None and r.error.reason == "CONSENT_USES_UNAVAILABLE"
    assert node.entries() == before and _row(consents, token).uses == 0


def _authority_counter(consents: Consents) -> Any:
    from fedcredit.consent.authority import AuthorityUseCounter

    return AuthorityUseCounter(consents.authority, Identity("dept-tax", "department", b"\0" * 32))


def test_a_use_another_node_disclosed_under_is_not_given_back(
    make_node: NodeFactory, consents: Consents, small_world: Path
) -> None:
    """One training round at two nodes: the tax node opens the use, the courts node joins
    it and hands the bank its features, then the tax node's disclosure log fails and it
    releases its part. The bank did get the courts' features: the use stays counted, and
    the next round finds the one-use consent exhausted."""
    code = world_codes(small_world)[7]
    token = consents.token(
        code, purpose="model_training", scope=["operations_tax", "judicial"], max_uses=1
    )
    tax, courts = make_node("tax"), make_node("courts")
    real = tax.log.submit_many
    got: list[Any] = []

    def broken(*a: Any, **kw: Any) -> Any:
        with courts.client(BANK) as c:  # while the tax node holds the use open
            got.extend(c.get_features([(code, token)], request_id="round-A", **TRAINING))
        raise OSError("disk gone")

    tax.log.submit_many = broken  # type: ignore[method-assign]
    try:
        with tax.client(BANK) as c:
            try:
                c.get_features([(code, token)], request_id="round-A", **TRAINING)
                raise AssertionError("the tax node's answer must be refused")
            except Exception as exc:
                assert getattr(exc, "reason", "") == "DISCLOSURE_LOG_UNAVAILABLE"
    finally:
        tax.log.submit_many = real  # type: ignore[method-assign]
    assert len(got) == 1 and got[0].error is None  # the courts' features reached the bank
    assert _row(consents, token).uses == 1
    with courts.client(BANK) as c:
        (r,) = c.get_features([(code, token)], request_id="round-B", **TRAINING)
    assert r.error is not None and r.error.reason == "CONSENT_USES_EXHAUSTED"


def _reap_all(consents: Consents) -> int:
    """Run the lease reaper as if every open reservation had outlived ``use_lease_s``."""
    uses = consents.authority.uses
    real = uses.settings
    uses.settings = replace(real, use_lease_s=-1)
    try:
        return consents.authority.reap_uses()
    finally:
        uses.settings = real


def test_no_features_leave_before_the_use_is_committed(
    make_node: NodeFactory, consents: Consents, small_world: Path
) -> None:
    """The commit of the use fails (the consent service drops out after the reservation):
    the node answers nothing -- a disclosure made first and committed in the background
    would be given back by the lease reaper, uncounted. Nothing left reserved is then
    reaped; the enterprise's one use is intact for the next fetch."""
    node = make_node("tax")
    code = world_codes(small_world)[8]
    token = consents.token(code, purpose="model_training", max_uses=1)
    counter = node.servicer.verifier.counter
    assert counter is not None
    real = counter.settle

    def fails(use_id: str, refs: Any, *, commit: bool) -> Any:
        if commit:
            raise ConnectionError("consent service unreachable")
        return real(use_id, refs, commit=commit)

    counter.settle = fails  # type: ignore[method-assign]
    try:
        with node.client(BANK) as c:
            (r,) = c.get_features([(code, token)], request_id="c-1", **TRAINING)
            node.servicer._settler.submit(lambda: None).result()  # background work done
    finally:
        counter.settle = real  # type: ignore[method-assign]
    _reap_all(consents)
    disclosed = r.error is None
    assert not disclosed or _row(consents, token).uses == 1, "features out, use given back"
    assert r.error is not None and r.error.reason == "CONSENT_USES_UNAVAILABLE"
    assert not r.values
    assert _row(consents, token).uses == 0
    with node.client(BANK) as c:
        (r,) = c.get_features([(code, token)], request_id="c-2", **TRAINING)
    assert r.error is None and _row(consents, token).uses == 1


def test_a_commit_after_the_lease_ran_out_answers_nothing(
    make_node: NodeFactory, consents: Consents, small_world: Path
) -> None:
    """The node stalls past the lease between reserving and committing; the reaper gives
    the use back and another use takes it. The late commit finds no use left: the stalled
    answer is refused (CONSENT_USES_EXHAUSTED), never disclosed beyond max_uses."""
    node = make_node("tax")
    code = world_codes(small_world)[9]
    token = consents.token(code, purpose="model_training", max_uses=1)
    counter = node.servicer.verifier.counter
    assert counter is not None
    real = counter.settle
    other = _authority_counter(consents)
    jti = json.loads(b64url_decode(token.split(".")[1]))["jti"]

    def stalls(use_id: str, refs: Any, *, commit: bool) -> Any:
        if commit and use_id == "s-1":
            assert _reap_all(consents) >= 1
            (taken,) = other.reserve("s-other", [UseRef(jti, code, BANK)], pin=True)
            other.settle("s-other", [UseRef(jti, code, BANK)], commit=True)
            assert not isinstance(taken, Exception)
        return real(use_id, refs, commit=commit)

    counter.settle = stalls  # type: ignore[method-assign]
    try:
        with node.client(BANK) as c:
            (r,) = c.get_features([(code, token)], request_id="s-1", **TRAINING)
            node.servicer._settler.submit(lambda: None).result()
    finally:
        counter.settle = real  # type: ignore[method-assign]
    assert r.error is not None and r.error.reason == "CONSENT_USES_EXHAUSTED", r
    assert not r.values
    assert _row(consents, token).uses == 1

"""Scoring and guarantees end to end: real department nodes over gRPC (each verifying the
token itself), the consent service, a ledger, the coordinator — on loopback with mTLS."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pytest

from fedcredit.common.errors import FedcreditError
from fedcredit.coordinator.client import CoordinatorClient
from fedcredit.coordinator.errors import NodeUnavailable
from fedcredit.coordinator.rating import Thresholds, rate
from fedcredit.coordinator.scoring import ScoringSettings
from fedcredit.coordinator.settings import CoordinatorSettings

from .conftest import (
    BANK,
    OTHER_BANK,
    City,
    ConsentEnv,
    Coord,
    RunningNode,
    node_factory,
    start_coordinator,
    start_nodes,
    stop_coordinator,
)


@pytest.fixture(scope="module")
def nodes(
    pki: Any, consent_env: ConsentEnv, city: City, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[RunningNode]]:
    ns = start_nodes(pki, consent_env, city, tmp_path_factory.mktemp("nodes"))
    yield ns
    for n in ns:
        n.close()


@pytest.fixture(scope="module")
def coord(
    pki: Any,
    consent_env: ConsentEnv,
    city: City,
    nodes: list[RunningNode],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Coord]:
    c = start_coordinator(
        pki=pki,
        consent_env=consent_env,
        city=city,
        tmp=tmp_path_factory.mktemp("coord"),
        nodes=node_factory(pki, nodes),
        settings=CoordinatorSettings(fund=_small_fund()),
    )
    yield c
    stop_coordinator(c)


def _small_fund() -> Any:
    from fedcredit.coordinator.policy import FundPolicy

    # capacity = 30,000,000 x 1: room for a few guarantees, so exhaustion is testable
    return FundPolicy(fund_size=30_000_000, max_leverage=1)


def client(pki: Any, coord: Coord, org: str = BANK) -> CoordinatorClient:
    return CoordinatorClient(coord.target, pki.tls(org), timeout=20)


def thresholds(pki: Any, coord: Coord) -> Thresholds:
    with client(pki, coord, "operator") as c:
        m = c.get_model()
    return Thresholds(m.thresholds.a, m.thresholds.b, m.thresholds.c)


def by_grade(city: City, th: Thresholds) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {g: [] for g in "ABCD"}
    for code, pd in zip(city.codes, city.pds, strict=True):
        out[rate(float(pd), th)].append(code)
    return out


def test_score_uses_the_nodes_features_exactly(
    pki: Any, coord: Coord, consent_env: ConsentEnv, city: City, nodes: list[RunningNode]
) -> None:
    booster = lgb.Booster(model_str=city.model_text)
    th = thresholds(pki, coord)
    for code in city.codes[10:14]:
        _, token = consent_env.grant(code)
        disclosed_before = {n.department: n.log.size for n in nodes}
        with client(pki, coord) as c:
            r = c.score(code, token)
        row = city.row(code).reshape(1, -1)
        expected = float(booster.predict(row)[0])
        assert r.probability_of_default == pytest.approx(expected, abs=1e-12)
        assert r.rating == rate(expected, th)
        assert list(r.missing_categories) == []
        contrib = booster.predict(row, pred_contrib=True)[0][:-1]
        top = [city.features[i] for i in np.argsort(-contrib, kind="stable")[:3] if contrib[i] > 0]
        assert [x.feature for x in r.reasons] == top
        assert all(x.description and x.description != x.feature for x in r.reasons)
        # every node logged its disclosure (each checked the token itself)
        for n in nodes:
            assert n.log.size == disclosed_before[n.department] + 1


def test_scope_without_a_category_is_scored_missing(
    pki: Any, coord: Coord, consent_env: ConsentEnv, city: City
) -> None:
    code = city.codes[20]
    _, token = consent_env.grant(code, scope=("operations_tax",))
    with client(pki, coord) as c:
        r = c.score(code, token)
    assert sorted(r.missing_categories) == ["judicial", "social_security"]
    entry = coord.ledger.entries("score_access")[-1]
    assert entry.index == r.ledger_index and sorted(entry.payload["missing_categories"]) == [
        "judicial",
        "social_security",
    ]


def test_score_batch_streams_results_and_item_errors(
    pki: Any, coord: Coord, consent_env: ConsentEnv, city: City
) -> None:
    codes = city.codes[30:60]
    items = []
    for k, code in enumerate(codes):
        _, token = consent_env.grant(code)
        items.append((code, token if k != 7 else token[:-4] + "AAAA", f"r{k}"))
    items.append((codes[0], items[0][1], "dup"))  # the same enterprise twice in one batch
    before = len(coord.ledger.entries("score_access"))
    with client(pki, coord) as c:
        out = list(c.score_batch(items))
    assert [o.request_id for o in out] == [r for _, _, r in items]
    errors = [o for o in out if o.HasField("error")]
    assert (
        len(errors) == 1
        and errors[0].request_id == "r7"
        and errors[0].error.reason == "CONSENT_BAD_SIGNATURE"
    )
    booster = lgb.Booster(model_str=city.model_text)
    for o in out:
        if o.HasField("result"):
            exp = float(booster.predict(city.row(o.enterprise).reshape(1, -1))[0])
            assert o.result.probability_of_default == pytest.approx(exp, abs=1e-12)
    entries = coord.ledger.entries("score_access")[before:]
    assert len(entries) == len(out) - 1
    assert sorted(e.index for e in entries) == sorted(
        o.result.ledger_index for o in out if o.HasField("result")
    )


def test_score_batch_counts_each_use_at_the_consent_service(
    pki: Any, coord: Coord, consent_env: ConsentEnv, city: City
) -> None:
    """A batch counts its uses in one RecordUses call per chunk: a token allowing two
    uses scores twice and is refused the third time, with no ledger entry for it."""
    code = city.codes[61]
    _, token = consent_env.grant(code, max_uses=2)
    before = len(coord.ledger.entries("score_access"))
    with client(pki, coord) as c:
        out = list(c.score_batch([(code, token, f"u{k}") for k in range(3)]))
    errors = [o for o in out if o.HasField("error")]
    assert len(out) == 3 and len(errors) == 1
    assert errors[0].error.reason == "CONSENT_USES_EXHAUSTED"
    assert len(coord.ledger.entries("score_access")) == before + 2
    with client(pki, coord) as c, pytest.raises(FedcreditError) as exc:
        c.score(code, token)
    assert exc.value.reason == "CONSENT_USES_EXHAUSTED"


def _own_nodes(
    pki: Any, consent_env: ConsentEnv, city: City, tmp: Path, policy: str
) -> tuple[list[RunningNode], Coord]:
    ns = start_nodes(pki, consent_env, city, tmp)
    c = start_coordinator(
        pki=pki,
        consent_env=consent_env,
        city=city,
        tmp=tmp,
        nodes=node_factory(pki, ns),
        settings=CoordinatorSettings(
            scoring=ScoringSettings(node_deadline_s=1.0, on_node_failure=policy)  # type: ignore[arg-type]
        ),
    )
    return ns, c


def test_a_score_through_the_portal_reaches_every_node_as_provenance(
    pki: Any, consent_env: ConsentEnv, city: City, tmp_path: Path
) -> None:
    """A bank's Score that came through the portal (a delegated session the coordinator
    verified: the bank's identity ``via`` portal) is ledgered ``via: portal`` at the
    coordinator and in every node's disclosure entries; the bank's own call in neither."""
    import json

    from fedcredit.common.tls import Identity
    from fedcredit.coordinator.scoring import ScoreItem

    ns, c = _own_nodes(pki, consent_env, city, tmp_path, "refuse")
    try:
        cert = pki.tls(BANK).identity().cert_sha256
        (portal_code, own_code), tokens = city.codes[70:72], {}
        for code in (portal_code, own_code):
            tokens[code] = consent_env.grant(code)[1]
        scorer = c.server.app.scorer  # type: ignore[union-attr]
        for code, via in ((portal_code, "portal"), (own_code, "")):
            item = ScoreItem(code, tokens[code], f"r-{code}")
            [got] = c.server.run(scorer.score_many(Identity(BANK, "bank", cert, via=via), [item], "credit_assessment"))  # fmt: skip
            assert not isinstance(got, FedcreditError), got
        access = {e.subject: e.payload for e in c.ledger.entries("score_access")}
        assert access[portal_code]["via"] == "portal" and "via" not in access[own_code]
        for n in ns:
            entries = [json.loads(e.data) for e in n.log.get_entries(0, n.log.size)]
            by_code = {e["subject"]: e["payload"] for e in entries}
            assert by_code[portal_code]["via"] == "portal", n.org_id
            assert "via" not in by_code[own_code], n.org_id
    finally:
        stop_coordinator(c)
        for n in ns:
            n.close()


@pytest.mark.parametrize("policy", ["refuse", "score_missing"])
def test_node_down(
    pki: Any, consent_env: ConsentEnv, city: City, tmp_path: Path, policy: str
) -> None:
    ns, c = _own_nodes(pki, consent_env, city, tmp_path, policy)
    try:
        code = city.codes[40]
        _, token = consent_env.grant(code)
        courts = next(n for n in ns if n.department == "courts")
        courts.stop()
        t0 = time.monotonic()
        with client(pki, c) as cl:
            if policy == "refuse":
                with pytest.raises(NodeUnavailable) as exc:
                    cl.score(code, token)
                assert (
                    exc.value.metadata["node"] == "dept-courts"
                    and "dept-courts" in exc.value.message
                )
                assert c.ledger.entries("score_access") == []
            else:
                r = cl.score(code, token)
                assert list(r.missing_categories) == ["judicial"]
                assert c.ledger.entries("score_access")[-1].index == r.ledger_index
        assert time.monotonic() - t0 < 5.0  # a deadline, never a hang
    finally:
        stop_coordinator(c)
        for n in ns:
            n.close()


# ---------------------------------------------------------------- guarantees


Apply = Callable[..., Any]


def _decide_each_grade(coord: Coord, grades: dict[str, list[str]], apply: Apply) -> None:
    """One decision per grade and boundary, then an idempotent retry and a conflicting reuse."""
    before = len(coord.ledger.entries("guarantee_decision"))
    a = apply("g-a", grades["A"][0], 5_000_000)
    assert a.rating == "A" and a.approved and a.fund_share_bp == 8000 and a.bank_share_bp == 2000
    assert (
        a.collateral_required_yuan == 0 and a.fund_amount_yuan == 4_000_000 and a.status == "ACTIVE"
    )
    a2 = apply("g-a2", grades["A"][1], 5_000_001)
    assert (
        not a2.approved and a2.reason == "COLLATERAL_REQUIRED" and a2.collateral_required_yuan > 0
    )
    b = apply("g-b", grades["B"][0], 800_000)
    assert b.rating == "B" and b.approved and (b.fund_share_bp, b.bank_share_bp) == (6000, 4000)
    cc = apply("g-c", grades["C"][0], 1_000_000, collateral=700_000)
    assert cc.rating == "C" and cc.approved and (cc.fund_share_bp, cc.bank_share_bp) == (4000, 6000)
    d = apply("g-d", grades["D"][0], 100_000, collateral=10**7)
    assert (
        d.rating == "D"
        and not d.approved
        and d.reason == "GRADE_NOT_ELIGIBLE"
        and d.status == "REFUSED"
    )
    decided = coord.ledger.entries("guarantee_decision")
    assert len(decided) == before + 5
    assert decided[before].index == a.ledger_index and decided[before].payload["approved"] is True
    # idempotent retry: same decision, no new ledger entry
    again = apply("g-a", grades["A"][0], 5_000_000)
    assert (
        again.replayed
        and again.ledger_index == a.ledger_index
        and again.fund_amount_yuan == a.fund_amount_yuan
    )
    with pytest.raises(FedcreditError) as conflict:
        apply("g-a", grades["A"][0], 4_000_000)
    assert conflict.value.reason == "APPLICATION_ID_REUSED"
    assert len(coord.ledger.entries("guarantee_decision")) == before + 5


def _fill_capacity(pki: Any, coord: Coord, grades: dict[str, list[str]], apply: Apply) -> None:
    # capacity: 30,000,000; used 4,000,000 + 480,000 + 400,000; A loans of 5,000,000 reserve 4,000,000 each
    with client(pki, coord) as c:
        st = c.fund_status()
    assert st.exposure_yuan == 4_880_000 and st.capacity_yuan == 30_000_000 - 4_880_000
    approved = 0
    for k in range(10):
        r = apply(f"g-cap-{k}", grades["A"][2 + k], 5_000_000)
        if not r.approved:
            assert r.reason == "FUND_CAPACITY_EXCEEDED", r
            break
        approved += 1
    assert approved == 6  # 6 x 4,000,000 = 24,000,000 <= 25,120,000 < 7 x 4,000,000


def _report_outcomes(pki: Any, coord: Coord) -> None:
    # outcomes: repaid releases exposure, default pays the fund's share
    with client(pki, coord) as c:
        rel = c.report_outcome("g-b", defaulted=False)
        assert rel.status == "RELEASED" and rel.payout_yuan == 0
        dft = c.report_outcome("g-a", defaulted=True, loss_yuan=1_000_000)
        assert dft.status == "DEFAULTED" and dft.payout_yuan == 800_000
        assert c.report_outcome("g-a", defaulted=True).replayed
        with pytest.raises(FedcreditError) as closed:
            c.report_outcome("g-d", defaulted=True)
        assert closed.value.reason == "GUARANTEE_NOT_ACTIVE"
        st = c.fund_status()
    assert st.paid_out_yuan == 800_000 and st.balance_yuan == 29_200_000
    assert st.exposure_yuan == 400_000 + 6 * 4_000_000
    outcomes = coord.ledger.entries("guarantee_outcome")
    assert [e.payload["outcome"] for e in outcomes] == ["RELEASED", "DEFAULTED"]
    # another bank's guarantee answers as an unknown id (issue 14: no existence oracle)
    with client(pki, coord, "bank-ccb-weihai") as other:
        with pytest.raises(FedcreditError) as nope:
            other.report_outcome("g-c", defaulted=True)
        with pytest.raises(FedcreditError) as unknown:
            other.report_outcome("g-none", defaulted=True)
    assert nope.value.reason == unknown.value.reason == "GUARANTEE_NOT_FOUND"
    assert nope.value.message == unknown.value.message.replace("g-none", "g-c")


def test_guarantee_decisions_every_grade_boundary_idempotency_capacity(
    pki: Any, coord: Coord, consent_env: ConsentEnv, city: City
) -> None:
    th = thresholds(pki, coord)
    grades = by_grade(city, th)
    assert all(grades[g] for g in "ABCD"), {g: len(v) for g, v in grades.items()}

    def apply(app: str, code: str, amount: int, collateral: int = 0) -> Any:
        _, token = consent_env.grant(code, purpose="guarantee")
        with client(pki, coord) as c:
            return c.apply(
                application_id=app, enterprise=code, token=token, amount_yuan=amount, term_months=12,
                collateral_yuan=collateral,
            )  # fmt: skip

    _decide_each_grade(coord, grades, apply)
    _fill_capacity(pki, coord, grades, apply)
    _report_outcomes(pki, coord)


def test_application_ids_are_per_bank(
    pki: Any, coord: Coord, consent_env: ConsentEnv, city: City
) -> None:
    """A bank chooses its application ids; another bank using the same id neither learns that
    it exists (no 'belongs to another bank'), nor is refused, nor blocks or reads the first
    bank's application: its own application is decided under its own name."""
    first_code, other_code = city.codes[60], city.codes[61]

    def apply(bank: str, code: str, amount: int) -> Any:
        _, token = consent_env.grant(code, bank=bank, purpose="guarantee")
        with client(pki, coord, bank) as c:
            return c.apply(application_id="shared-id-1", enterprise=code, token=token,
                           amount_yuan=amount, term_months=12, collateral_yuan=10**7)  # fmt: skip

    mine = apply(BANK, first_code, 200_000)
    theirs = apply(OTHER_BANK, other_code, 300_000)  # the same id, another bank: its own
    assert not theirs.replayed and theirs.ledger_index != mine.ledger_index
    assert theirs.enterprise == other_code and theirs.amount_yuan == 300_000
    again = apply(BANK, first_code, 200_000)  # the first bank's retry: still its own decision
    assert again.replayed and again.ledger_index == mine.ledger_index
    decided = {e.index: e.payload for e in coord.ledger.entries("guarantee_decision")}
    assert decided[theirs.ledger_index]["bank"] == OTHER_BANK
    assert decided[mine.ledger_index]["bank"] == BANK
    with client(pki, coord, OTHER_BANK) as c:  # each bank lists and reports only its own
        own = [g for g in c.list_guarantees(limit=1000) if g.application_id == "shared-id-1"]
        assert [(g.bank, g.enterprise) for g in own] == [(OTHER_BANK, other_code)]
        if theirs.approved:
            assert c.report_outcome("shared-id-1", defaulted=False).status == "RELEASED"
    with client(pki, coord) as c:
        mine_now = [g for g in c.list_guarantees(limit=1000) if g.application_id == "shared-id-1"]
        assert [(g.bank, g.status) for g in mine_now] == [(BANK, mine.status)]


def test_guarantee_needs_guarantee_purpose(
    pki: Any, coord: Coord, consent_env: ConsentEnv, city: City
) -> None:
    code = city.codes[50]
    _, token = consent_env.grant(code, purpose="credit_assessment")
    before = len(coord.ledger.entries())
    with client(pki, coord) as c, pytest.raises(FedcreditError) as exc:
        c.apply(
            application_id="g-p", enterprise=code, token=token, amount_yuan=100_000, term_months=12
        )
    assert exc.value.reason == "CONSENT_PURPOSE_NOT_COVERED"
    assert len(coord.ledger.entries()) == before


# ---------------------------------------------------------------- one ledger entry per answer


def test_exactly_one_ledger_entry_per_answer_under_8_concurrent_clients(
    pki: Any, coord: Coord, consent_env: ConsentEnv, city: City
) -> None:
    work: list[list[tuple[str, str, str, str]]] = []
    k = 0
    for t in range(8):
        mine = []
        for j in range(6):
            code = city.codes[100 + k]
            k += 1
            if j % 3 == 2:
                _, token = consent_env.grant(code, purpose="guarantee")
                mine.append(("apply", code, token, f"cc-{t}-{j}"))
            else:
                _, token = consent_env.grant(code)
                mine.append(("score", code, token, ""))
        # every thread also retries one application of another thread (idempotency under concurrency)
        work.append(mine)
    for t in range(8):
        other = work[(t + 1) % 8][2]
        work[t].append(other)
    before_scores = len(coord.ledger.entries("score_access"))
    before_dec = len(coord.ledger.entries("guarantee_decision"))
    answers: list[tuple[str, int, str]] = []
    lock = threading.Lock()
    failures: list[BaseException] = []

    def run(mine: list[tuple[str, str, str, str]]) -> None:
        try:
            with client(pki, coord) as c:
                for kind, code, token, app in mine:
                    if kind == "score":
                        r = c.score(code, token)
                        got = ("score", r.ledger_index, code)
                    else:
                        try:
                            d = c.apply(
                                application_id=app,
                                enterprise=code,
                                token=token,
                                amount_yuan=200_000,
                                term_months=6,
                                collateral_yuan=200_000,
                            )
                        except FedcreditError as exc:  # the other thread is deciding it right now
                            assert exc.reason == "APPLICATION_IN_PROGRESS", exc
                            continue
                        got = ("apply", d.ledger_index, app)
                    with lock:
                        answers.append(got)
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(m,)) for m in work]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not failures, failures
    scores = coord.ledger.entries("score_access")[before_scores:]
    decisions = coord.ledger.entries("guarantee_decision")[before_dec:]
    score_answers = [a for a in answers if a[0] == "score"]
    assert len(score_answers) == 8 * 4
    assert sorted(e.index for e in scores) == sorted(a[1] for a in score_answers)
    assert {e.index: e.subject for e in scores} == {a[1]: a[2] for a in score_answers}
    # one decision entry per application id, however many times it was answered
    apps = {a[2]: a[1] for a in answers if a[0] == "apply"}
    assert len(apps) == 16
    assert sorted(e.payload["application_id"] for e in decisions) == sorted(apps)
    assert all(apps[e.payload["application_id"]] == e.index for e in decisions)


# ---------------------------------------------------------------- post-loan monitoring


def test_watch_warns_when_a_rating_falls(
    pki: Any, coord: Coord, consent_env: ConsentEnv, city: City
) -> None:
    th = thresholds(pki, coord)
    code = by_grade(city, th)["A"][-1]
    _, token = consent_env.grant(code, purpose="post_loan_monitoring")
    _, wrong = consent_env.grant(city.codes[-1], purpose="credit_assessment")
    events: list[Any] = []
    first = threading.Event()

    def watch() -> None:
        with client(pki, coord) as c:
            for ev in c.watch(
                [(code, token), (city.codes[-1], wrong)], interval_seconds=1, max_rounds=2
            ):
                events.append(ev)
                if ev.kind == 1:
                    first.set()

    t = threading.Thread(target=watch)
    t.start()
    try:
        assert first.wait(10)
        # The operator activates a re-calibrated model: the same probability of default now rates worse.
        with client(pki, coord, "operator") as op:
            op.publish(
                city.model_text,
                calibration_pds=list(city.pds * 0.2),
                version="strict-v1",
                activate=False,
            )
            op.activate("strict-v1")
        t.join(15)
    finally:
        with client(pki, coord, "operator") as op:
            op.activate("test-v1")
    assert not t.is_alive()
    kinds = [(e.kind, e.enterprise) for e in events]
    assert (
        4,
        city.codes[-1],
    ) in kinds  # the credit-assessment token cannot watch: ERROR, then dropped
    err = next(e for e in events if e.kind == 4)
    assert err.error.reason == "CONSENT_PURPOSE_NOT_COVERED"
    mine = [e for e in events if e.enterprise == code]
    assert [e.kind for e in mine] == [1, 2]  # CURRENT, then DOWNGRADE
    assert (
        mine[0].result.rating == "A"
        and mine[1].previous_rating == "A"
        and mine[1].result.rating > "A"
    )
    assert mine[1].result.model_version == "strict-v1"
    # each rescoring is an access in the ledger
    idx = {e.index for e in coord.ledger.entries("score_access")}
    assert mine[0].result.ledger_index in idx and mine[1].result.ledger_index in idx


def test_score_batch_answers_while_the_client_waits(
    pki: Any, coord: Coord, consent_env: ConsentEnv, city: City
) -> None:
    """An interactive client sends one enterprise, waits for its answer, then sends the next."""
    import queue

    pairs = [(code, consent_env.grant(code)[1]) for code in city.codes[300:303]]
    answered: queue.Queue[str] = queue.Queue()

    def requests() -> Iterator[tuple[str, str, str]]:
        for k, (code, token) in enumerate(pairs):
            yield (code, token, f"i{k}")
            assert answered.get(timeout=10) == f"i{k}"  # the answer came before the stream goes on

    got = []
    with client(pki, coord) as c:
        for item in c.score_batch(requests(), timeout=30):
            got.append(item.request_id)
            answered.put(item.request_id)
    assert got == ["i0", "i1", "i2"]

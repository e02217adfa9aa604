"""FeatureService over real mTLS gRPC: answers, every refusal with its reason, the log."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from fedcredit.common.errors import FedcreditError
from fedcredit.ledger.entry import KEYS as ENTRY_KEYS
from fedcredit.node import catalog
from fedcredit.node.settings import NodeSettings
from fedcredit.world import pooled
from tests.node.conftest import BANK, OTHER_BANK, Consents, NodeFactory, world_codes

DISCLOSURE_KEYS = {
    "node", "caller", "caller_role", "on_behalf_of", "purpose", "consent_jti",
    "features", "request_id", "data_version", "as_of",
}  # fmt: skip


def _reason(exc: pytest.ExceptionInfo[FedcreditError]) -> str:
    return exc.value.reason


def test_catalog_lists_the_departments_features(make_node: NodeFactory) -> None:
    node = make_node("courts")
    with node.client("bank-icbc-weihai") as c:  # any authenticated organisation may read it
        cat = c.catalog()
    assert cat.node == "dept-courts" and cat.department == "courts" and cat.category == "judicial"
    assert cat.as_of == "2025-12" and cat.data_version == 1 and cat.max_batch == 1000
    names = [f.name for f in cat.features]
    assert names == [f.name for f in catalog.for_department("courts")]
    f = cat.features[0]
    assert f.description and f.unit and f.computation and list(f.tables)
    assert f.zero_when_absent


def test_answers_match_the_catalog_functions_and_are_logged_without_values(
    make_node: NodeFactory, consents: Consents, small_world: Path
) -> None:
    node = make_node("tax")
    codes = world_codes(small_world)[:40]
    items = [(c, consents.token(c)) for c in codes]
    with node.client() as c:
        res = c.get_features(items, **node.coordinator_kw(use_id="req-1"))
    all_codes, names, matrix = pooled.compute_all(small_world, departments=["tax"])
    row = {code: i for i, code in enumerate(all_codes)}
    assert [r.enterprise for r in res] == codes
    for r in res:
        assert r.error is None and r.values is not None
        expected = matrix[row[r.enterprise]]
        for j, n in enumerate(names):
            v = r.values[n]
            if math.isnan(expected[j]):
                assert v.value is None and v.missing in ("no_records", "not_covered")
            else:
                assert v.value == pytest.approx(expected[j], rel=1e-12) and v.missing == "present"
    # One disclosure entry per enterprise, naming features but never values.
    assert node.entries() == len(codes)
    entries = node.log.get_entries(0, node.entries())
    for r, e in zip(res, entries, strict=True):
        body = json.loads(e.data)
        p = body["payload"]
        assert body["subject"] == r.enterprise and body["kind"] == "feature_disclosure"
        assert p["caller"] == "coordinator" and p["on_behalf_of"] == BANK
        assert p["purpose"] == "credit_assessment" and p["request_id"] == "req-1"
        assert p["consent_jti"] == r.consent_jti and p["features"] == names
        assert r.disclosure_index == e.index
        # The entry holds names and references only. Its numbers are the envelope's
        # index and version and the payload's data version; every other leaf is a
        # string (the payload's feature names included): no slot a value could use.
        assert set(body) == ENTRY_KEYS and set(p) == DISCLOSURE_KEYS
        assert type(body["index"]) is int and type(body["v"]) is int
        assert type(p["data_version"]) is int and p["data_version"] == 1
        assert all(isinstance(n, str) for n in p["features"])
        for k, x in [*body.items(), *p.items()]:
            if k not in ("index", "v", "data_version", "payload", "features", "subject"):
                assert isinstance(x, str), (k, x)


def test_missing_values_say_why(
    make_node: NodeFactory, consents: Consents, small_world: Path
) -> None:
    node = make_node("housing_fund")
    codes = world_codes(small_world)
    with node.client() as c:
        res = c.get_features(
            [(x, consents.token(x, scope=["staff_benefits"])) for x in codes[:120]],
            **node.coordinator_kw(),
        )
    kinds = {v.missing for r in res for v in (r.values or {}).values()}
    assert {"present", "no_records"} <= kinds  # not every firm pays into the housing fund
    for r in res:
        assert r.values is not None
        if r.values["housing_fund_payers"].missing == "no_records":
            assert all(v.missing == "no_records" and v.value is None for v in r.values.values())


def test_every_bad_input_is_refused_with_its_reason_and_nothing_logged(
    make_node: NodeFactory, consents: Consents, small_world: Path
) -> None:
    node = make_node("tax", settings=NodeSettings(max_batch=20, stream_chunk=10))
    codes = world_codes(small_world)
    a, b = codes[200], codes[201]
    good = consents.token(a)
    kw = node.coordinator_kw()
    with node.client() as c:
        # Request-level refusals: the whole call fails, typed, with the reason.
        cases: list[tuple[dict[str, object], str, str]] = [
            (
                {"features": ["revenue_12m", "no_such_feature"]},
                "UNKNOWN_FEATURE",
                "INVALID_ARGUMENT",
            ),
            ({"items": [(x, good) for x in codes[:21]]}, "BATCH_TOO_LARGE", "INVALID_ARGUMENT"),
            ({"items": []}, "EMPTY_BATCH", "INVALID_ARGUMENT"),
            ({"items": [(a, good), (a, good)]}, "DUPLICATE_ENTERPRISE", "INVALID_ARGUMENT"),
            ({"purpose": "model_training"}, "PURPOSE_NOT_ALLOWED", "PERMISSION_DENIED"),
            ({"purpose": ""}, "PURPOSE_REQUIRED", "INVALID_ARGUMENT"),
            ({"on_behalf_of": ""}, "ON_BEHALF_OF_REQUIRED", "INVALID_ARGUMENT"),
            ({"on_behalf_of_cert_sha256": b"short"}, "ON_BEHALF_OF_REQUIRED", "INVALID_ARGUMENT"),
            ({"on_behalf_of": "bank-nowhere"}, "UNKNOWN_BANK", "PERMISSION_DENIED"),
        ]
        for change, reason, code in cases:
            args = {**kw, "items": [(a, good)], "features": []}
            args.update(change)
            items, feats = args.pop("items"), args.pop("features")
            with pytest.raises(FedcreditError) as exc:
                c.get_features(items, feats, **args)  # type: ignore[arg-type]
            assert (exc.value.reason, exc.value.code.name) == (reason, code), change
            assert exc.value.message  # a sentence a person understands
    # Role not allowed: a bank may not ask for credit assessment directly; a department
    # may not ask at all.
    with node.client(BANK) as c, pytest.raises(FedcreditError) as exc:
        c.get_features([(a, good)], purpose="credit_assessment")
    assert _reason(exc) == "PURPOSE_NOT_ALLOWED" and "model_training" in exc.value.message
    with node.client("dept-courts") as c, pytest.raises(FedcreditError) as exc:
        c.get_features([(a, good)], **kw)
    assert _reason(exc) == "ROLE_NOT_ALLOWED"
    with node.client(BANK) as c, pytest.raises(FedcreditError) as exc:
        c.get_features([(a, good)], purpose="model_training", on_behalf_of=OTHER_BANK)
    assert _reason(exc) == "ON_BEHALF_OF_MISMATCH"
    assert node.entries() == 0

    # Per-enterprise refusals: each item says why; nothing is disclosed or logged for it.
    revoked = consents.token(b)
    consents.revoke(b, revoked)
    per_item = [
        ("91371002MA3C4D5E6X", good, "INVALID_USCC"),  # bad check character
        (b, good, "CONSENT_ENTERPRISE_MISMATCH"),  # a's token presented for b
        (b, consents.token(b, scope=["judicial"]), "CONSENT_CATEGORY_NOT_COVERED"),
        (
            b,
            consents.token(b, scope=["operations_tax", "judicial"], nodes=["dept-courts"]),
            "CONSENT_NODE_NOT_COVERED",
        ),
        (b, consents.token(b, purpose="guarantee"), "CONSENT_PURPOSE_NOT_COVERED"),
        (b, consents.token(b, bank=OTHER_BANK), "CONSENT_HOLDER_MISMATCH"),  # bound to another bank
        (b, revoked, "CONSENT_REVOKED"),
        (b, "not-a-token", "CONSENT_TOKEN_MALFORMED"),
    ]
    with node.client() as c:
        for code, token, reason in per_item:
            [r] = c.get_features([(code, token)], **kw)
            assert r.values is None and r.error is not None, reason
            assert r.error.reason == reason, (reason, r.error)
            assert r.error.message
    assert node.entries() == 0


def test_a_mixed_batch_serves_the_good_and_refuses_the_bad(
    make_node: NodeFactory, consents: Consents, small_world: Path
) -> None:
    node = make_node("tax")
    codes = world_codes(small_world)[10:16]
    items = [(x, consents.token(x)) for x in codes]
    items[2] = (codes[2], items[3][1])  # wrong enterprise's token
    with node.client() as c:
        res = c.get_features(items, ["revenue_12m", "late_filings_12m"], **node.coordinator_kw())
    assert [r.error.reason if r.error else "ok" for r in res] == [
        "ok",
        "ok",
        "CONSENT_ENTERPRISE_MISMATCH",
        "ok",
        "ok",
        "ok",
    ]
    assert all(
        list(r.values or {}) == ["revenue_12m", "late_filings_12m"] for r in res if not r.error
    )
    assert node.entries() == 5


def test_a_bank_asks_directly_only_for_model_training_on_its_own_consents(
    make_node: NodeFactory, consents: Consents, small_world: Path
) -> None:
    node = make_node("tax")
    a, b, c_ = world_codes(small_world)[30:33]
    own = consents.token(a, purpose="model_training")
    others = consents.token(b, purpose="model_training", bank=OTHER_BANK)
    score_only = consents.token(c_, purpose="model_training", scope=["score_only"])
    with node.client(BANK) as cl:
        res = cl.get_features([(a, own), (b, others), (c_, score_only)], purpose="model_training")
    assert res[0].error is None and res[0].values is not None
    assert res[1].error is not None and res[1].error.reason == "CONSENT_HOLDER_MISMATCH"
    # Features released to a bank: a score-only consent does not allow it.
    assert res[2].error is not None and res[2].error.reason == "CONSENT_SCORE_ONLY"
    assert node.entries() == 1
    # The coordinator may use a score-only consent (features feed the score only).
    so = consents.token(c_, scope=["score_only"])
    with node.client() as cl:
        [r] = cl.get_features([(c_, so)], **node.coordinator_kw())
    assert r.error is None


def test_streaming_answers_in_chunks_each_logged(
    make_node: NodeFactory, consents: Consents, small_world: Path
) -> None:
    node = make_node("tax", settings=NodeSettings(max_batch=50, stream_chunk=20))
    codes = world_codes(small_world)[:130]  # more than max_batch: that is what streaming is for
    items = [(x, consents.token(x)) for x in codes]
    with node.client() as c:
        res = list(
            c.stream_features(items, ["tax_paid_12m"], chunk_size=40, **node.coordinator_kw())
        )
        with pytest.raises(FedcreditError) as exc:
            list(c.stream_features(items[:3], chunk_size=51, **node.coordinator_kw()))
    assert exc.value.reason == "INVALID_CHUNK_SIZE"
    assert [r.enterprise for r in res] == codes
    assert all(r.error is None for r in res)
    assert node.entries() == 130


def test_bin_edges_are_population_quantiles_with_a_minimum_count(
    make_node: NodeFactory, consents: Consents, small_world: Path
) -> None:
    node = make_node("utilities", settings=NodeSettings(min_bin_count=15))
    with node.client() as c:
        edges = c.bin_edges(max_bins=16)
        with pytest.raises(FedcreditError) as exc:
            c.bin_edges(max_bins=1)
        assert exc.value.reason == "INVALID_MAX_BINS"
    with node.client("dept-tax") as c, pytest.raises(FedcreditError) as exc:
        c.bin_edges(max_bins=16)
    assert exc.value.reason == "ROLE_NOT_ALLOWED"
    _codes, names, x = pooled.compute_all(small_world, departments=["utilities"])
    assert edges.population > 0 and edges.min_bin_count == 15
    for fe in edges.features:
        j = names.index(fe.name)
        bounds = list(fe.upper_bounds)
        assert bounds == sorted(bounds) and bounds[-1] == math.inf and len(bounds) <= 16
        col = x[:, j]
        col = col[~np.isnan(col)]
        counts = np.bincount(np.searchsorted(bounds, col, side="left"), minlength=len(bounds))
        assert counts.min() >= 15, (fe.name, counts)
    assert node.entries() == 1  # the aggregate disclosure itself is logged
    e = json.loads(node.log.get_entries(0, 1)[0].data)
    assert e["kind"] == "aggregate_disclosure" and e["subject"] is None


def test_no_log_entry_no_answer(
    make_node: NodeFactory, consents: Consents, small_world: Path
) -> None:
    node = make_node("tax")
    code = world_codes(small_world)[50]
    tok = consents.token(code)
    node.log.close()  # the disclosure log can no longer record anything
    with node.client() as c, pytest.raises(FedcreditError) as exc:
        c.get_features([(code, tok)], **node.coordinator_kw())
    assert (exc.value.code.name, exc.value.reason) == ("UNAVAILABLE", "DISCLOSURE_LOG_UNAVAILABLE")
    assert "nothing was disclosed" in exc.value.message


def test_via_is_the_coordinators_provenance_written_to_the_entries_and_nothing_more(
    make_node: NodeFactory, consents: Consents, small_world: Path
) -> None:
    """The coordinator says a Score reached it through the portal (a delegated session it
    verified); the node writes ``via: portal`` to each disclosure entry and decides nothing
    by it. Nobody else may say it, and no other value is written."""
    node = make_node("tax")
    a, b = world_codes(small_world)[50:52]
    with node.client() as c:
        [r] = c.get_features([(a, consents.token(a))], **node.coordinator_kw(use_id="req-portal"), via="portal")  # fmt: skip
        [own] = c.get_features([(b, consents.token(b))], **node.coordinator_kw(use_id="req-own"))
    assert r.error is None and own.error is None
    portal, direct = (
        json.loads(e.data)["payload"] for e in node.log.get_entries(0, node.entries())
    )
    assert portal["via"] == "portal" and set(portal) == DISCLOSURE_KEYS | {"via"}
    assert set(direct) == DISCLOSURE_KEYS  # the coordinator's own act: no via at all
    logged = node.entries()
    with node.client() as c, pytest.raises(FedcreditError) as exc:
        c.get_features([(a, consents.token(a))], **node.coordinator_kw(), via="web")
    assert (exc.value.reason, exc.value.code.name) == ("VIA_NOT_ALLOWED", "INVALID_ARGUMENT")
    own_consent = consents.token(a, purpose="model_training")
    with node.client(BANK) as c, pytest.raises(FedcreditError) as exc:
        c.get_features([(a, own_consent)], purpose="model_training", via="portal")
    assert exc.value.reason == "VIA_NOT_ALLOWED" and BANK in exc.value.message
    assert node.entries() == logged

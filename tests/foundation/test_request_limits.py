"""common.limits: the one shape check every request passes before a servicer sees it."""

from __future__ import annotations

import pytest

from fedcredit.common.errors import InvalidArgument
from fedcredit.common.limits import check_request
from fedcredit.v1 import consent_pb2, coordinator_pb2, feature_pb2, ledger_pb2


def _reason(msg: object) -> str | None:
    try:
        check_request(msg)
    except InvalidArgument as exc:
        assert len(exc.message) < 300  # names the field and the cap, never echoes the value
        return exc.reason
    return None


def test_valid_requests_pass() -> None:
    assert _reason(ledger_pb2.GetInclusionProofRequest(index=5, tree_size=2**63 - 1)) is None
    assert _reason(consent_pb2.ListConsentsRequest(states=[1, 2, 3])) is None
    assert _reason(coordinator_pb2.ScoreRequest(enterprise="x", consent_token="t" * 16_000)) is None
    # A batch item's oversized token is that item's CONSENT_TOKEN_MALFORMED, not the batch's
    # refusal (tests/node/test_strict_tokens_grpc.py checks the genuine items are served).
    item = feature_pb2.EnterpriseRequest(enterprise="x", consent_token="t" * 200_000)
    assert _reason(feature_pb2.GetFeaturesRequest(items=[item])) is None
    assert (
        _reason(coordinator_pb2.ScoreRequest(enterprise="x", consent_token="t" * 200_000)) is None
    )


@pytest.mark.parametrize(
    ("msg", "reason"),
    [
        (ledger_pb2.GetInclusionProofRequest(index=1, tree_size=2**63), "VALUE_OUT_OF_RANGE"),
        (ledger_pb2.GetEntriesRequest(start=2**64 - 1), "VALUE_OUT_OF_RANGE"),
        (consent_pb2.ListConsentsRequest(states=[1] * 300_000), "REQUEST_TOO_LARGE"),
        (consent_pb2.ListConsentsRequest(states=[99]), "ENUM_VALUE_UNKNOWN"),
        (coordinator_pb2.OutcomeReport(outcome=42), "ENUM_VALUE_UNKNOWN"),
        (coordinator_pb2.ScoreRequest(enterprise="A" * 10_000_000), "REQUEST_TOO_LARGE"),
        (coordinator_pb2.GuaranteeApplication(consent_token="t" * 20_000), "REQUEST_TOO_LARGE"),
        (
            feature_pb2.GetFeaturesRequest(
                items=[feature_pb2.EnterpriseRequest(enterprise="B" * 5_000)]
            ),
            "REQUEST_TOO_LARGE",
        ),
        (
            consent_pb2.GrantConsentRequest(grants=[consent_pb2.ConsentTerms(purpose=77)]),
            "ENUM_VALUE_UNKNOWN",
        ),
        (ledger_pb2.AddCheckpointRequest(consistency_proof=[b"h" * 32] * 64), "REQUEST_TOO_LARGE"),
    ],
)
def test_shape_errors_are_named(msg: object, reason: str) -> None:
    assert _reason(msg) == reason


def test_map_fields_are_checked_by_their_keys_and_values() -> None:
    # A map iterates as its keys; the check must read each entry, not treat a key as a
    # message (which raised AttributeError, i.e. INTERNAL, before).
    from fedcredit.v1 import common_pb2

    assert _reason(common_pb2.ItemError(metadata={"field": "x" * 100})) is None
    assert _reason(common_pb2.ItemError(metadata={"field": "x" * 5_000})) == "REQUEST_TOO_LARGE"
    assert _reason(common_pb2.ItemError(metadata={"k" * 5_000: "x"})) == "REQUEST_TOO_LARGE"
    many = {str(i): "v" for i in range(1_001)}
    assert _reason(common_pb2.ItemError(metadata=many)) == "REQUEST_TOO_LARGE"

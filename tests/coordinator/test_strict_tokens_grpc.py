"""Strict tokens at the coordinator over mTLS gRPC (issue 14, findings 3 and 4): Score
refuses every malleated or malformed form of a genuine token with CONSENT_TOKEN_MALFORMED
and ErrorInfo (never INTERNAL, no traceback logged); in a ScoreBatch only those items fail."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest

from fedcredit.common.errors import FedcreditError
from fedcredit.coordinator.client import CoordinatorClient
from tests.consent.malformed import malformed, malleated

from .conftest import BANK, City, ConsentEnv, Coord, start_coordinator, stop_coordinator


@pytest.fixture(scope="module")
def coord(
    pki: Any, consent_env: ConsentEnv, city: City, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Coord]:
    c = start_coordinator(
        pki=pki, consent_env=consent_env, city=city, tmp=tmp_path_factory.mktemp("coord")
    )
    yield c
    stop_coordinator(c)


def _bad_forms(consent_env: ConsentEnv, token: str) -> dict[str, str]:
    key = consent_env.authority.signer().record.private_key
    return {**malleated(token), **malformed(token, key)}


def test_score_refuses_every_bad_form(
    pki: Any, coord: Coord, consent_env: ConsentEnv, city: City, caplog: pytest.LogCaptureFixture
) -> None:
    ent = city.codes[20]
    _, token = consent_env.grant(ent)
    got: dict[str, str] = {}
    with caplog.at_level(logging.DEBUG), CoordinatorClient(coord.target, pki.tls(BANK)) as c:
        for name, variant in _bad_forms(consent_env, token).items():
            try:
                c.score(ent, variant)
                got[name] = "scored"
            except FedcreditError as exc:
                got[name] = exc.reason
        assert c.score(ent, token).rating in "ABCD"  # the genuine form is scored
    assert set(got.values()) == {"CONSENT_TOKEN_MALFORMED"}, got
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


def test_score_batch_fails_only_the_bad_items(
    pki: Any, coord: Coord, consent_env: ConsentEnv, city: City
) -> None:
    ent, ent2 = city.codes[21], city.codes[22]
    _, token = consent_env.grant(ent)
    _, token2 = consent_env.grant(ent2)
    bad = _bad_forms(consent_env, token)
    items = [
        (ent, token, "good-1"),
        *((ent, t, n) for n, t in bad.items()),
        (ent2, token2, "good-2"),
    ]
    with CoordinatorClient(coord.target, pki.tls(BANK), timeout=30) as c:
        out = {r.request_id: r for r in c.score_batch(items)}
    assert out["good-1"].HasField("result") and out["good-2"].HasField("result"), out
    for name in bad:
        assert out[name].error.reason == "CONSENT_TOKEN_MALFORMED", (name, out[name])


def test_a_score_request_that_is_not_utf8_is_refused_with_error_info(
    pki: Any, coord: Coord, city: City, caplog: pytest.LogCaptureFixture
) -> None:
    import grpc

    from fedcredit.common.errors import from_rpc_error
    from fedcredit.v1 import coordinator_pb2 as pb

    placeholder = "Q" * 40
    raw = (
        pb.ScoreRequest(enterprise=city.codes[23], consent_token=placeholder)
        .SerializeToString()
        .replace(placeholder.encode(), b"\xff\xfe" * 20)
    )
    with caplog.at_level(logging.DEBUG), CoordinatorClient(coord.target, pki.tls(BANK)) as c:
        call = c.channel.unary_unary(
            "/fedcredit.v1.ScoringService/Score",
            request_serializer=None,
            response_deserializer=pb.ScoreResult.FromString,
        )
        with pytest.raises(grpc.RpcError) as info:
            call(raw, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value
    assert from_rpc_error(info.value).reason == "REQUEST_MALFORMED"
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]

"""Strict tokens at a node over mTLS gRPC (issue 14, findings 3 and 4): each malleated or
malformed token fails only its own item with CONSENT_TOKEN_MALFORMED; the genuine items of
the same batch are served; a request whose bytes are not UTF-8 is refused with ErrorInfo."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import grpc
import pytest

from fedcredit.common.errors import from_rpc_error
from fedcredit.node.client import build_request
from fedcredit.v1 import feature_pb2
from tests.consent.malformed import malformed, malleated
from tests.node.conftest import Consents, NodeFactory, world_codes


def test_a_batch_with_every_bad_form_serves_its_genuine_items(
    make_node: NodeFactory,
    consents: Consents,
    small_world: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    node = make_node("tax")
    codes = world_codes(small_world)[40:43]
    good = [(c, consents.token(c)) for c in codes]
    key = consents.authority.signer().record.private_key
    # Every form of the first enterprise's token, each presented for an enterprise of its own
    # (a batch names an enterprise once): the form alone decides the refusal.
    bad = {**malleated(good[0][1]), **malformed(good[0][1], key)}
    others = world_codes(small_world)[60 : 60 + len(bad)]
    items = [good[0], *zip(others, bad.values(), strict=True), good[1], good[2]]
    with caplog.at_level(logging.DEBUG), node.client() as c:
        res = c.get_features(items, ["revenue_12m"], **node.coordinator_kw())
    reasons = [r.error.reason if r.error else "ok" for r in res]
    assert reasons == ["ok", *["CONSENT_TOKEN_MALFORMED"] * len(bad), "ok", "ok"], dict(
        zip(["good", *bad, "good", "good"], reasons, strict=True)
    )
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert node.entries() == 3


def test_a_request_that_is_not_utf8_is_refused_with_error_info(
    make_node: NodeFactory, consents: Consents, small_world: Path
) -> None:
    node = make_node("tax")
    code = world_codes(small_world)[44]
    placeholder = "Q" * 40
    kw: Any = node.coordinator_kw()
    request = build_request([(code, placeholder)], ["revenue_12m"], **kw)
    raw = request.SerializeToString().replace(placeholder.encode(), b"\xff\xfe" * 20)
    with node.client() as c:
        call = c.channel.unary_unary(
            "/fedcredit.v1.FeatureService/GetFeatures",
            request_serializer=None,
            response_deserializer=feature_pb2.GetFeaturesResponse.FromString,
        )
        with pytest.raises(grpc.RpcError) as info:
            call(raw, timeout=10)
    err = from_rpc_error(info.value)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value
    assert err.reason == "REQUEST_MALFORMED", err

"""The decode interceptors wrap each method's handler once (common.decode._Wrapped), not
on every call, and a method whose handler changes is wrapped anew."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2

from fedcredit.common.decode import _Undecodable, _Wrapped


def _handler() -> grpc.RpcMethodHandler:
    return grpc.unary_unary_rpc_method_handler(
        lambda req, ctx: health_pb2.HealthCheckResponse(),
        request_deserializer=health_pb2.HealthCheckRequest.FromString,
        response_serializer=health_pb2.HealthCheckResponse.SerializeToString,
    )


def test_a_method_is_wrapped_once_per_handler() -> None:
    for aio in (False, True):
        wrapped = _Wrapped(aio=aio)
        h = _handler()
        first = wrapped.of(h, "/grpc.health.v1.Health/Check")
        assert first is not h
        assert wrapped.of(h, "/grpc.health.v1.Health/Check") is first
        other = _handler()
        again = wrapped.of(other, "/grpc.health.v1.Health/Check")
        assert again is not first  # a new handler for the method: wrapped anew
        assert wrapped.of(None, "/grpc.health.v1.Health/Nope") is None


def test_the_cached_wrapper_still_refuses_undecodable_bytes() -> None:
    w = _Wrapped(aio=False).of(_handler(), "/grpc.health.v1.Health/Check")
    assert isinstance(w.request_deserializer(b"\x0a\x02\xff\xfe"), _Undecodable)

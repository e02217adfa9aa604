"""Domain errors cross the wire as status + ErrorInfo and come back as the same class."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2

from fedcredit.common import errors
from fedcredit.common.errors import from_rpc_error
from fedcredit.common.rpc import handle_errors
from fedcredit.common.server import build_aio_server, build_server
from fedcredit.common.tls import channel
from fedcredit.common.uscc import InvalidUSCC
from tests.conftest import Pki


class Revoked(errors.PermissionDenied):
    reason = "TEST_CONSENT_REVOKED"


CASES: list[errors.FedcreditError] = [
    InvalidUSCC("credit code 'X' has 1 characters; expected 18", position=0),
    errors.BatchTooLarge("batch of 1001 enterprises; the maximum is 1000", maximum=1000),
    Revoked("consent abc was revoked at 12:00"),
    errors.Unauthenticated("no certificate"),
    errors.NotFound("no such model"),
    errors.FailedPrecondition("not active"),
    errors.ResourceExhausted("fund capacity exhausted"),
    errors.StoreUnavailable("database is down"),
    errors.DeadlineExceeded("node tax did not answer in 2 s"),
]


class _Servicer:
    def __init__(self) -> None:
        self.to_raise: BaseException | None = None

    @handle_errors
    def Check(self, request: Any, context: Any) -> Any:
        assert self.to_raise is not None
        raise self.to_raise

    @handle_errors
    def Watch(self, request: Any, context: Any) -> Any:
        yield health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)
        assert self.to_raise is not None
        raise self.to_raise


class _AioServicer(_Servicer):
    @handle_errors
    async def Check(self, request: Any, context: Any) -> Any:
        assert self.to_raise is not None
        raise self.to_raise

    @handle_errors
    async def Watch(self, request: Any, context: Any) -> Any:
        yield health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)
        assert self.to_raise is not None
        raise self.to_raise


def _handlers(svc: _Servicer) -> grpc.GenericRpcHandler:
    req, resp = (
        health_pb2.HealthCheckRequest.FromString,
        health_pb2.HealthCheckResponse.SerializeToString,
    )
    return grpc.method_handlers_generic_handler(
        "test.Errors",
        {
            "Check": grpc.unary_unary_rpc_method_handler(
                svc.Check, request_deserializer=req, response_serializer=resp
            ),
            "Watch": grpc.unary_stream_rpc_method_handler(
                svc.Watch, request_deserializer=req, response_serializer=resp
            ),
        },
    )


def _call(port: int, pki: Pki, method: str) -> None:
    ch = channel(f"127.0.0.1:{port}", pki.tls("bank-icbc-weihai"), server_org="ledger")
    try:
        kw = dict(
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        if method == "Check":
            ch.unary_unary("/test.Errors/Check", **kw)(health_pb2.HealthCheckRequest(), timeout=5)
        else:
            list(
                ch.unary_stream("/test.Errors/Watch", **kw)(
                    health_pb2.HealthCheckRequest(), timeout=5
                )
            )
    finally:
        ch.close()


@pytest.fixture(scope="module")
def sync_server(pki: Pki) -> Any:
    svc = _Servicer()
    server, port = build_server(
        address="127.0.0.1:0",
        tls=pki.tls("ledger"),
        register=lambda s: s.add_generic_rpc_handlers((_handlers(svc),)),
        service_names=["test.Errors"],
    )
    server.start()
    yield svc, port
    server.stop(None)


@pytest.mark.parametrize("method", ["Check", "Watch"])
@pytest.mark.parametrize("err", CASES, ids=lambda e: e.reason)
def test_sync_round_trip(
    sync_server: Any, pki: Pki, method: str, err: errors.FedcreditError
) -> None:
    svc, port = sync_server
    svc.to_raise = err
    with pytest.raises(grpc.RpcError) as info:
        _call(port, pki, method)
    assert info.value.code() == err.code
    back = from_rpc_error(info.value)
    assert type(back) is type(err)
    assert back.reason == err.reason
    assert back.message == err.message
    assert back.metadata == err.metadata


def test_unexpected_exception_becomes_internal_without_leaking(sync_server: Any, pki: Pki) -> None:
    svc, port = sync_server
    svc.to_raise = KeyError("secret-table-name")
    with pytest.raises(grpc.RpcError) as info:
        _call(port, pki, "Check")
    back = from_rpc_error(info.value)
    assert back.code == grpc.StatusCode.INTERNAL
    assert "secret-table-name" not in back.message


@pytest.mark.parametrize("method", ["Check", "Watch"])
def test_aio_round_trip(pki: Pki, method: str) -> None:
    svc = _AioServicer()
    err = Revoked("consent xyz revoked", jti="xyz")
    svc.to_raise = err

    async def main() -> None:
        server, port = build_aio_server(
            address="127.0.0.1:0",
            tls=pki.tls("ledger"),
            register=lambda s: s.add_generic_rpc_handlers((_handlers(svc),)),
            service_names=["test.Errors"],
        )
        await server.start()
        try:
            with pytest.raises(grpc.RpcError) as info:
                await asyncio.to_thread(_call, port, pki, method)
        finally:
            await server.stop(None)
        back = from_rpc_error(info.value)
        assert isinstance(back, Revoked)
        assert back.metadata == {"jti": "xyz"}

    asyncio.run(main())


def test_transport_failure_maps_to_unavailable(pki: Pki) -> None:
    # Nothing listens on this port: the client sees a plain UNAVAILABLE, no ErrorInfo.
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(grpc.RpcError) as info:
        _call(port, pki, "Check")
    back = from_rpc_error(info.value)
    assert isinstance(back, errors.Unavailable)
    assert back.reason == "UNAVAILABLE"

"""mTLS: a real server on loopback refuses callers without a certificate from the CA."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fedcredit.common import pki as pki_mod
from fedcredit.common.server import build_server
from fedcredit.common.tls import TlsFiles, channel, peer_identity
from tests.conftest import Pki


class _Echo(health_pb2_grpc.HealthServicer):
    """A health servicer on a custom name that reports the caller's identity back."""

    seen: list[str]

    def __init__(self) -> None:
        self.seen = []

    def Check(
        self, request: health_pb2.HealthCheckRequest, context: grpc.ServicerContext
    ) -> health_pb2.HealthCheckResponse:
        ident = peer_identity(context)
        self.seen.append(f"{ident.role}:{ident.org_id}")
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)


@pytest.fixture
def ledger_server(pki: Pki) -> Iterator[int]:
    server, port = build_server(
        address="127.0.0.1:0",
        tls=pki.tls("ledger"),
        register=lambda s: None,
        service_names=["fedcredit.v1.Test"],
    )
    server.start()
    yield port
    server.stop(None)


def _check(
    port: int, tls: TlsFiles | None, server_org: str = "ledger", insecure: bool = False
) -> str:
    ch = channel(f"127.0.0.1:{port}", tls, server_org=server_org, insecure=insecure)
    try:
        resp = health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(service="fedcredit.v1.Test"), timeout=5
        )
        return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
    finally:
        ch.close()


def test_client_with_certificate_from_the_ca_is_served(pki: Pki, ledger_server: int) -> None:
    assert _check(ledger_server, pki.tls("bank-icbc-weihai")) == "SERVING"


def test_call_without_client_certificate_is_refused(pki: Pki, ledger_server: int) -> None:
    ca = pki.tls("ledger").ca.read_bytes()
    ch = grpc.secure_channel(
        f"127.0.0.1:{ledger_server}",
        grpc.ssl_channel_credentials(root_certificates=ca),
        options=[("grpc.ssl_target_name_override", "ledger")],
    )
    with pytest.raises(grpc.RpcError) as info:
        health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
    ch.close()
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_plaintext_call_is_refused(ledger_server: int) -> None:
    with pytest.raises(grpc.RpcError) as info:
        _check(ledger_server, None, insecure=True)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_certificate_from_another_ca_is_refused(
    pki: Pki, ledger_server: int, tmp_path: Path
) -> None:
    foreign = pki_mod.init_pki(tmp_path / "other", [("bank-icbc-weihai", "bank")])[
        "bank-icbc-weihai"
    ]
    # Trust our CA for the server, but present a certificate signed by the foreign CA.
    mixed = TlsFiles(ca=pki.tls("ledger").ca, cert=foreign.cert, key=foreign.key)
    with pytest.raises(grpc.RpcError) as info:
        _check(ledger_server, mixed)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_client_refuses_a_server_that_is_not_the_expected_organisation(
    pki: Pki, ledger_server: int
) -> None:
    with pytest.raises(grpc.RpcError) as info:
        _check(ledger_server, pki.tls("bank-icbc-weihai"), server_org="consent-service")
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_peer_identity_comes_from_the_certificate(pki: Pki) -> None:
    echo = _Echo()
    server, port = build_server(
        address="127.0.0.1:0",
        tls=pki.tls("coordinator"),
        register=lambda s: s.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    "test.Who",
                    {
                        "Check": grpc.unary_unary_rpc_method_handler(
                            echo.Check,
                            request_deserializer=health_pb2.HealthCheckRequest.FromString,
                            response_serializer=health_pb2.HealthCheckResponse.SerializeToString,
                        )
                    },
                ),
            )
        ),
        service_names=["test.Who"],
    )
    server.start()
    try:
        ch = channel(f"127.0.0.1:{port}", pki.tls("dept-tax"), server_org="coordinator")
        call = ch.unary_unary(
            "/test.Who/Check",
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        call(health_pb2.HealthCheckRequest(), timeout=5)
        ch.close()
    finally:
        server.stop(None)
    assert echo.seen == ["department:dept-tax"]
    assert pki.tls("dept-tax").identity().org_id == "dept-tax"

"""Building fedcredit gRPC servers: mTLS, health checking, reflection, limits.

Every server answers the standard ``grpc.health.v1.Health`` service (so
operators can probe it with grpc_health_probe or grpcurl) and server
reflection, and refuses connections without a client certificate from the
deployment's CA.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent import futures
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from fedcredit.common import tls as tls_mod
from fedcredit.common.decode import AioDecodeInterceptor, DecodeInterceptor
from fedcredit.common.errors import ConfigError, Unavailable
from fedcredit.common.tls import TlsFiles

log = logging.getLogger(__name__)

SERVER_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_permit_without_calls", 1),
    # Clients ping every 2 s during calls to find a frozen server (common.tls): allowed,
    # never counted as abuse.
    ("grpc.http2.min_ping_interval_without_data_ms", 1_000),
    ("grpc.http2.max_ping_strikes", 0),
    ("grpc.so_reuseport", 0),  # a second server on the same port must fail, not share it
)


class PortInUse(Unavailable):
    reason = "PORT_IN_USE"


def _bind(server: Any, address: str, tls: TlsFiles | None, insecure: bool) -> int:
    if tls is None and not insecure:
        raise ConfigError(
            "a server needs TLS files (certificate, key, CA); --insecure allows plaintext"
        )
    try:
        if tls is None:
            log.warning("serving PLAINTEXT on %s (--insecure): no caller is authenticated", address)
            tls_mod._insecure_servers_running = True
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, tls_mod.server_credentials(tls))
    except RuntimeError as exc:
        raise PortInUse(f"cannot listen on {address}: the address is taken or invalid") from exc
    if port == 0:
        raise PortInUse(f"cannot listen on {address}: the address is taken or invalid")
    return port


def _add_standard(server: Any, service_names: Sequence[str], health_servicer: Any) -> None:
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = [*service_names, health.SERVICE_NAME, reflection.SERVICE_NAME]
    reflection.enable_server_reflection(names, server)


def build_server(
    *,
    address: str,
    tls: TlsFiles | None,
    register: Callable[[grpc.Server], None],
    service_names: Sequence[str],
    insecure: bool = False,
    max_workers: int = 16,
) -> tuple[grpc.Server, int]:
    """A started-ready (not started) sync server and the port it is bound to."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers),
        options=SERVER_OPTIONS,
        interceptors=[DecodeInterceptor()],  # undecodable request: INVALID_ARGUMENT, not INTERNAL
    )
    register(server)
    health_servicer = health.HealthServicer()
    _add_standard(server, service_names, health_servicer)
    for name in [*service_names, ""]:
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    port = _bind(server, address, tls, insecure)
    server.health_servicer = health_servicer  # type: ignore[attr-defined]
    return server, port


def build_aio_server(
    *,
    address: str,
    tls: TlsFiles | None,
    register: Callable[[grpc.aio.Server], None],
    service_names: Sequence[str],
    insecure: bool = False,
    migration_thread_pool: futures.ThreadPoolExecutor | None = None,
    options: Sequence[tuple[str, Any]] = (),
) -> tuple[grpc.aio.Server, int]:
    """A grpc.aio server (call inside a running event loop) and the port it is bound to.

    ``migration_thread_pool``: where the servicer's plain (non-async) methods run;
    ``options``: channel arguments added to :data:`SERVER_OPTIONS`."""
    from grpc_health.v1 import _async as health_async

    server = grpc.aio.server(
        migration_thread_pool,
        options=(*SERVER_OPTIONS, *options),
        interceptors=[AioDecodeInterceptor()],
    )
    register(server)
    health_servicer = health_async.HealthServicer()
    _add_standard(server, service_names, health_servicer)
    port = _bind(server, address, tls, insecure)
    server.health_servicer = health_servicer  # type: ignore[attr-defined]
    server._fedcredit_service_names = list(service_names)  # type: ignore[attr-defined]
    return server, port


async def mark_serving(server: grpc.aio.Server) -> None:
    """Set every service of an aio server to SERVING (call after ``await server.start()``)."""
    hs = server.health_servicer  # type: ignore[attr-defined]
    for name in [*server._fedcredit_service_names, ""]:  # type: ignore[attr-defined]
        await hs.set(name, health_pb2.HealthCheckResponse.SERVING)


def check_health(
    address: str, tls: TlsFiles | None, *, server_org: str, timeout: float = 2.0, service: str = ""
) -> bool:
    """True when the server at ``address`` answers SERVING to a health check."""
    ch = tls_mod.channel(address, tls, server_org=server_org, insecure=tls is None)
    try:
        stub = health_pb2_grpc.HealthStub(ch)
        resp = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        return bool(resp.status == health_pb2.HealthCheckResponse.SERVING)
    except grpc.RpcError:
        return False
    finally:
        ch.close()

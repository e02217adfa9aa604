"""What a Python gRPC client cannot go below: CPU per Score-shaped round of calls.

One coordinator Score is, on the wire, a parallel unary fan-out to the 12 nodes plus
unary calls to the ledger and the consent service. :func:`measure` runs exactly that
shape against TRIVIAL servers (``grpc.health.v1.Health/Check``, which does nothing) over
mTLS on loopback, with the client (grpc.aio, as the coordinator) in a process of its own,
and reports that process's CPU time per round: the floor of the coordinator's CPU per
Score in Python gRPC, whatever the coordinator itself does. The servers run in another
process, so their CPU is not counted.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import time
from typing import Any

from fedcredit.common.tls import TlsFiles

# The trivial servers answer from this many threads (they only answer health checks).
SERVER_THREADS = 4


def _serve(conn: Any, tls: TlsFiles, n: int) -> None:
    """``n`` trivial health-check servers (mTLS, loopback), until told to stop."""
    from fedcredit.common.server import build_server

    servers = []
    for _ in range(n):
        srv, port = build_server(address="127.0.0.1:0", tls=tls, register=lambda s: None,
                                 service_names=[], max_workers=SERVER_THREADS)  # fmt: skip
        srv.start()
        servers.append((srv, port))
    conn.send([p for _, p in servers])
    conn.recv()
    for srv, _ in servers:
        srv.stop(0)


async def _client_rounds(
    ports: list[int], tls: TlsFiles, server_org: str, fan: int, extra: int, rounds: int
) -> tuple[float, float]:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from fedcredit.common.tls import channel

    chans = [channel(f"127.0.0.1:{p}", tls, server_org=server_org, aio=True) for p in ports]
    stubs = [health_pb2_grpc.HealthStub(ch) for ch in chans]
    fan_stubs, extra_stubs = stubs[:fan], stubs[fan : fan + extra]
    req = health_pb2.HealthCheckRequest()

    async def one_round() -> None:
        await asyncio.gather(*(s.Check(req, timeout=10) for s in fan_stubs))
        for s in extra_stubs:
            await s.Check(req, timeout=10)

    for _ in range(30):  # connections open, TLS sessions up
        await one_round()
    c0, t0 = time.process_time(), time.perf_counter()
    for _ in range(rounds):
        await one_round()
    cpu, wall = time.process_time() - c0, time.perf_counter() - t0
    for ch in chans:
        await ch.close()
    return cpu / rounds, wall / rounds


def _client(conn: Any, ports: list[int], tls: TlsFiles, server_org: str,
            fan: int, extra: int, rounds: int) -> None:  # fmt: skip
    conn.send(asyncio.run(_client_rounds(ports, tls, server_org, fan, extra, rounds)))


def measure(
    server_tls: TlsFiles,
    client_tls: TlsFiles,
    server_org: str,
    *,
    fan: int = 12,
    extra: int = 1,
    rounds: int = 300,
) -> tuple[float, float]:
    """(client process CPU s, wall s) per round of ``fan`` parallel unary calls followed by
    ``extra`` sequential ones, against trivial mTLS servers of organisation ``server_org``."""
    ctx = mp.get_context("spawn")  # fresh interpreters: no gRPC state inherited
    parent, child = ctx.Pipe()
    servers = ctx.Process(target=_serve, args=(child, server_tls, fan + extra), daemon=True)
    servers.start()
    try:
        ports = parent.recv()
        cparent, cchild = ctx.Pipe()
        client = ctx.Process(target=_client, daemon=True,
                             args=(cchild, ports, client_tls, server_org, fan, extra, rounds))  # fmt: skip
        client.start()
        result: tuple[float, float] = cparent.recv()
        client.join(30)
    finally:
        parent.send("stop")
        servers.join(30)
    return result

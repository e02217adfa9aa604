"""What a Python gRPC client cannot go below: CPU per Score-shaped round of calls.

One coordinator Score is, on the wire, a parallel unary fan-out to the 12 nodes plus
unary calls to the ledger and the consent service. :func:`measure` runs exactly that
shape against TRIVIAL servers (``grpc.health.v1.Health/Check``, which does nothing) over
mTLS on loopback, with the client (grpc.aio, as the coordinator) in a process of its own,
and reports that process's CPU time per round: the floor of the coordinator's CPU per
Score in Python gRPC, whatever the coordinator itself does. The servers run in another
process, so their CPU is not counted.

:func:`measure_served` is the same round made from inside the handler of one incoming
unary call on a grpc.aio server (the shape of the coordinator, which must also take the
bank's Score and answer it): that server process's CPU per call.
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


def _served(
    conn: Any, ports: list[int], tls: TlsFiles, node_org: str, fan: int, extra: int
) -> None:
    """A grpc.aio server (the project's, with its interceptors) whose one method makes a
    round of calls to the trivial servers and answers; until told to stop."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from fedcredit.common.server import build_aio_server
    from fedcredit.common.tls import channel

    async def main() -> None:
        chans = [channel(f"127.0.0.1:{p}", tls, server_org=node_org, aio=True) for p in ports]
        stubs = [health_pb2_grpc.HealthStub(ch) for ch in chans]
        fan_stubs, extra_stubs = stubs[:fan], stubs[fan : fan + extra]
        req = health_pb2.HealthCheckRequest()

        async def handle(request: bytes, context: Any) -> bytes:
            await asyncio.gather(*(s.Check(req, timeout=10) for s in fan_stubs))
            for s in extra_stubs:
                await s.Check(req, timeout=10)
            return b"done"

        def register(server: Any) -> None:
            server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
                "bench.Floor", {"Round": grpc.unary_unary_rpc_method_handler(handle)})])  # fmt: skip

        server, port = build_aio_server(address="127.0.0.1:0", tls=tls, register=register,
                                        service_names=[])  # fmt: skip
        await server.start()
        conn.send(port)
        await asyncio.get_running_loop().run_in_executor(None, conn.recv)
        await server.stop(0)

    asyncio.run(main())


def _process_cpu(pid: int) -> float:
    import os
    from pathlib import Path

    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure_served(
    node_tls: TlsFiles,
    node_org: str,
    coord_tls: TlsFiles,
    coord_org: str,
    bank_tls: TlsFiles,
    *,
    fan: int = 12,
    extra: int = 3,
    rounds: int = 300,
) -> float:
    """CPU s per call of a grpc.aio server process (``coord_tls``, as the coordinator) that
    answers one unary call by making ``fan`` parallel unary calls and then ``extra``
    sequential ones to trivial mTLS servers (``node_tls``, organisation ``node_org``); it is
    called one call at a time by a blocking client (``bank_tls``) from this process."""
    from fedcredit.common.tls import channel

    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    trivial = ctx.Process(target=_serve, args=(child, node_tls, fan + extra), daemon=True)
    trivial.start()
    try:
        ports = parent.recv()
        sparent, schild = ctx.Pipe()
        served = ctx.Process(target=_served, daemon=True,
                             args=(schild, ports, coord_tls, node_org, fan, extra))  # fmt: skip
        served.start()
        assert served.pid is not None
        try:
            port = sparent.recv()
            ch = channel(f"127.0.0.1:{port}", bank_tls, server_org=coord_org)
            call = ch.unary_unary("/bench.Floor/Round")
            for _ in range(30):  # connections open, TLS sessions up
                call(b"", timeout=10)
            c0 = _process_cpu(served.pid)
            for _ in range(rounds):
                call(b"", timeout=10)
            cpu = _process_cpu(served.pid) - c0
            ch.close()
        finally:
            sparent.send("stop")
            served.join(30)
    finally:
        parent.send("stop")
        trivial.join(30)
    return cpu / rounds

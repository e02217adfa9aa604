"""The fault forwarder must outlive its connections: only kill -9 may end it.

CI once failed ``test_consent_or_ledger_fault_during_score[consent-sigstop]`` because the
forwarder itself died: while it was stopped the coordinator's keepalive gave up and reset
its connection, and after SIGCONT the forwarder's ``sendall`` into that connection raised
``BrokenPipeError``, which ended the process. The service then looked gone for good.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Iterator

import pytest

from tests.faults.conftest import Proc, proxy


@pytest.fixture()
def chatty_upstream() -> Iterator[int]:
    """A server that streams to every connection until it breaks (as a status stream does)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    stop = threading.Event()

    def talk(conn: socket.socket) -> None:
        with conn:
            while not stop.is_set():
                try:
                    conn.sendall(b"x" * 4096)
                except OSError:
                    return
                time.sleep(0.001)

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            threading.Thread(target=talk, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    yield srv.getsockname()[1]
    stop.set()
    srv.close()


def reset(sock: socket.socket) -> None:
    # SO_LINGER 0: close sends RST, what a gRPC peer's keepalive failure looks like.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def test_forwarder_survives_a_peer_reset_while_stopped(chatty_upstream: int) -> None:
    fwd: Proc = proxy(chatty_upstream)
    try:
        for _ in range(3):
            caller = socket.create_connection(("127.0.0.1", fwd.port), timeout=5)
            assert caller.recv(1)
            fwd.freeze()
            time.sleep(0.2)  # the upstream keeps writing into the forwarder's buffers
            reset(caller)
            fwd.thaw()
            time.sleep(0.3)  # the forwarder now writes into the reset connection
        assert fwd.popen is not None and fwd.popen.poll() is None, "the forwarder died"
        with socket.create_connection(("127.0.0.1", fwd.port), timeout=5) as again:
            assert again.recv(1), "the forwarder no longer forwards"
    finally:
        fwd.close()


def test_forwarder_refuses_cleanly_while_the_service_is_down() -> None:
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    dead_port = free.getsockname()[1]
    free.close()  # nothing listens there now
    fwd = proxy(dead_port)
    try:
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", fwd.port), timeout=5) as c:
                assert c.recv(1) == b""  # closed at once, not hung
        assert fwd.popen is not None and fwd.popen.poll() is None, "the forwarder died"
    finally:
        fwd.close()

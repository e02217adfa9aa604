"""A TCP forwarder in a process of its own, put in front of a service that runs inside the
test process: ``kill -9`` of the forwarder is the service gone (connections reset, new ones
refused), ``SIGSTOP`` is the service frozen (the kernel still accepts connections, nothing
answers) — what a caller sees of a killed or stopped service process.

Run as ``python -m tests.faults.tcpproxy <listen_port> <target_port>``; prints ``PORT <n>``.
"""

from __future__ import annotations

import selectors
import socket
import sys


def main(listen_port: int, target_port: int) -> None:
    lsock = socket.socket()
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind(("127.0.0.1", listen_port))
    lsock.listen(128)
    lsock.setblocking(False)
    print(f"PORT {lsock.getsockname()[1]}", flush=True)
    sel = selectors.DefaultSelector()
    sel.register(lsock, selectors.EVENT_READ, None)
    peers: dict[socket.socket, socket.socket] = {}
    while True:
        for key, _ in sel.select():
            s = key.fileobj
            assert isinstance(s, socket.socket)
            if s is lsock:
                client, _ = lsock.accept()
                try:
                    upstream = socket.create_connection(("127.0.0.1", target_port))
                except OSError:  # the service is not there: the caller sees a reset
                    client.close()
                    continue
                for a, b in ((client, upstream), (upstream, client)):
                    a.setblocking(False)
                    peers[a] = b
                    sel.register(a, selectors.EVENT_READ, None)
                continue
            try:
                data = s.recv(65536)
            except OSError:
                data = b""
            other = peers.get(s)
            if data and other is not None:
                try:
                    other.setblocking(True)
                    other.sendall(data)
                    other.setblocking(False)
                    continue
                except OSError:
                    # The far side went away while this side was still talking (a caller
                    # that gave up on a frozen service resets its connection after SIGCONT):
                    # close this pair only; the forwarder itself must live on, as the
                    # service it stands for does.
                    pass
            for x in (s, other):
                if x is not None and x in peers:
                    sel.unregister(x)
                    peers.pop(x, None)
                    x.close()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))

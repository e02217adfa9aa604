"""Answers reflect appended data at once; the database going away gives UNAVAILABLE and
the node recovers when it returns."""

from __future__ import annotations

import contextlib
import socket
import threading
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from fedcredit.common.errors import FedcreditError
from fedcredit.node import catalog
from fedcredit.node.client import build_request
from fedcredit.node.schema import month_ordinal
from fedcredit.node.store import NodeStore
from tests.node.conftest import Consents, NodeFactory, world_codes
from tests.node.test_store import append_january_filing


def test_appended_filings_show_in_the_next_answer(
    make_node: NodeFactory, consents: Consents, small_world: Path, tmp_path: Path
) -> None:
    node = make_node("tax")
    code = world_codes(small_world)[5]
    tok = consents.token(code, max_uses=5)
    with node.client() as c:
        [before] = c.get_features([(code, tok)], ["revenue_12m"], **node.coordinator_kw())
        assert node.engine.cached() == 1
        # Another process (the `node load --append` command) adds January's filing.
        url = node.store.engine.url.render_as_string(hide_password=False)
        append_january_filing(url, tmp_path, code, 98_765_432)
        resp = c.get_features_raw(
            build_request([(code, tok)], ["revenue_12m"], **node.coordinator_kw())
        )
    assert resp.as_of == "2026-01" and resp.data_version == 2
    after = resp.items[0].values[0]
    expected = catalog.compute(node.store.fetch([code], month_ordinal("2026-01"))).values[0, 0]
    assert after == expected
    assert before.values is not None and after != before.values["revenue_12m"].value
    assert after >= 98_000_000  # the new month is in the window


class TcpProxy:
    """A loopback TCP forwarder we can cut and restore (the database 'going away')."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = 0
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None

    def start(self) -> None:
        ls = socket.socket()
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(("127.0.0.1", self.port))
        ls.listen(64)
        self.port = ls.getsockname()[1]
        self._listener = ls
        threading.Thread(target=self._accept, args=(ls,), daemon=True).start()

    def _accept(self, ls: socket.socket) -> None:
        while True:
            try:
                client, _ = ls.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            with self._lock:
                self._socks += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        for s in (a, b):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def stop(self) -> None:
        if self._listener is not None:
            # shutdown() wakes the thread blocked in accept(); close() alone would not.
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None
        with self._lock:
            for s in self._socks:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
            self._socks.clear()


def test_database_going_away_gives_unavailable_and_the_node_recovers(
    db_url: str, make_node: NodeFactory, consents: Consents, small_world: Path
) -> None:
    if db_url.startswith("sqlite"):
        pytest.skip("an open SQLite file cannot go away; the outage is exercised on PostgreSQL")
    url = make_url(db_url)
    proxy = TcpProxy((url.host or "127.0.0.1", url.port or 5432))
    proxy.start()
    via_proxy = url.set(port=proxy.port).render_as_string(hide_password=False)
    # Load directly, serve through the proxy.
    loader = NodeStore(db_url, "tax")
    loader.create_schema()
    loader.load(small_world)
    loader.close()
    node = make_node("tax", db_url=via_proxy, load=False)
    code = world_codes(small_world)[7]
    tok = consents.token(code, max_uses=5)
    kw = node.coordinator_kw()
    try:
        with node.client() as c:
            [ok] = c.get_features([(code, tok)], **kw)
            assert ok.error is None and node.entries() == 1
            proxy.stop()
            for _ in range(2):  # the broken pooled connection, then a refused reconnect
                with pytest.raises(FedcreditError) as exc:
                    c.get_features([(code, tok)], **kw)
                assert (exc.value.code.name, exc.value.reason) == (
                    "UNAVAILABLE",
                    "STORE_UNAVAILABLE",
                )
                assert "does not answer" in exc.value.message
            with pytest.raises(FedcreditError) as exc:
                c.catalog()
            assert exc.value.reason == "STORE_UNAVAILABLE"
            assert node.entries() == 1  # nothing answered, nothing logged
            proxy.start()  # same port: the database is back
            [again] = c.get_features([(code, tok)], **kw)
            assert again.error is None and again.plain() == ok.plain()
            assert node.entries() == 2
    finally:
        proxy.stop()

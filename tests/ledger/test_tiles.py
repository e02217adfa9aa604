"""The C2SP tlog-tiles HTTP interface, read with our own parser and with Go's sumdb/tlog."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fedcredit.common.tls import TlsFiles
from fedcredit.ledger.checkpoint import Signer, open_checkpoint
from fedcredit.ledger.log import Log
from fedcredit.ledger.merkle import MemoryTree, leaf_hash
from fedcredit.ledger.settings import LogSettings
from fedcredit.ledger.tiles import (
    TileError,
    TileRef,
    encode_index,
    parse_bundle,
    parse_tile_path,
    tile_path,
)
from fedcredit.ledger.tiles_http import (
    IMMUTABLE,
    PRIVATE_IMMUTABLE,
    PRIVATE_SHORT_LIVED,
    SHORT_LIVED,
    TilesHTTPServer,
)

ORIGIN = "fedcredit/ledger"
KEY = Signer.generate(ORIGIN)
INTEROP = Path(__file__).parent / "interop"
AUDITOR = "auditor-pboc-weihai"
CREDIT_CODE = "91371000MA3TILES01"  # an enterprise whose rating the bundles must not leak


def _open(url: str) -> Log:
    return Log.open(url, KEY, ORIGIN, settings=LogSettings(checkpoint_interval=3600.0))


def _fill(log: Log, n: int, start: int = 0) -> None:
    for lo in range(start, start + n, 2000):
        hi = min(start + n, lo + 2000)
        log.append_many([("operator_note", None, {"i": i}) for i in range(lo, hi)])


def _context(ca: Path, client: TlsFiles | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.check_hostname = False  # the deployment certificate names the org, not 127.0.0.1
    if client is not None:
        ctx.load_cert_chain(str(client.cert), str(client.key))
    return ctx


def _connect(srv: TilesHTTPServer, client: TlsFiles | None = None) -> http.client.HTTPConnection:
    """A connection to ``srv``: HTTPS trusting the server's CA (and presenting ``client``'s
    certificate when given), or plain HTTP to a plaintext server."""
    if srv.tls_files is None:
        assert client is None, "a plaintext server cannot see a client certificate"
        return http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    ctx = _context(srv.tls_files.ca, client)
    return http.client.HTTPSConnection("127.0.0.1", srv.port, context=ctx, timeout=10)


def _get(
    srv: TilesHTTPServer, path: str, method: str = "GET", client: TlsFiles | None = None
) -> tuple[int, dict[str, str], bytes]:
    conn = _connect(srv, client)
    try:
        conn.request(method, path)
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


@pytest.fixture
def served(db_url: str, pki: Any) -> Iterator[tuple[Log, TilesHTTPServer]]:
    log = _open(db_url)
    srv = TilesHTTPServer(log, "127.0.0.1:0", pki.tls("ledger")).start()
    try:
        yield log, srv
    finally:
        srv.close()
        log.close()


@pytest.mark.parametrize(
    ("n", "text"),
    [(0, "000"), (7, "007"), (999, "999"), (1000, "x001/000"), (1234067, "x001/x234/067")],
)
def test_index_encoding_round_trips(n: int, text: str) -> None:
    assert encode_index(n) == text
    assert parse_tile_path(f"tile/0/{text}") == TileRef(0, n, 256)
    assert parse_tile_path(f"tile/entries/{text}.p/9") == TileRef(None, n, 9)
    assert tile_path(None, n, 9) == f"tile/entries/{text}.p/9"


@pytest.mark.parametrize(
    "path",
    [
        "tile/0/1",  # not 3 digits
        "tile/0/x000/001",  # not canonical
        "tile/0/001.p/0",
        "tile/0/001.p/256",
        "tile/0/001.p/07",
        "tile/64/000",
        "tile/01/000",
        "tile/data/000",  # Go's sumdb spelling, not C2SP
        "tile/8/0/000",  # sumdb's height segment
        "checkpoints",
    ],
)
def test_malformed_paths_are_named(path: str) -> None:
    with pytest.raises(TileError, match="expected"):
        parse_tile_path(path)


def test_tiles_are_the_tree_the_checkpoint_signs(
    served: tuple[Log, TilesHTTPServer], pki: Any
) -> None:
    log, srv = served
    auditor = pki.tls(AUDITOR)
    _fill(log, 600)
    cp = log.checkpoint()
    status, headers, body = _get(srv, "/checkpoint")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    opened = open_checkpoint(body, KEY.verifier)
    assert (opened.size, opened.root) == (600, cp.root)

    entries: list[bytes] = []
    for path in ("/tile/entries/000", "/tile/entries/001", "/tile/entries/002.p/88"):
        status, headers, body = _get(srv, path, client=auditor)
        assert status == 200, body
        assert headers["cache-control"] == (
            PRIVATE_SHORT_LIVED if ".p/" in path else PRIVATE_IMMUTABLE
        )
        entries += parse_bundle(body)
    assert len(entries) == 600
    assert [e.data for e in log.get_entries(0, 600)] == entries  # the leaf inputs, byte for byte
    leaves = [leaf_hash(e) for e in entries]
    tree = MemoryTree(leaves)
    assert tree.root() == cp.root

    full = _get(srv, "/tile/0/001")
    assert full[0] == 200 and full[2] == b"".join(leaves[256:512])
    assert full[1]["cache-control"] == IMMUTABLE
    partial = _get(srv, "/tile/0/002.p/88")
    assert partial[2] == b"".join(leaves[512:600])
    assert "immutable" not in partial[1]["cache-control"]
    # level 1 holds the level-8 subtree hashes: two complete 256-leaf subtrees so far
    lvl1 = _get(srv, "/tile/1/000.p/2")
    assert lvl1[2] == tree.levels[8][0] + tree.levels[8][1]


def test_absent_and_malformed_tiles_get_one_line(served: tuple[Log, TilesHTTPServer]) -> None:
    log, srv = served
    status, _, body = _get(srv, "/checkpoint")
    assert status == 404 and body.startswith(b"TILE_NOT_FOUND:")
    _fill(log, 10)
    status, headers, body = _get(srv, "/tile/0/000")  # only 10 of 256 exist
    assert status == 404 and b"the log holds 10" in body
    assert headers["cache-control"] == "no-store"
    assert _get(srv, "/tile/0/000.p/11")[0] == 404
    assert _get(srv, "/tile/0/000.p/10")[0] == 200
    status, _, body = _get(srv, "/tile/0/x000/001")
    assert status == 400 and body.startswith(b"TILE_PATH_INVALID: expected the canonical")
    assert body.count(b"\n") == 1
    assert _get(srv, "/tile/0/000.p/10", "POST")[0] == 405
    head = _get(srv, "/tile/0/000.p/10", "HEAD")
    assert head[0] == 200 and head[2] == b"" and head[1]["content-length"] == str(320)


# --- who reads what: hashes for everyone, entry bundles for auditors ----------------------


def _sensitive(log: Log) -> str:
    """Entries like those the bundles carry: a bank's score access naming the enterprise and
    its rating, and the policies the enterprise qualified for. Returns the credit code."""
    import random

    from fedcredit.common.uscc import generate

    code = generate(random.Random(2026))
    log.append_many(
        [
            ("score_access", code, {"bank": "bank-icbc-weihai", "enterprise": code,
                                    "rating": "BBB", "purpose": "loan_application"}),
            ("policy_screening", code, {"qualified": ["policy-tech-loan-subsidy"]}),
        ],
        actor="coordinator",
    )  # fmt: skip
    return code


def _wire(srv: TilesHTTPServer, paths: list[str], client: TlsFiles | None = None) -> bytes:
    """Every byte the server sends a reader asking for ``paths`` on one connection
    (pipelined, the last with ``Connection: close``), decrypted: status lines, headers
    and bodies."""
    import socket

    assert srv.tls_files is not None
    ctx = _context(srv.tls_files.ca, client)
    raw = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
    with ctx.wrap_socket(raw) as conn:
        reqs = [
            f"GET /{p} HTTP/1.1\r\nHost: t\r\n"
            + ("Connection: close\r\n" if i == len(paths) - 1 else "")
            + "\r\n"
            for i, p in enumerate(paths)
        ]
        conn.sendall("".join(reqs).encode())
        out = b""
        while chunk := conn.recv(65536):
            out += chunk
    return out


def _refusals() -> float:
    from fedcredit.common import metrics

    labels = {"service": metrics.service(), "code": "PERMISSION_DENIED",
              "reason": "TILES_ENTRIES_NOT_ALLOWED"}  # fmt: skip
    return metrics.REGISTRY.get_sample_value("fedcredit_refusals_total", labels) or 0.0


def test_entry_bundles_only_for_roles_that_read_every_entry(
    served: tuple[Log, TilesHTTPServer], pki: Any
) -> None:
    log, srv = served
    _fill(log, 300)
    code = _sensitive(log)
    log.checkpoint()
    # public: the checkpoint and hash tiles, with their public caching, without a certificate
    assert _get(srv, "/checkpoint")[1]["cache-control"] == SHORT_LIVED
    assert _get(srv, "/tile/0/000")[1]["cache-control"] == IMMUTABLE
    status, headers, body = _get(srv, "/tile/0/001.p/46")
    assert (status, headers["cache-control"], len(body)) == (200, SHORT_LIVED, 46 * 32)

    before = _refusals()
    for path in ("/tile/entries/000", "/tile/entries/001.p/46"):
        for method in ("GET", "HEAD"):  # HEAD would leak the bundle's length
            status, headers, body = _get(srv, path, method)
            assert status == 403 and headers["cache-control"] == "no-store"
            if method == "GET":
                assert body.startswith(b"TILES_ENTRIES_NOT_ALLOWED: entry bundles need a client")
                assert b"none was presented" in body and body.count(b"\n") == 1
    enterprise = pki.issue(code, "enterprise")
    for who, role in ((pki.tls("bank-icbc-weihai"), "bank"), (enterprise, "enterprise"),
                      (pki.tls("dept-tax"), "department")):  # fmt: skip
        status, _, body = _get(srv, "/tile/entries/001.p/46", client=who)
        want = f"has role '{role}'; entry bundles are for roles auditor, coordinator, operator"
        assert status == 403 and want.encode() in body, (role, body)
    assert _refusals() - before == 4 + 3

    for reader in (AUDITOR, "operator", "coordinator"):
        status, headers, body = _get(srv, "/tile/entries/001.p/46", client=pki.tls(reader))
        assert status == 200 and headers["cache-control"] == PRIVATE_SHORT_LIVED
        assert parse_bundle(body) == [e.data for e in log.get_entries(256, 302)]
    assert _refusals() - before == 7


def test_bundles_follow_the_ledgers_audit_roles(pki: Any, tmp_path: Path) -> None:
    """The tiles ask LedgerSettings.may_read_all, the rule of the gRPC bulk reads: a
    deployment that narrows the audit roles narrows the bundles' readers with it."""
    from fedcredit.ledger.settings import LedgerSettings

    only_auditors = LedgerSettings(audit_roles=frozenset({"auditor"}))
    assert not only_auditors.may_read_all("operator") and only_auditors.may_read_all("auditor")
    with _open(f"sqlite:///{tmp_path / 'l.sqlite'}") as log:
        _fill(log, 5)
        srv = TilesHTTPServer(log, "127.0.0.1:0", pki.tls("ledger"), only_auditors).start()
        try:
            status, _, body = _get(srv, "/tile/entries/000.p/5", client=pki.tls("operator"))
            assert status == 403 and b"entry bundles are for roles auditor " in body
            status, _, body = _get(srv, "/tile/entries/000.p/5", client=pki.tls(AUDITOR))
            assert status == 200 and len(parse_bundle(body)) == 5
        finally:
            srv.close()


def test_no_entry_byte_reaches_a_reader_without_an_auditor_certificate(
    served: tuple[Log, TilesHTTPServer], pki: Any
) -> None:
    """Everything the tiles server sends to the public, a bank and the enterprise itself,
    captured on the (decrypted) wire: no credit code, bank or rating; the auditor's
    capture of the same requests holds them (the search can fail)."""
    log, srv = served
    _fill(log, 10)
    code = _sensitive(log)
    log.checkpoint()
    paths = ["checkpoint", "tile/0/000.p/12", "tile/entries/000.p/12", "tile/entries/000.p/11"]
    needles = [code.encode(), b"bank-icbc-weihai", b"policy-tech-loan-subsidy", b'"BBB"']
    for client in (None, pki.tls("bank-icbc-weihai"), pki.issue(code, "enterprise")):
        wire = _wire(srv, paths, client)
        assert wire.count(b"HTTP/1.1 200") == 2 and wire.count(b"HTTP/1.1 403") == 2
        assert not [n for n in needles if n in wire], client
    wire = _wire(srv, paths, pki.tls(AUDITOR))
    assert wire.count(b"HTTP/1.1 200") == 4 and all(n in wire for n in needles)


def test_a_certificate_from_another_ca_is_refused_at_the_handshake(
    served: tuple[Log, TilesHTTPServer], tmp_path: Path
) -> None:
    from fedcredit.common.pki import init_pki

    _log, srv = served
    foreign = init_pki(tmp_path / "other-ca", [(AUDITOR, "auditor")])[AUDITOR]
    with pytest.raises((ssl.SSLError, ConnectionError)):
        _get(srv, "/tile/entries/000.p/1", client=foreign)


def test_plaintext_serves_hashes_but_never_bundles(tmp_path: Path) -> None:
    with _open(f"sqlite:///{tmp_path / 'l.sqlite'}") as log:
        _fill(log, 5)
        log.checkpoint()
        srv = TilesHTTPServer(log, "127.0.0.1:0").start()
        try:
            assert _get(srv, "/tile/0/000.p/5")[0] == 200
            status, _, body = _get(srv, "/tile/entries/000.p/5")
            assert status == 403 and b"this server is plaintext" in body
        finally:
            srv.close()


# --- interop with Go's golang.org/x/mod/sumdb (code nobody here wrote) -------------------


@pytest.fixture(scope="module")
def interop_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build tests/ledger/interop offline against the Debian golang-golang-x-mod-dev sources."""
    go = shutil.which("go")
    mod = Path("/usr/share/gocode/src/golang.org/x/mod/sumdb/tlog")
    if go is None or not mod.is_dir():
        reason = (
            "Go interop test needs `go` and golang.org/x/mod at /usr/share/gocode "
            "(apt-get install golang-go golang-golang-x-mod-dev; .ci/run does this)"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        print(f"SKIP: {reason}")
        pytest.skip(reason)
    out = tmp_path_factory.mktemp("go")
    env = {
        **os.environ,
        "GOPROXY": "off",
        "GOFLAGS": "-mod=mod",
        "GOPATH": str(out / "path"),
        "CGO_ENABLED": "0",
    }
    r = subprocess.run(
        [go, "build", "-o", str(out / "interop"), "."],
        cwd=INTEROP,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert r.returncode == 0, r.stderr
    return out / "interop"


def _interop(
    binary: Path,
    srv: TilesHTTPServer,
    vkey: str,
    old: Path,
    index: int,
    client: TlsFiles | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run the Go client; with ``client`` it trusts that CA and presents that certificate
    for entry bundles (and only for them)."""
    files = [] if client is None else [str(client.ca), str(client.cert), str(client.key)]
    return subprocess.run(
        [str(binary), srv.url, vkey, str(old), str(index), *files],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.slow
def test_go_sumdb_follows_the_served_log(interop_binary: Path, tmp_path: Path, pki: Any) -> None:
    # past 65,536 entries the tree has level-2 tiles, so Go reads every kind of tile; the
    # checkpoint and hash tiles without a certificate, the bundles with the auditor's
    auditor = pki.tls(AUDITOR)
    with _open(f"sqlite:///{tmp_path / 'ledger.sqlite'}") as log:
        _fill(log, 1000)
        old = log.checkpoint()
        old_file = tmp_path / "old.checkpoint"
        old_file.write_text(log.checkpoint_note(old))
        _fill(log, 66_000, start=1000)
        new = log.checkpoint()
        srv = TilesHTTPServer(log, "127.0.0.1:0", pki.tls("ledger")).start()
        try:
            r = _interop(interop_binary, srv, KEY.verifier.vkey, old_file, 777, auditor)
            assert r.returncode == 0, r.stderr
            out = json.loads(r.stdout)
            assert (out["size"], out["old_size"], out["index"]) == (67_000, 1000, 777)
            assert out["root"] == __import__("base64").b64encode(new.root).decode()

            # a bank's certificate reads the public checkpoint, then is refused the bundles
            bank = pki.tls("bank-icbc-weihai")
            r = _interop(interop_binary, srv, KEY.verifier.vkey, old_file, 777, bank)
            assert r.returncode == 1, r.stdout
            assert "GET tile/entries/000: 403 Forbidden: TILES_ENTRIES_NOT_ALLOWED" in r.stderr
            assert "has role 'bank'" in r.stderr

            # the same program refuses a checkpoint signed by another key
            other = Signer.generate(ORIGIN)
            r = _interop(interop_binary, srv, other.verifier.vkey, old_file, 777, auditor)
            assert r.returncode == 1 and "note.Open" in r.stderr
            # and an "old" checkpoint that is not a prefix of the served tree
            forged = tmp_path / "forged.checkpoint"
            from fedcredit.ledger.checkpoint import Checkpoint, sign_checkpoint

            fake_root = hashlib.sha256(b"not the log").digest()
            forged.write_text(sign_checkpoint(Checkpoint(ORIGIN, 1000, fake_root), KEY))
            r = _interop(interop_binary, srv, KEY.verifier.vkey, forged, 777, auditor)
            assert r.returncode == 1 and "CheckTree" in r.stderr
        finally:
            srv.close()


def test_https_checkpoint_and_hash_tiles_need_no_client_certificate(
    pki: Any, tmp_path: Path
) -> None:
    tls = pki.tls("ledger")
    with _open(f"sqlite:///{tmp_path / 'l.sqlite'}") as log:
        _fill(log, 3)
        log.checkpoint()
        srv = TilesHTTPServer(log, "127.0.0.1:0", tls).start()
        try:
            ctx = ssl.create_default_context(cafile=str(tls.ca))
            ctx.check_hostname = False  # the deployment certificate names the org, not 127.0.0.1
            conn = http.client.HTTPSConnection("127.0.0.1", srv.port, context=ctx, timeout=10)
            conn.request("GET", "/checkpoint")
            r = conn.getresponse()
            assert r.status == 200
            assert open_checkpoint(r.read(), KEY.verifier).size == 3
            conn.request("GET", "/tile/0/000.p/3")  # same connection, still no certificate
            r = conn.getresponse()
            assert r.status == 200 and len(r.read()) == 3 * 32
            conn.close()
            assert srv.url.startswith("https://")
        finally:
            srv.close()


def test_the_ledger_service_serves_tiles_beside_grpc(tmp_path: Path) -> None:
    """`[ledger] tiles_address` starts HTTPS (the ledger's certificate) with the service:
    the checkpoint without a client certificate, the entry bundles only with the
    deployment's auditor certificate; stopping the service stops it."""
    import asyncio
    import socket
    import threading

    from fedcredit.common.config import load_config
    from fedcredit.common.deploy import write_local_deployment
    from fedcredit.ledger.service import serve

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = write_local_deployment(tmp_path / "dep")
    with open(config, "a") as f:
        f.write(f'\n[ledger]\nwitnesses = []\ntiles_address = "127.0.0.1:{port}"\n')
    dep = load_config(config)
    box: dict[str, Any] = {}
    ready = threading.Event()
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()

    def on_ready(port: int, lg: Any) -> None:
        box["log"] = lg
        ready.set()

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(serve(dep, stop=stop, on_ready=on_ready))
        except BaseException as exc:
            box["error"] = exc
            ready.set()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    assert ready.wait(60) and "error" not in box, box.get("error")
    log = box["log"]
    try:
        log.append_many([("operator_note", None, {"i": i}) for i in range(300)])
        log.checkpoint()
        tls = dep.tls(dep.service("ledger").org_id)
        ctx = ssl.create_default_context(cafile=str(tls.ca))
        ctx.check_hostname = False
        conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10)
        conn.request("GET", "/checkpoint")
        cp = open_checkpoint(conn.getresponse().read(), log.verifier)
        conn.request("GET", "/tile/entries/000")
        r = conn.getresponse()
        assert r.status == 403 and r.read().startswith(b"TILES_ENTRIES_NOT_ALLOWED:")
        conn.close()
        auditor = dep.tls("auditor-pboc-weihai")
        conn = http.client.HTTPSConnection(
            "127.0.0.1", port, context=_context(tls.ca, auditor), timeout=10
        )
        conn.request("GET", "/tile/entries/000")
        r = conn.getresponse()
        assert r.status == 200 and r.getheader("Cache-Control") == PRIVATE_IMMUTABLE
        assert len(parse_bundle(r.read())) == 256 and cp.size == 300
        conn.close()
    finally:
        loop.call_soon_threadsafe(stop.set)
        t.join(30)
    with pytest.raises(OSError):
        http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=3).request("GET", "/")

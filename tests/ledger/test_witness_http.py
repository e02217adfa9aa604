"""The C2SP tlog-witness HTTP protocol: POST /add-checkpoint and its statuses."""

from __future__ import annotations

import base64
import http.client
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedcredit.ledger.checkpoint import (
    SIG_COSIGNATURE_V1,
    Checkpoint,
    Signer,
    open_checkpoint,
    sign_checkpoint,
)
from fedcredit.ledger.merkle import MemoryTree, leaf_hash
from fedcredit.ledger.witness import Witness, WitnessStore
from fedcredit.ledger.witness_http import WitnessHTTPServer

ORIGIN = "fedcredit/ledger"
LOG_KEY = Signer.generate(ORIGIN)
W_KEY = Signer.generate("dept-tax", SIG_COSIGNATURE_V1)


def _tree(n: int) -> MemoryTree:
    return MemoryTree(leaf_hash(b"entry %d" % i) for i in range(n))


def _body(old: int, proof: list[bytes], note: str) -> bytes:
    lines = [f"old {old}", *(base64.b64encode(h).decode() for h in proof)]
    return ("\n".join(lines) + "\n\n" + note).encode()


def _post(
    srv: WitnessHTTPServer, body: bytes, path: str = "/add-checkpoint"
) -> tuple[int, str, str]:
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    try:
        conn.request("POST", path, body, {"Content-Type": "text/plain"})
        r = conn.getresponse()
        return r.status, r.getheader("Content-Type") or "", r.read().decode()
    finally:
        conn.close()


@pytest.fixture
def srv(tmp_path: Path) -> Iterator[WitnessHTTPServer]:
    w = Witness(
        W_KEY, {ORIGIN: LOG_KEY.verifier}, WitnessStore.open(f"sqlite:///{tmp_path}/w.sqlite")
    )
    s = WitnessHTTPServer(w, "127.0.0.1:0").start()
    yield s
    s.close()


def test_cosigns_and_follows_the_log(srv: WitnessHTTPServer) -> None:
    tree = _tree(40)
    note10 = sign_checkpoint(Checkpoint(ORIGIN, 10, tree.root(10)), LOG_KEY)
    status, _, line = _post(srv, _body(0, [], note10))
    assert status == 200 and line.startswith("\u2014 dept-tax ")
    cp = open_checkpoint(note10 + line, LOG_KEY.verifier, witnesses=[W_KEY.verifier], quorum=1)
    assert cp.cosigned_by == ("dept-tax",)
    note40 = sign_checkpoint(Checkpoint(ORIGIN, 40, tree.root(40)), LOG_KEY)
    status, _, line = _post(srv, _body(10, tree.consistency_proof(10, 40), note40))
    assert status == 200
    # a stale old size: 409 with the size it cosigned, as text/x.tlog.size
    assert _post(srv, _body(10, tree.consistency_proof(10, 40), note40)) == (
        409, "text/x.tlog.size", "40\n",
    )  # fmt: skip


def test_each_refusal_has_the_protocol_status(srv: WitnessHTTPServer) -> None:
    tree = _tree(20)
    note = sign_checkpoint(Checkpoint(ORIGIN, 8, tree.root(8)), LOG_KEY)
    assert _post(srv, _body(0, [], note))[0] == 200
    note20 = sign_checkpoint(Checkpoint(ORIGIN, 20, tree.root(20)), LOG_KEY)
    bad_proof = [leaf_hash(b"x")] * len(tree.consistency_proof(8, 20))
    status, _, text = _post(srv, _body(8, bad_proof, note20))
    assert status == 422 and text.count("\n") == 1
    other = sign_checkpoint(Checkpoint(ORIGIN, 20, tree.root(20)), Signer.generate(ORIGIN))
    assert _post(srv, _body(8, tree.consistency_proof(8, 20), other))[0] == 403
    foreign = Signer.generate("other/log")
    unknown = sign_checkpoint(Checkpoint("other/log", 3, tree.root(3)), foreign)
    assert _post(srv, _body(0, [], unknown))[0] == 404
    split = sign_checkpoint(Checkpoint(ORIGIN, 8, leaf_hash(b"fork")), LOG_KEY)
    assert _post(srv, _body(8, [], split))[0] == 409
    assert _post(srv, _body(30, [], note20))[0] == 400  # old beyond the checkpoint
    assert _post(srv, b"old 01\n\n" + note20.encode())[0] == 400
    assert _post(srv, b"no blank line")[0] == 400
    assert _post(srv, b"old 8\nnot-base64!\n\n" + note20.encode())[0] == 400
    assert _post(srv, _body(0, [], note), "/elsewhere")[0] == 404

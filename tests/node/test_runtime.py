"""A node assembled from a deployment file: mTLS server, disclosure log with its own key,
checkpoints published to the central ledger, the ledger's witness service mounted."""

from __future__ import annotations

import json
import time
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from typer.testing import CliRunner

from fedcredit.clients.cli import build_app
from fedcredit.common.config import load_config
from fedcredit.common.deploy import write_local_deployment
from fedcredit.common.evidence import Receipt
from fedcredit.common.tls import Identity, channel
from fedcredit.consent.authority import ConsentAuthority, local_verifier
from fedcredit.consent.store import ConsentStore
from fedcredit.consent.terms import ConsentTerms
from fedcredit.ledger.checkpoint import Signer
from fedcredit.node.client import NodeClient
from fedcredit.node.runtime import build_process
from fedcredit.v1 import ledger_pb2, ledger_pb2_grpc
from tests.node.conftest import world_codes


class RecordingSink:
    def __init__(self) -> None:
        self.entries: list[tuple[str, str | None, Mapping[str, Any]]] = []

    def append(self, kind: str, subject: str | None, payload: Mapping[str, Any]) -> Receipt:
        self.entries.append((kind, subject, dict(payload)))
        return Receipt(len(self.entries) - 1, b"\x00" * 32)


def test_node_process_from_a_deployment(tmp_path: Path, small_world: Path) -> None:
    cfg = write_local_deployment(tmp_path / "dep", bank_count=2)
    ledger_vkey = Signer("fedcredit/ledger", Ed25519PrivateKey.generate()).verifier.vkey
    data = tomllib.loads(cfg.read_text())
    data.setdefault("node", {}).update(
        checkpoint_publish_interval=0.2,
        log_checkpoint_interval=0.05,
        ledger_verifier_key=ledger_vkey,
    )
    cfg.write_text(tomli_w.dumps(data))
    dep = load_config(cfg)
    # `fedcredit node load --config` puts the records into the node's own database.
    res = CliRunner().invoke(build_app(), ["node", "load", "--department", "tax", "--from", str(small_world),
                                           "--config", str(cfg), "--json"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["rows"]["filings"] > 0

    bank = dep.banks[0]
    bank_id = dep.tls(bank).identity()
    authority = ConsentAuthority(ConsentStore(f"sqlite:///{tmp_path / 'c.sqlite'}"), banks=dep.banks,
                                 bank_certs=lambda b: dep.tls(b).identity().cert_sha256)  # fmt: skip
    code = world_codes(small_world)[3]
    view = authority.grant(Identity(code, "enterprise", b"\x01" * 32),
                           ConsentTerms(enterprise=code, bank=bank, purpose="credit_assessment", scope=["operations_tax"]))  # fmt: skip
    token = authority.token(bank_id, view.consent_id).token
    assert token
    central = RecordingSink()
    proc = build_process(
        dep, "tax", address="127.0.0.1:0", verifier=local_verifier(authority), central=central
    )
    proc.start()
    try:
        with NodeClient(f"127.0.0.1:{proc.port}", dep.tls("coordinator"), server_org=proc.org) as c:
            [r] = c.get_features([(code, token)], purpose="credit_assessment", on_behalf_of=bank,
                                 on_behalf_of_cert_sha256=bank_id.cert_sha256)  # fmt: skip
        assert r.error is None and r.disclosure_index == 0
        deadline = time.monotonic() + 10
        while not central.entries and time.monotonic() < deadline:
            time.sleep(0.05)
        kind, subject, payload = central.entries[0]
        assert kind == "node_checkpoint" and subject is None
        assert payload["node"] == "dept-tax" and payload["origin"] == "dept-tax/disclosures"
        assert payload["size"] == 1 and payload["checkpoint"].startswith(
            "dept-tax/disclosures\n1\n"
        )
        # The signing key was created next to the deployment's data, mode 0600.
        key = dep.dir / "data" / "dept-tax-disclosures.key"
        assert key.exists() and key.stat().st_mode & 0o777 == 0o600
        # The ledger's witness service is mounted on the node's server.
        assert proc.witness is not None
        ch = channel(f"127.0.0.1:{proc.port}", dep.tls("ledger"), server_org=proc.org)
        info = ledger_pb2_grpc.WitnessServiceStub(ch).GetWitnessInfo(
            ledger_pb2.GetWitnessInfoRequest(), timeout=5
        )
        ch.close()
        assert isinstance(info, ledger_pb2.WitnessInfo)
        # Its cosigning key is published in the deployment, for the ledger to check.
        assert (dep.dir / "keys" / "dept-tax.witness.vkey").exists()
    finally:
        proc.stop()
    assert len(central.entries) == 1  # nothing new to publish at stop


def test_default_witness_publishes_its_key_in_the_deployment(
    tmp_path: Path, small_world: Path
) -> None:
    cfg = write_local_deployment(tmp_path / "dep", bank_count=1)
    dep = load_config(cfg)
    proc = build_process(dep, "courts", address="127.0.0.1:0", verifier=local_verifier(
        ConsentAuthority(ConsentStore(f"sqlite:///{tmp_path / 'c.sqlite'}"))), central=RecordingSink())  # fmt: skip
    proc.start()
    try:
        assert proc.witness is not None and proc.notes == []
        vkey = (dep.dir / "keys" / "dept-courts.witness.vkey").read_text().strip()
        assert vkey.startswith("dept-courts+")
    finally:
        proc.stop()


def test_witness_answers_the_c2sp_http_protocol_when_configured(
    tmp_path: Path, small_world: Path
) -> None:
    """[[nodes]] witness_http: the node's witness (same key, same state) also takes
    cosignature requests over C2SP tlog-witness, without a client certificate."""
    import http.client

    from fedcredit.ledger.checkpoint import Checkpoint, open_checkpoint, sign_checkpoint
    from fedcredit.ledger.keys import log_signer, witness_verifier
    from fedcredit.ledger.merkle import MemoryTree, leaf_hash

    cfg = write_local_deployment(tmp_path / "dep", bank_count=1)
    data = tomllib.loads(cfg.read_text())
    for n in data["nodes"]:
        if n["department"] == "courts":
            n["witness_http"] = "127.0.0.1:0"
    cfg.write_text(tomli_w.dumps(data))
    dep = load_config(cfg)
    ledger_key = log_signer(dep, "fedcredit/test-ledger")  # published in keys/ledger.vkey
    proc = build_process(dep, "courts", address="127.0.0.1:0", verifier=local_verifier(
        ConsentAuthority(ConsentStore(f"sqlite:///{tmp_path / 'c.sqlite'}"))), central=RecordingSink())  # fmt: skip
    proc.start()
    try:
        assert proc.witness_http is not None
        tree = MemoryTree(leaf_hash(b"entry %d" % i) for i in range(12))
        note = sign_checkpoint(Checkpoint("fedcredit/test-ledger", 12, tree.root(12)), ledger_key)
        conn = http.client.HTTPConnection("127.0.0.1", proc.witness_http.port, timeout=10)
        conn.request("POST", "/add-checkpoint", ("old 0\n\n" + note).encode())
        resp = conn.getresponse()
        line = resp.read().decode()
        conn.close()
        assert resp.status == 200, line
        wkey = witness_verifier(dep, "dept-courts")
        assert wkey is not None
        cp = open_checkpoint(note + line, ledger_key.verifier, witnesses=[wkey], quorum=1)
        assert cp.cosigned_by == ("dept-courts",)
        # A stale request is refused with the protocol's 409 and the size it cosigned.
        conn = http.client.HTTPConnection("127.0.0.1", proc.witness_http.port, timeout=10)
        conn.request("POST", "/add-checkpoint", ("old 0\n\n" + note).encode())
        resp = conn.getresponse()
        assert (resp.status, resp.read()) == (409, b"12\n")
        conn.close()
    finally:
        proc.stop()
    assert proc.witness_http is not None
    with pytest.raises(OSError):
        http.client.HTTPConnection("127.0.0.1", proc.witness_http.port, timeout=2).connect()

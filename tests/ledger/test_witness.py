"""Witness rules: cosign only signed, consistent, forward-moving checkpoints; remember across restarts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fedcredit.ledger.checkpoint import (
    SIG_COSIGNATURE_V1,
    Checkpoint,
    Note,
    Signer,
    open_checkpoint,
    sign_checkpoint,
)
from fedcredit.ledger.errors import (
    CheckpointRollback,
    ProofLengthMismatch,
    ProofSizesInvalid,
    RootMismatch,
    SignatureInvalid,
    UnknownKey,
    WitnessConflict,
    WitnessUnknownLog,
)
from fedcredit.ledger.merkle import MemoryTree, leaf_hash
from fedcredit.ledger.witness import Witness, WitnessStore

ORIGIN = "fedcredit.test/ledger"
LOG = Signer.generate(ORIGIN)
TREE = MemoryTree(leaf_hash(str(i).encode()) for i in range(64))


def _note(size: int, signer: Signer = LOG, root: bytes | None = None) -> str:
    return sign_checkpoint(Checkpoint(ORIGIN, size, root or TREE.root(size)), signer)


def _witness(tmp_path: Path) -> Witness:
    return Witness(
        Signer.generate("dept-tax", SIG_COSIGNATURE_V1),
        {ORIGIN: LOG.verifier.vkey},
        WitnessStore.open(f"sqlite:///{tmp_path}/w.sqlite"),
    )


def test_cosigns_and_advances(tmp_path: Path) -> None:
    w = _witness(tmp_path)
    sig = w.add_checkpoint(0, [], _note(10))
    note = Note.parse(_note(10)).with_signatures([sig])
    sc = open_checkpoint(note.format(), LOG.verifier, witnesses=[w.verifier], quorum=1)
    assert sc.cosigned_by == ("dept-tax",)
    w.add_checkpoint(10, TREE.consistency_proof(10, 37), _note(37))
    assert w.store.get(ORIGIN).size == 37
    # same size, same root again: fine (idempotent)
    w.add_checkpoint(37, [], _note(37))


def test_conflict_reports_its_size(tmp_path: Path) -> None:
    w = _witness(tmp_path)
    w.add_checkpoint(0, [], _note(10))
    with pytest.raises(WitnessConflict) as e:
        w.add_checkpoint(5, TREE.consistency_proof(5, 20), _note(20))
    assert e.value.metadata["size"] == "10"


def test_refuses_rollback_and_split_view(tmp_path: Path) -> None:
    w = _witness(tmp_path)
    w.add_checkpoint(0, [], _note(20))
    with pytest.raises(ProofSizesInvalid):
        w.add_checkpoint(20, [], _note(12))
    with pytest.raises(CheckpointRollback):
        w.add_checkpoint(20, [], _note(20, root=leaf_hash(b"forged")))
    assert w.store.get(ORIGIN).size == 20


def test_refuses_inconsistent_tree(tmp_path: Path) -> None:
    w = _witness(tmp_path)
    w.add_checkpoint(0, [], _note(20))
    other = MemoryTree(leaf_hash(b"x" + str(i).encode()) for i in range(30))
    forged = sign_checkpoint(Checkpoint(ORIGIN, 30, other.root()), LOG)
    with pytest.raises(RootMismatch):
        w.add_checkpoint(20, other.consistency_proof(20, 30), forged)
    with pytest.raises(ProofLengthMismatch):
        w.add_checkpoint(20, [], _note(30))
    assert w.store.get(ORIGIN).size == 20


def test_refuses_bad_signatures_and_unknown_logs(tmp_path: Path) -> None:
    w = _witness(tmp_path)
    with pytest.raises(UnknownKey):
        w.add_checkpoint(0, [], _note(10, signer=Signer.generate(ORIGIN)))
    with pytest.raises(SignatureInvalid):
        w.add_checkpoint(0, [], _note(10).replace("\n10\n", "\n11\n"))
    stranger = Signer.generate("other/log")
    with pytest.raises(WitnessUnknownLog):
        w.add_checkpoint(0, [], sign_checkpoint(Checkpoint("other/log", 1, TREE.root(1)), stranger))


def test_size_survives_restart(tmp_path: Path) -> None:
    w = _witness(tmp_path)
    w.add_checkpoint(0, [], _note(40))
    w.store.close()
    again = _witness(tmp_path)
    assert again.store.get(ORIGIN).size == 40
    with pytest.raises(WitnessConflict):
        again.add_checkpoint(0, [], _note(50))


def test_lazy_log_keys(tmp_path: Path) -> None:
    published: dict[str, str] = {}
    w = Witness(
        Signer.generate("dept-tax", SIG_COSIGNATURE_V1),
        lambda: published,
        WitnessStore.open(f"sqlite:///{tmp_path}/w.sqlite"),
    )
    with pytest.raises(WitnessUnknownLog):
        w.add_checkpoint(0, [], _note(3))
    published[ORIGIN] = LOG.verifier.vkey
    w.add_checkpoint(0, [], _note(3))


def test_witness_store_on_both_engines(db_url: str) -> None:
    store = WitnessStore.open(db_url)
    w = Witness(Signer.generate("dept-tax", SIG_COSIGNATURE_V1), {ORIGIN: LOG.verifier}, store)
    w.add_checkpoint(0, [], _note(8))
    w.add_checkpoint(8, TREE.consistency_proof(8, 30), _note(30))
    assert (
        store.advance(ORIGIN, 8, 40, TREE.root(40)) is False
    )  # compare-and-set refuses a stale size
    assert store.get(ORIGIN).size == 30
    store.close()


def test_mount_witness_with_deployment_keys(tmp_path: Path, pki: Any) -> None:
    """The one call a node makes; keys are published under <deployment>/keys/."""
    from types import SimpleNamespace

    from fedcredit.common.server import build_server
    from fedcredit.ledger.client import WitnessClient
    from fedcredit.ledger.keys import log_signer, witness_verifier
    from fedcredit.ledger.witness import WITNESS_SERVICE, mount_witness

    dep = SimpleNamespace(dir=tmp_path)
    holder: dict[str, Witness] = {}
    server, port = build_server(
        address="127.0.0.1:0",
        tls=pki.tls("dept-courts"),
        register=lambda s: holder.update(
            w=mount_witness(s, dep, "dept-courts", f"sqlite:///{tmp_path}/w.sqlite")
        ),
        service_names=[WITNESS_SERVICE],
        max_workers=2,
    )
    server.start()
    try:
        signer = log_signer(dep, ORIGIN)  # published after the witness started: read lazily
        v = witness_verifier(dep, "dept-courts")
        assert v is not None and v == holder["w"].verifier
        client = WitnessClient(
            "dept-courts", v, f"127.0.0.1:{port}", pki.tls("ledger"), server_org="dept-courts"
        )
        note = sign_checkpoint(Checkpoint(ORIGIN, 5, TREE.root(5)), signer)
        line = client.add_checkpoint(0, [], note)
        sc = open_checkpoint(note + line, signer.verifier, witnesses=[v], quorum=1)
        assert sc.cosigned_by == ("dept-courts",)
        with pytest.raises(WitnessConflict) as e:
            client.add_checkpoint(0, [], note)
        assert e.value.metadata["size"] == "5"
        assert client.info().logs[0].size == 5
        client.close()
    finally:
        server.stop(0)

"""Secure-sum keys signed by each bank's identity (issue 15): a coordinator that swaps a
bank's X25519 key in the roster (a man in the middle on the masked sums) is refused by
every other bank, with a named reason, before anything is masked."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, RecordDict

from fedcredit.common import pki
from fedcredit.common.errors import FedcreditError
from fedcredit.common.tls import TlsFiles
from fedcredit.training.bank.app import _Bank
from fedcredit.training.bank.source import CsvSource
from fedcredit.training.flower import masking
from fedcredit.training.flower.masking import (
    Entry,
    KeyNotSigned,
    KeySignatureInvalid,
    parse_entries,
    roster_json,
    sign_key,
    verify_roster,
)

BANKS = ("bank-a", "bank-b", "bank-c")
RUN = 77


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> dict[str, TlsFiles]:
    d = tmp_path_factory.mktemp("pki")
    files = pki.init_pki(d, [*((b, "bank") for b in BANKS), ("coordinator", "coordinator")])
    other = tmp_path_factory.mktemp("other-pki")
    files["bank-b@other-ca"] = pki.init_pki(other, [("bank-b", "bank")])["bank-b"]
    return files


def _signed(tls: dict[str, TlsFiles], who: str, node: int, key: bytes, bank: str = "") -> Entry:
    _ca, cert, sk = tls[who].read()
    name = bank or tls[who].identity().org_id
    return Entry(node, key, name, cert.decode(), sign_key(sk, RUN, node, name, key))


def _roster(tls: dict[str, TlsFiles]) -> list[Entry]:
    return [
        _signed(tls, b, 10 + i, masking.public_key(masking.new_private_key()))
        for i, b in enumerate(BANKS)
    ]


def _refused(entries: list[Entry], tls: dict[str, TlsFiles], run: int = RUN) -> FedcreditError:
    ca = tls["bank-a"].read()[0]
    text = roster_json({e.node: e.key for e in entries}, {e.node: e for e in entries})
    with pytest.raises(FedcreditError) as exc:
        verify_roster(ca, run, 10, parse_entries(text))
    return exc.value


def test_honest_roster_verifies_and_every_substitution_is_refused_by_name(
    tls: dict[str, TlsFiles],
) -> None:
    entries = _roster(tls)
    ca = tls["bank-a"].read()[0]
    text = roster_json({e.node: e.key for e in entries}, {e.node: e for e in entries})
    assert parse_entries(text) == entries
    verify_roster(ca, RUN, 10, parse_entries(text))  # bank-a accepts the honest roster

    mitm = masking.public_key(masking.new_private_key())  # the coordinator's own key
    b = entries[1]
    cases: list[tuple[list[Entry], type[FedcreditError], str]] = [
        # bank-b's key swapped, bank-b's certificate and signature kept
        ([entries[0], replace(b, key=mitm), entries[2]], KeySignatureInvalid, "substituted"),
        # the swapped key sent unsigned
        ([entries[0], Entry(b.node, mitm), entries[2]], KeyNotSigned, "no bank signature"),
        # signed with the coordinator's own certificate, in bank-b's name
        (
            [entries[0], _signed(tls, "coordinator", b.node, mitm, "bank-b"), entries[2]],
            KeySignatureInvalid,
            "coordinator:coordinator",
        ),
        # a "bank-b" certificate from another CA
        (
            [entries[0], _signed(tls, "bank-b@other-ca", b.node, mitm), entries[2]],
            KeySignatureInvalid,
            "not issued by this deployment's CA",
        ),
        # bank-c's genuine signed entry moved to bank-b's node: the node is signed too
        ([entries[0], replace(entries[2], node=b.node)], KeySignatureInvalid, "substituted"),
        # one bank listed for two nodes (each entry signed by it for its node)
        (
            [entries[0], entries[1], _signed(tls, "bank-b", 99, entries[1].key)],
            KeySignatureInvalid,
            "one bank for two nodes",
        ),
    ]
    for roster, kind, why in cases:
        err = _refused(roster, tls)
        assert isinstance(err, kind) and why in err.message, (why, err.message)
        assert err.reason in ("SECURE_KEY_SIGNATURE_INVALID", "SECURE_KEY_NOT_SIGNED")
    # A key bank-b signed for an earlier run is not valid for this one.
    err = _refused(entries, tls, run=RUN + 1)
    assert err.reason == "SECURE_KEY_SIGNATURE_INVALID" and "replayed" in err.message
    # An expired certificate is refused.
    with pytest.raises(KeySignatureInvalid, match="not valid now"):
        masking.verify_entry(ca, RUN, b, now=dt.datetime(2100, 1, 1, tzinfo=dt.UTC))


@dataclass(frozen=True)
class PkiCsvSource(CsvSource):
    """CSV banks that also hold an identity in a PKI (as city banks do)."""

    files: tuple[TlsFiles, ...] = ()

    def identity(self, node_config: dict[str, Any]) -> TlsFiles | None:
        return self.files[int(node_config["partition-id"])]


def _csv(path: Path, seed: int) -> str:
    rng = np.random.default_rng(seed)
    lines = ["id,y,a,b"] + [f"{seed * 1000 + i},{i % 2},{rng.normal()},{rng.normal()}" for i in range(40)]  # fmt: skip
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _setup(bank: _Bank) -> tuple[list[Context], list[Entry]]:
    """Three banks' setup replies, read as the coordinator reads them (strategies._keys)."""
    ctxs = [Context(RUN, 10 + i, {"partition-id": i}, RecordDict(), {}) for i in range(3)]
    entries = []
    for c in ctxs:
        info = bank.setup(c, {"private": True}).config_records["info"]
        key, sig = info["public_key"], info["key_signature"]
        assert isinstance(key, bytes) and isinstance(sig, bytes)
        entries.append(
            Entry(c.node_id, key, str(info["key_bank"]), str(info["key_certificate"]), sig)
        )
    return ctxs, entries


def _text(entries: list[Entry]) -> str:
    return roster_json({e.node: e.key for e in entries}, {e.node: e for e in entries})


def test_banks_sign_their_keys_and_refuse_a_swapped_one_before_masking(
    tls: dict[str, TlsFiles], tmp_path: Path
) -> None:
    """The bank app itself: each bank's setup reply carries its key signed for this run
    and node; the roster the coordinator builds from them is accepted and masks; the same
    roster with one key swapped is refused by another bank before it masks anything."""
    from fedcredit.training.bank.app import MASK_STATE

    paths = tuple(_csv(tmp_path / f"b{i}.csv", i) for i in range(3))
    bank = _Bank(PkiCsvSource(paths, files=tuple(tls[b] for b in BANKS)))
    ctxs, entries = _setup(bank)
    assert [e.bank for e in entries] == list(BANKS)
    flat = np.arange(6, dtype=np.int64)
    masked = [bank.masked(c, {"roster": _text(entries), "seq": 1}, flat) for c in ctxs]
    assert (masking.unmask_sum(masked) == 3 * flat).all()

    ctxs, entries = _setup(bank)  # a new run's keys
    mitm = masking.public_key(masking.new_private_key())
    swapped = [entries[0], replace(entries[1], key=mitm), entries[2]]
    with pytest.raises(KeySignatureInvalid, match="bank-b") as exc:
        bank.masked(ctxs[0], {"roster": _text(swapped), "seq": 1}, flat)
    assert exc.value.reason == "SECURE_KEY_SIGNATURE_INVALID"
    st = ctxs[0].state.config_records[MASK_STATE]
    assert isinstance(st, ConfigRecord) and st["seq"] == 0 and st["digest"] == ""  # not masked
    # Unsigned (as from a coordinator that drops the signatures): refused too.
    bare = roster_json({e.node: e.key for e in entries})
    with pytest.raises(KeyNotSigned):
        bank.masked(ctxs[2], {"roster": bare, "seq": 1}, flat)

"""Findings 4 and 5 of issue 16: loud witnesses, retried pushes, stale checkpoints refused.

Witnesses are the real witness rules (ledger.witness.Witness with its own store)
reached in-process; an outage is a witness that does not answer for a while.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from fedcredit.common.errors import Unavailable
from fedcredit.ledger.audit import Trust, check_current
from fedcredit.ledger.checkpoint import SIG_COSIGNATURE_V1, Signer, cosign, open_checkpoint
from fedcredit.ledger.errors import CheckpointStale, CosignatureFromFuture
from fedcredit.ledger.log import Log
from fedcredit.ledger.settings import LogSettings
from fedcredit.ledger.witness import Witness, WitnessStore

ORIGIN = "fedcredit.test/ledger"
KEY = Signer.generate(ORIGIN)


class LocalWitness:
    """A real Witness reached in-process; ``down`` calls fail as an unreachable one would."""

    def __init__(self, tmp_path: Path, name: str, log_key: Any = None) -> None:
        self.witness = Witness(
            Signer.generate(name, SIG_COSIGNATURE_V1),
            {ORIGIN: log_key or KEY.verifier},
            WitnessStore.open(f"sqlite:///{tmp_path}/w-{name}.sqlite"),
        )
        self.down = 0
        self.calls = 0

    @property
    def name(self) -> str:
        return self.witness.name

    @property
    def verifier(self) -> Any:
        return self.witness.verifier

    def add_checkpoint(self, old_size: int, proof: Sequence[bytes], note: str) -> str:
        self.calls += 1
        if self.down > 0:
            self.down -= 1
            raise Unavailable(f"witness {self.name} is not answering")
        return self.witness.add_checkpoint(old_size, list(proof), note).line()


def _open(tmp_path: Path, witnesses: Sequence[Any], **kw: Any) -> Log:
    settings = LogSettings(
        checkpoint_interval=3600, witness_retry_min=0.05, witness_retry_max=0.4, **kw
    )
    return Log.open(
        f"sqlite:///{tmp_path}/l.sqlite", KEY, ORIGIN, settings=settings, witnesses=witnesses
    )


def _wait(pred: Any, seconds: float = 15.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.02)
    return False


def test_a_checkpoint_signed_while_a_witness_is_down_gets_cosigned(tmp_path: Path) -> None:
    """No new checkpoint is signed after the outage: only a retry can get the cosignature."""
    w = LocalWitness(tmp_path, "dept-tax")
    w.down = 3
    with _open(tmp_path, [w]) as log:
        log.append_many([("k", None, {"i": i}) for i in range(10)])
        cp = log.checkpoint()
        assert _wait(lambda: log.store.witness_sizes().get("dept-tax") == cp.size)
        assert w.calls == 4
        stats = log.witness_stats["dept-tax"]
        assert (stats.unreachable, stats.cosigned, stats.consecutive) == (3, 1, 0)
        assert log.store.witness_status()["dept-tax"]["unreachable"] == 3
        open_checkpoint(log.latest_checkpoint(1), KEY.verifier, witnesses=[w.verifier], quorum=1)


def test_every_refusal_is_a_warning_naming_the_witness_and_reason(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A witness configured with another key for this log refuses every push."""
    bad = LocalWitness(tmp_path, "dept-courts", log_key=Signer.generate(ORIGIN).verifier)
    good = LocalWitness(tmp_path, "dept-tax")
    caplog.set_level(logging.WARNING, logger="fedcredit.ledger.log")
    with _open(tmp_path, [bad, good]) as log:
        log.append_many([("k", None, {"i": i}) for i in range(5)])
        log.checkpoint()
        assert _wait(lambda: log.witness_stats.get("dept-courts") is not None
                     and log.witness_stats["dept-courts"].refused >= 3)  # fmt: skip
        status = log.store.witness_status()
    refusals = [
        r for r in caplog.records if "dept-courts" in r.getMessage() and "refused" in r.getMessage()
    ]
    assert len(refusals) >= 3 and all(r.levelno == logging.WARNING for r in refusals)
    assert "CHECKPOINT_" in refusals[0].getMessage()  # the witness's reason
    assert status["dept-courts"]["refused"] >= 3
    assert status["dept-courts"]["last_outcome"] == "refused"
    assert status["dept-tax"]["cosigned"] >= 1 and status["dept-tax"]["refused"] == 0


def test_an_idle_logs_cosignatures_are_renewed(tmp_path: Path) -> None:
    w = LocalWitness(tmp_path, "dept-tax")
    with _open(tmp_path, [w], witness_refresh=0.3) as log:
        log.append_many([("k", None, {"i": i}) for i in range(5)])
        log.checkpoint()
        assert _wait(lambda: log.store.witness_sizes().get("dept-tax") == 5)
        first = open_checkpoint(log.latest_checkpoint(1), KEY.verifier, witnesses=[w.verifier])
        time.sleep(1.5)  # cosignature timestamps are whole seconds
        again = open_checkpoint(log.latest_checkpoint(1), KEY.verifier, witnesses=[w.verifier])
    assert again.size == first.size
    assert again.cosigned_at[0] > first.cosigned_at[0]


def _cosigned(size_entries: int, ts: int, *witnesses: Signer) -> str:
    from fedcredit.ledger.checkpoint import Checkpoint, Note, sign_checkpoint
    from fedcredit.ledger.merkle import root_of

    note = sign_checkpoint(
        Checkpoint(ORIGIN, size_entries, root_of([bytes(32)] * size_entries)), KEY
    )
    n = Note.parse(note)
    return n.with_signatures([cosign(n.text, w, ts) for w in witnesses]).format()


def test_audit_refuses_a_stale_or_superseded_checkpoint() -> None:
    ws = [Signer.generate(f"dept-{i}", SIG_COSIGNATURE_V1) for i in range(3)]
    trust = Trust(KEY.verifier, [w.verifier for w in ws], 2)
    now = time.time()
    fresh = trust.open(_cosigned(10, int(now) - 5, *ws))
    age = check_current(fresh, quorum=2, max_age=30, newer={"the ledger": 10}, now=now)
    assert age is not None and age >= 5
    old = trust.open(_cosigned(10, int(now) - 600, *ws))
    with pytest.raises(CheckpointStale, match=r"60[01] s ago"):
        check_current(old, quorum=2, max_age=30, now=now)
    with pytest.raises(CheckpointStale, match="witness dept-1 reports size 12"):
        check_current(fresh, quorum=2, max_age=30, newer={"witness dept-1": 12}, now=now)
    future = trust.open(_cosigned(10, int(now) + 3600, *ws))
    with pytest.raises(CosignatureFromFuture):
        check_current(future, quorum=2, max_age=30, now=now)
    # the quorum-th freshest counts: one fresh cosignature and two old ones is stale
    a, b = _cosigned(10, int(now) - 1, ws[0]), _cosigned(10, int(now) - 900, ws[1], ws[2])
    from fedcredit.ledger.checkpoint import Note

    mixed = Note.parse(a).with_signatures(Note.parse(b).signatures[1:]).format()
    with pytest.raises(CheckpointStale):
        check_current(trust.open(mixed), quorum=2, max_age=30, now=now)


def test_fedcredit_status_shows_the_witness_counts(tmp_path: Path) -> None:
    import json

    from typer.testing import CliRunner

    from fedcredit.clients.cli import build_app
    from fedcredit.common.config import load_config
    from fedcredit.common.deploy import write_local_deployment

    config = write_local_deployment(tmp_path / "dep")
    dep = load_config(config)
    bad = LocalWitness(tmp_path, "dept-courts", log_key=Signer.generate(ORIGIN).verifier)
    settings = LogSettings(checkpoint_interval=3600, witness_retry_min=0.05, witness_retry_max=0.2)
    with Log.open(
        dep.service("ledger").database, KEY, ORIGIN, settings=settings, witnesses=[bad]
    ) as log:
        log.append_many([("k", None, {"i": i}) for i in range(5)])
        log.checkpoint()
        assert _wait(
            lambda: log.store.witness_status().get("dept-courts", {}).get("refused", 0) >= 2
        )
    r = CliRunner().invoke(build_app(), ["status", "--config", str(config), "--json"])
    rows = json.loads(r.stdout)
    ledger = next(x for x in rows if x["service"] == "ledger")
    w = ledger["witnesses"]["dept-courts"]
    assert w["refused"] >= 2 and w["cosigned"] == 0 and w["last_outcome"] == "refused"
    assert "CHECKPOINT_" in w["last_reason"]
    r = CliRunner().invoke(build_app(), ["status", "--config", str(config)])
    assert "ledger witnesses" in r.stdout and "dept-courts" in r.stdout

"""C2SP signed-note checkpoints and tlog-cosignatures: format and every verifier branch."""

from __future__ import annotations

import base64
import hashlib

import pytest

from fedcredit.ledger.checkpoint import (
    SIG_COSIGNATURE_V1,
    Checkpoint,
    Note,
    Signer,
    Verifier,
    check_not_rollback,
    cosign,
    open_checkpoint,
    sign_checkpoint,
)
from fedcredit.ledger.errors import (
    CheckpointRollback,
    CosignatureQuorum,
    NoteMalformed,
    OriginMismatch,
    SignatureInvalid,
    UnknownKey,
)

ORIGIN = "fedcredit.test/ledger"
LOG = Signer.generate(ORIGIN)
W1 = Signer.generate("dept-tax", SIG_COSIGNATURE_V1)
W2 = Signer.generate("dept-courts", SIG_COSIGNATURE_V1)
ROOT = hashlib.sha256(b"root").digest()
CP = Checkpoint(ORIGIN, 1234, ROOT)


def _cosigned(*witnesses: Signer) -> str:
    note = Note.parse(sign_checkpoint(CP, LOG))
    return note.with_signatures(cosign(note.text, w, 1_700_000_000) for w in witnesses).format()


def test_format_matches_c2sp() -> None:
    text = sign_checkpoint(CP, LOG)
    lines = text.split("\n")
    assert lines[:4] == [ORIGIN, "1234", base64.b64encode(ROOT).decode(), ""]
    assert lines[4].startswith("\u2014 " + ORIGIN + " ")
    raw = base64.b64decode(lines[4].split(" ")[2])
    pub = LOG.verifier.public_key
    assert raw[:4] == hashlib.sha256(ORIGIN.encode() + b"\n\x01" + pub).digest()[:4]
    assert len(raw) == 68 and text.endswith("\n")


def test_cosignature_format() -> None:
    note = Note.parse(_cosigned(W1))
    sig = note.signatures[1]
    assert sig.key_id == hashlib.sha256(b"dept-tax\n\x04" + W1.verifier.public_key).digest()[:4]
    assert int.from_bytes(sig.signature[:8], "big") == 1_700_000_000
    assert len(sig.signature) == 72


def test_vkey_round_trip_and_errors() -> None:
    for s in (LOG, W1):
        assert Verifier.parse(s.verifier.vkey) == s.verifier
    vk = LOG.verifier.vkey
    name, kid, key = vk.split("+", 2)
    with pytest.raises(NoteMalformed):
        Verifier.parse(f"{name}+00000000+{key}")  # wrong key id
    with pytest.raises(NoteMalformed):
        Verifier.parse(f"{name}+{kid}")
    with pytest.raises(NoteMalformed):
        Verifier.parse(f"{name}+{kid}+AAAA")


def test_open_good_checkpoint_with_quorum() -> None:
    sc = open_checkpoint(
        _cosigned(W1, W2), LOG.verifier, witnesses=[W1.verifier, W2.verifier], quorum=2
    )
    assert sc.checkpoint == CP and set(sc.cosigned_by) == {"dept-tax", "dept-courts"}


def test_quorum_not_met() -> None:
    with pytest.raises(CosignatureQuorum) as e:
        open_checkpoint(_cosigned(W1), LOG.verifier, witnesses=[W1.verifier, W2.verifier], quorum=2)
    assert e.value.metadata == {"expected": "2", "got": "1"}


def test_bad_log_signature() -> None:
    text = sign_checkpoint(CP, LOG)
    forged = text.replace("1234", "1235", 1)
    with pytest.raises(SignatureInvalid):
        open_checkpoint(forged, LOG.verifier)


def test_bad_cosignature() -> None:
    note = Note.parse(_cosigned(W1))
    sig = note.signatures[1]
    bad = type(sig)(sig.name, sig.key_id, sig.signature[:8] + bytes(64))
    with pytest.raises(SignatureInvalid):
        open_checkpoint(
            Note(note.text, (note.signatures[0], bad)).format(),
            LOG.verifier,
            witnesses=[W1.verifier],
        )
    # a changed timestamp breaks the signature too
    ts = (1).to_bytes(8, "big") + sig.signature[8:]
    with pytest.raises(SignatureInvalid):
        open_checkpoint(
            Note(note.text, (note.signatures[0], type(sig)(sig.name, sig.key_id, ts))).format(),
            LOG.verifier,
            witnesses=[W1.verifier],
        )


def test_unknown_key() -> None:
    other = Signer.generate(ORIGIN)
    with pytest.raises(UnknownKey):
        open_checkpoint(sign_checkpoint(CP, other), LOG.verifier)


def test_unknown_cosigners_are_ignored() -> None:
    stranger = Signer.generate("stranger", SIG_COSIGNATURE_V1)
    sc = open_checkpoint(_cosigned(stranger), LOG.verifier, witnesses=[W1.verifier])
    assert sc.cosigned_by == ()


def test_origin_mismatch() -> None:
    with pytest.raises(OriginMismatch):
        open_checkpoint(sign_checkpoint(CP, LOG), LOG.verifier, origin="other/log")
    other = Signer.generate("other/log")
    with pytest.raises(OriginMismatch):
        open_checkpoint(sign_checkpoint(CP, other), other.verifier)


@pytest.mark.parametrize(
    "text",
    [
        "no blank line\n",
        f"{ORIGIN}\n12\nAAAA\n\n",  # no signatures
        f"{ORIGIN}\n12\n\n\u2014 x AAAAAAAA\n",  # root missing
        f"{ORIGIN}\n012\n{base64.b64encode(ROOT).decode()}\n\n\u2014 x AAAAAAAA\n",  # leading zero
        f"{ORIGIN}\n-1\n{base64.b64encode(ROOT).decode()}\n\n\u2014 x AAAAAAAA\n",
        f"{ORIGIN}\n12\n{base64.b64encode(ROOT[:16]).decode()}\n\n\u2014 x AAAAAAAA\n",  # short root
        f"{ORIGIN}\n12\n{base64.b64encode(ROOT).decode()}\n\n- x AAAAAAAA\n",  # not an em dash
        f"{ORIGIN}\n12\n{base64.b64encode(ROOT).decode()}\n\n\u2014 x !!!\n",  # not base64
        f"{ORIGIN}\n12\n{base64.b64encode(ROOT).decode()}\n\n\u2014 x AAAAAAAA",  # no final newline
    ],
)
def test_malformed_notes(text: str) -> None:
    with pytest.raises(NoteMalformed):
        open_checkpoint(text, LOG.verifier)


def test_rollback() -> None:
    check_not_rollback(CP, Checkpoint(ORIGIN, 1235, ROOT))
    with pytest.raises(CheckpointRollback):
        check_not_rollback(CP, Checkpoint(ORIGIN, 1233, ROOT))
    with pytest.raises(CheckpointRollback):
        check_not_rollback(CP, Checkpoint(ORIGIN, 1234, bytes(32)))


def test_signer_pem_round_trip() -> None:
    again = Signer.from_pem(ORIGIN, LOG.to_pem())
    assert again.verifier == LOG.verifier

"""A batch's consent signatures checked together (node.sigpool + ConsentVerifier.precheck):
the same answer for every item as one-by-one verification, and a failing worker never
lets a signature through."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedcredit.common.errors import ConfigError, FedcreditError
from fedcredit.node import sigpool
from fedcredit.node.settings import NodeSettings
from fedcredit.node.sigpool import SignaturePool, verify_jobs
from tests.node.conftest import OTHER_BANK, Consents, NodeFactory, world_codes


def _jobs() -> tuple[list[sigpool.Job], list[bool]]:
    key, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    raw, raw_other = key.public_key().public_bytes_raw(), other.public_key().public_bytes_raw()
    jobs: list[sigpool.Job] = []
    want: list[bool] = []
    for i in range(60):
        msg = f"header.payload-{i}".encode() * (i % 7 + 1)
        sig = key.sign(msg)
        case = i % 6
        if case == 1:  # one bit flipped
            sig = bytes([sig[0] ^ 1]) + sig[1:]
        elif case == 2:  # signed by another key
            sig = other.sign(msg)
        elif case == 3:  # another message
            msg += b"!"
        elif case == 4:  # truncated signature
            sig = sig[:63]
        elif case == 5:  # the other key's own valid signature, checked with it
            raw_i = raw_other
            sig = other.sign(msg)
            jobs.append((raw_i, msg, sig))
            want.append(True)
            continue
        jobs.append((raw, msg, sig))
        want.append(case == 0)
    return jobs, want


def test_the_pool_answers_what_the_reference_check_answers() -> None:
    jobs, want = _jobs()
    assert verify_jobs(jobs) == want
    pool = SignaturePool(2, min_batch=1)
    try:
        assert pool.wait_ready()
        assert pool.verify_many(jobs) == want
        assert pool.batches == 1 and pool.fallbacks == 0
        assert pool.verify_many(jobs[:1]) == want[:1]  # a share of one: still answered
    finally:
        pool.close()
    assert pool.verify_many(jobs) == want  # closed: verified in the calling thread


def test_the_wire_format_round_trips(tmp_path: Path) -> None:
    jobs, want = _jobs()
    path = tmp_path / "req.bin"
    path.write_bytes(sigpool.encode_jobs(jobs))
    with path.open("rb") as f:
        assert sigpool.decode_jobs(f) == jobs
    with path.open("rb") as f:
        out = subprocess.run(
            [sys.executable, "-m", "fedcredit.node.sigpool"],
            stdin=f,
            capture_output=True,
            timeout=60,
        ).stdout
    assert out == b"R" + bytes(want)
    with pytest.raises(ValueError):
        sigpool.encode_jobs([(b"short", b"m", b"s")])


def test_a_dead_silent_or_garbled_worker_never_admits_a_signature(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    jobs, want = _jobs()
    pool = SignaturePool(1, min_batch=1, timeout=0.5)
    try:
        assert pool.wait_ready()
        w = pool._workers[0]
        assert w.proc is not None
        w.proc.kill()
        w.proc.wait()
        assert pool.verify_many(jobs) == want  # noticed before use: all in-process
        # A worker that says it is ready, then answers "valid" to everything with a
        # garbled byte, or never answers at all.
        for script in (
            "import sys,time; o=sys.stdout.buffer; o.write(b'R'); o.flush(); "
            "sys.stdin.buffer.read(4); o.write(b'\\x02' * 100); o.flush(); time.sleep(5)",
            "import sys,time; o=sys.stdout.buffer; o.write(b'R'); o.flush(); time.sleep(5)",
            # exits once it has the request, without answering
            "import sys; o=sys.stdout.buffer; o.write(b'R'); o.flush(); sys.stdin.buffer.read(4)",
        ):
            w.stop()
            w.proc = subprocess.Popen(
                [sys.executable, "-c", script],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                bufsize=0,
            )
            w.ready = False
            deadline = time.monotonic() + 60  # a busy machine starts Python slowly
            while time.monotonic() < deadline:
                with w.lock:
                    if w.usable():
                        break
                time.sleep(0.01)
            before = pool.fallbacks + pool.stolen
            assert pool.verify_many(jobs) == want, script
            # its share was verified here: after the failure, or before it answered
            assert pool.fallbacks + pool.stolen > before, script
            with w.lock:
                assert not w.usable()  # given up, or still owing its answer
    finally:
        pool.close()


def test_a_late_worker_s_share_is_verified_here_and_its_answer_dropped() -> None:
    jobs, want = _jobs()
    pool = SignaturePool(1, min_batch=1, timeout=30)
    slow = (
        "import sys, time; import node.sigpool as s; ref = s.verify_jobs; "
        "s.verify_jobs = lambda j: (time.sleep(1.5), ref(j))[1]; "
        "s.worker_main(sys.stdin.buffer, sys.stdout.buffer)"
    )
    try:
        w = pool._workers[0]
        w.proc = subprocess.Popen(
            [sys.executable, "-c", slow],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            bufsize=0,
            env={**os.environ, "PYTHONPATH": sigpool._source_root()},
        )
        assert pool.wait_ready()
        t = time.monotonic()
        assert pool.verify_many(jobs) == want
        assert time.monotonic() - t < 1.5  # not waiting for the worker
        assert pool.stolen >= 1 and pool.fallbacks == 0 and 0 < w.owes <= len(jobs)
        assert pool.verify_many(jobs) == want and pool.batches == 1  # still owing: not used
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with w.lock:
                if w.usable():
                    break
            time.sleep(0.05)
        assert w.owes == 0 and w.proc is not None  # the late answer was read and dropped
    finally:
        pool.close()


def _forged(token: str) -> str:
    h, p, s = token.split(".")
    return f"{h}.{p}.{s[:-2]}{'AA' if s[-2:] != 'AA' else 'BA'}"


def _tampered(token: str, **claims: object) -> str:
    h, p, s = token.split(".")
    body = json.loads(base64.urlsafe_b64decode(p + "=" * (-len(p) % 4)))
    body.update(claims)
    p2 = base64.urlsafe_b64encode(json.dumps(body).encode()).rstrip(b"=").decode()
    return f"{h}.{p2}.{s}"


def test_a_cold_batch_through_the_pool_answers_each_item_as_one_by_one(
    make_node: NodeFactory, consents: Consents, small_world: Path
) -> None:
    codes = world_codes(small_world)[100:140]
    items = [(x, consents.token(x)) for x in codes]
    revoked = consents.token(codes[5])
    consents.revoke(codes[5], revoked)
    items[1] = (codes[1], _forged(items[1][1]))
    items[2] = (codes[2], _tampered(items[2][1], exp=2_000_000_000))
    items[3] = (codes[3], _tampered(items[3][1], sub=codes[4]))
    items[4] = (codes[4], items[6][1])  # another enterprise's (valid) token
    items[5] = (codes[5], revoked)
    items[7] = (codes[7], consents.token(codes[7], bank=OTHER_BANK))
    items[8] = (codes[8], "not-a-token")
    items[9] = (codes[9], "a.b.c")
    items[10] = (codes[10], items[10][1].replace(".", "..", 1))
    pool = SignaturePool(1, min_batch=2)
    try:
        assert pool.wait_ready()
        pooled, plain = make_node("tax", signatures=pool), make_node("tax")
        answers = []
        for node in (pooled, plain):
            with node.client() as c:
                answers.append(c.get_features(items, **node.coordinator_kw()))
        assert pool.batches == 1 and pool.fallbacks == 0
    finally:
        pool.close()
    got, ref = ([(r.error.reason if r.error else "ok", r.values) for r in a] for a in answers)
    assert got == ref
    reasons = [g[0] for g in got]
    assert reasons[:11] == [
        "ok",
        "CONSENT_BAD_SIGNATURE",
        "CONSENT_BAD_SIGNATURE",
        "CONSENT_BAD_SIGNATURE",
        "CONSENT_ENTERPRISE_MISMATCH",
        "CONSENT_REVOKED",
        "ok",
        "CONSENT_HOLDER_MISMATCH",
        "CONSENT_TOKEN_MALFORMED",
        "CONSENT_TOKEN_MALFORMED",
        "CONSENT_TOKEN_MALFORMED",
    ]
    assert reasons[11:] == ["ok"] * (len(items) - 11)
    assert pooled.entries() == plain.entries() == reasons.count("ok")
    # Refused tokens were not remembered as checked; the good ones were, once.
    checked = pooled.servicer.verifier._checked
    assert {t for _, t in items if t in checked} == {
        t for (_, t), r in zip(items, reasons, strict=True) if r != "CONSENT_BAD_SIGNATURE"
    } - {"not-a-token", "a.b.c", items[10][1]}


def test_precheck_leaves_everything_to_verify_when_the_batch_check_fails(
    make_node: NodeFactory, consents: Consents, small_world: Path
) -> None:
    node = make_node("tax")
    codes = world_codes(small_world)[150:154]
    tokens = [consents.token(x) for x in codes]
    v = node.servicer.verifier

    def broken(jobs: object) -> list[bool]:
        raise RuntimeError("worker gone")

    assert v.precheck(tokens, broken) == 0
    assert v.precheck(tokens, lambda jobs: [[True] * (len(jobs) + 1)]) == 0  # too many answers
    assert v.precheck(tokens, lambda jobs: [[False] * len(jobs)]) == 0
    assert v.precheck(tokens, lambda jobs: [[True], 7]) == 1  # garbled after a good chunk:
    assert tokens[0] in v._checked  # the chunk answered before it still counts
    assert not any(t in v._checked for t in tokens[1:])
    assert v.precheck(tokens, lambda jobs: [verify_jobs(jobs[:2])]) == 2  # the rest: left
    assert v.precheck(tokens, lambda jobs: iter([verify_jobs(jobs)])) == 1
    assert all(t in v._checked for t in tokens)
    assert v.precheck(tokens, broken) == 0  # nothing left to check
    with node.client() as c:
        res = c.get_features(list(zip(codes, tokens, strict=True)), **node.coordinator_kw())
    assert all(r.error is None for r in res)


def test_a_commit_that_fails_after_the_answer_is_built_refuses_it(
    make_node: NodeFactory, consents: Consents, small_world: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    node = make_node("tax")
    code = world_codes(small_world)[60]
    tok = consents.token(code)

    def fail(*args: object) -> None:
        raise OSError("disk gone")

    monkeypatch.setattr(node.log.store, "append_batch", fail)
    with node.client() as c, pytest.raises(FedcreditError) as exc:
        c.get_features([(code, tok)], **node.coordinator_kw())
    assert (exc.value.code.name, exc.value.reason) == ("UNAVAILABLE", "DISCLOSURE_LOG_UNAVAILABLE")
    assert node.entries() == 0


def test_verify_workers_setting() -> None:
    assert NodeSettings().signature_workers() == sigpool.default_workers()
    assert NodeSettings(verify_workers=0).signature_workers() == 0
    assert NodeSettings(verify_workers=3).signature_workers() == 3
    with pytest.raises(ConfigError):
        NodeSettings(verify_workers=-2)


def test_workers_start_with_the_first_batch_that_needs_them() -> None:
    jobs, want = _jobs()
    pool = SignaturePool(1, min_batch=10)
    try:
        assert pool._workers[0].proc is None  # nothing runs before a batch needs it
        assert pool.verify_many(jobs[:5]) == want[:5]  # too small: in the calling thread
        assert pool._workers[0].proc is None
        assert pool.verify_many(jobs) == want  # starts the worker, verifies here meanwhile
        assert pool._workers[0].proc is not None and pool.batches == 0
        assert pool.wait_ready()
        assert pool.verify_many(jobs) == want and pool.batches == 1
    finally:
        pool.close()

"""A status list nobody changes must stay fresh under a running remote verifier.

Short settings (ttl 1 s, lifetime 3 s) and real sleeps of a few seconds: the
verifier must keep verifying past the first list's ``exp`` while the service is
reachable (heartbeats and polls bring the list re-signed with a later ``exp``),
reopen a broken push stream, and still fail closed once the service is gone.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from fedcredit.consent import errors as E
from fedcredit.consent.service import stop
from tests.conftest import Pki
from tests.consent.conftest import BANK, enterprise_code
from tests.consent.test_service import Service, bank_args, start, terms

TTL, LIFETIME = 1, 3


def _token(service: Service, n: int) -> tuple[str, str, str]:
    ent = enterprise_code(n)
    g = service.client(ent, "enterprise").grant(terms(ent))
    return ent, g.consent_id, service.client(BANK).token(g.consent_id).token or ""


def test_an_unchanged_list_never_expires_under_pushed_or_polling_verifiers(
    pki: Pki, tmp_path: Path
) -> None:
    service, server = start(pki, tmp_path, status_ttl_s=TTL, status_lifetime_s=LIFETIME)
    ent, _, tok = _token(service, 21)
    args = bank_args(pki, ent)
    pushed = service.verifier(status_ttl=TTL)  # fed by the stream's heartbeats
    polled = service.verifier(subscribe=False, status_ttl=TTL)  # refetches at ttl
    try:
        assert pushed.wait_connected(5)
        first_exp = 0
        deadline = time.monotonic() + LIFETIME + 1.5
        while time.monotonic() < deadline:
            for v in (pushed, polled):
                v.verify(tok, **args)  # type: ignore[arg-type]
                first_exp = first_exp or v.status.exp
            time.sleep(0.25)
        now = time.time()
        assert now > first_exp, "the test must outlive the first list's exp"
        for v in (pushed, polled):
            # A re-signed list (same seq, later exp) was adopted.
            assert v.status.exp > max(first_exp, now), (v.status.exp, first_exp, now)
        assert pushed.reconnects == 0
    finally:
        pushed.close()
        polled.close()
        stop(server, service.authority)  # type: ignore[arg-type]


def test_a_broken_stream_is_reopened_and_pushes_again_and_an_unreachable_service_fails_closed(
    pki: Pki, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="fedcredit.consent.remote")
    service, server = start(pki, tmp_path, status_ttl_s=TTL, status_lifetime_s=LIFETIME)
    ent, cid, tok = _token(service, 22)
    args = bank_args(pki, ent)
    # Long ttl: only the push stream can bring news in time.
    v = service.verifier(status_ttl=300)
    try:
        assert v.wait_connected(5)
        v.verify(tok, **args)  # type: ignore[arg-type]
        # The service goes away: the stream breaks, reconnects are attempted with back-off.
        stop(server, service.authority)  # type: ignore[arg-type]
        service.authority.store.close()
        time.sleep(0.6)
        assert not v.connected.is_set()
        # A new process of the service on the same address and database.
        again, server2 = start(
            pki, tmp_path, service.address, status_ttl_s=TTL, status_lifetime_s=LIFETIME
        )
        assert again.address == service.address
        try:
            assert v.wait_connected(6), "the status stream was not reopened"
            assert v.reconnects >= 1
            msgs = [r.getMessage() for r in caplog.records]
            assert any("broke" in m or "ended" in m for m in msgs), msgs
            assert any("re-established" in m for m in msgs), msgs
            # Pushes flow again: a revocation is refused within a second.
            t0 = time.perf_counter()
            again.client(ent, "enterprise").revoke(cid)
            with pytest.raises(E.ConsentRevoked):
                while True:
                    v.verify(tok, **args)  # type: ignore[arg-type]
                    assert time.perf_counter() - t0 < 1.0, "revocation not refused within 1 s"
                    time.sleep(0.005)
            ent2, _, tok2 = _token(again, 23)
            args2 = bank_args(pki, ent2)
            v.verify(tok2, **args2)  # type: ignore[arg-type]
        finally:
            stop(server2, again.authority)  # type: ignore[arg-type]  # type: ignore[arg-type]
            again.authority.store.close()
        # Unreachable past the list's exp: fail closed, never guess.
        exp = v.status.exp
        time.sleep(max(0.0, exp - time.time()) + 0.3)
        with pytest.raises(E.StatusUnavailable) as info:
            v.verify(tok2, **args2)  # type: ignore[arg-type]
        assert info.value.reason == "CONSENT_STATUS_UNAVAILABLE"
    finally:
        v.close()


def test_a_silent_stream_is_cancelled_and_reopened(pki: Pki, tmp_path: Path) -> None:
    # The service heartbeats every min(10, ttl/2) s = 10 s here; a verifier that
    # tolerates only 0.3 s of silence must reopen the stream by itself.
    svc, server = start(pki, tmp_path)
    v = svc.verifier(stall_s=0.3)
    try:
        assert v.wait_connected(5)
        deadline = time.monotonic() + 3
        while v.reconnects == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert v.reconnects >= 1
        assert v.wait_connected(3)
    finally:
        v.close()
        stop(server, svc.authority)  # type: ignore[arg-type]

"""ConsentService over real gRPC with mTLS on loopback, and the remote verifier it feeds."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fedcredit.common.errors import FedcreditError, RoleNotAllowed
from fedcredit.common.tls import TlsFiles
from fedcredit.consent import errors as E
from fedcredit.consent.authority import ConsentAuthority
from fedcredit.consent.client import ConsentClient
from fedcredit.consent.service import serve, stop
from fedcredit.consent.settings import ConsentSettings
from fedcredit.consent.statuslist import b64url, b64url_decode
from fedcredit.consent.store import ConsentStore
from fedcredit.consent.terms import ConsentTerms
from fedcredit.consent.verify import RemoteVerifier, remote_verifier
from tests.conftest import Pki
from tests.consent.conftest import BANK, OTHER_BANK, enterprise_code

SERVER_ORG = "consent-service"


@dataclass
class Service:
    address: str
    authority: ConsentAuthority
    pki: Pki
    issuer: str

    def client(self, org: str, role: str | None = None) -> ConsentClient:
        tls = self.pki.tls(org) if role is None else self.pki.issue(org, role)
        return ConsentClient(self.address, tls, server_org=SERVER_ORG)

    def verifier(self, org: str = "dept-courts", **kw: object) -> RemoteVerifier:
        v = remote_verifier(
            consent_address=self.address,
            tls=self.pki.tls(org),
            server_org=SERVER_ORG,
            issuer=self.issuer,
            **kw,
        )
        assert isinstance(v, RemoteVerifier)
        return v


def start(
    pki: Pki, tmp_path: Path, address: str = "127.0.0.1:0", **settings: object
) -> tuple[Service, object]:
    s = ConsentSettings(**settings)  # type: ignore[arg-type]
    store = ConsentStore(f"sqlite:///{tmp_path}/consent.sqlite")
    bank_certs = {b: pki.tls(b).identity().cert_sha256 for b in (BANK, OTHER_BANK)}
    authority = ConsentAuthority(store, s, banks=[BANK, OTHER_BANK], bank_certs=bank_certs.get)
    server, port = serve(authority, address=address, tls=pki.tls(SERVER_ORG))
    return Service(f"127.0.0.1:{port}", authority, pki, s.issuer), server


@pytest.fixture
def svc(pki: Pki, tmp_path: Path) -> Iterator[Service]:
    service, server = start(pki, tmp_path)
    yield service
    stop(server, service.authority)  # type: ignore[arg-type]


def terms(ent: str, **kw: object) -> ConsentTerms:
    base: dict[str, object] = {
        "enterprise": ent,
        "bank": BANK,
        "purpose": "credit_assessment",
        "scope": ["judicial"],
        "validity_days": 30,
        "max_uses": 3,
        "retention_days": 30,
    }
    base.update(kw)
    return ConsentTerms(**base)  # type: ignore[arg-type]


def bank_args(pki: Pki, ent: str, bank: str = BANK) -> dict[str, object]:
    return {
        "bank_org": bank,
        "bank_cert_sha256": pki.tls(bank).identity().cert_sha256,
        "enterprise": ent,
        "purposes": ["credit_assessment"],
    }


def test_request_approve_and_the_token_is_bound_to_the_banks_certificate(svc: Service) -> None:
    ent = enterprise_code(11)
    bank, me = svc.client(BANK), svc.client(ent, "enterprise")
    req = bank.request(terms(ent))
    assert req.state == "PENDING"
    assert [c.consent_id for c in me.list(states=["PENDING"])] == [req.consent_id]
    me.approve(req.consent_id)
    tok = bank.token(req.consent_id)
    assert tok.token and tok.state == "ACTIVE"
    claims = __import__("json").loads(b64url_decode(tok.token.split(".")[1]))
    assert claims["cnf"]["x5t#S256"] == b64url(svc.pki.tls(BANK).identity().cert_sha256)
    assert claims["aud"] == BANK and claims["sub"] == ent
    v = svc.verifier()
    try:
        got = v.verify(
            tok.token,
            **bank_args(svc.pki, ent),  # type: ignore[arg-type]
            category="judicial",
            node="dept-courts",
        )
        assert got.consent_id == req.consent_id
    finally:
        v.close()


def test_nobody_can_act_for_another_over_grpc(svc: Service) -> None:
    a, b = enterprise_code(12), enterprise_code(13)
    ea, eb = svc.client(a, "enterprise"), svc.client(b, "enterprise")
    g = ea.grant(terms(a))
    # Another party's consent is answered exactly like one that does not exist (finding 7):
    # same reason, same message shape, nobody named.
    with pytest.raises(E.ConsentNotFound) as info:
        eb.revoke(g.consent_id)
    with pytest.raises(E.ConsentNotFound) as missing:
        eb.revoke("c_doesnotexist0000")
    assert info.value.message == missing.value.message.replace("c_doesnotexist0000", g.consent_id)
    assert a not in info.value.message and a not in str(info.value.metadata)
    with pytest.raises(E.NotYourConsent):
        eb.grant(terms(a))  # B granting in A's name
    with pytest.raises(E.ConsentNotFound) as info:
        svc.client(OTHER_BANK).token(g.consent_id)
    assert BANK not in info.value.message and a not in info.value.message
    with pytest.raises(E.NotYourConsent):
        svc.client(OTHER_BANK).request(terms(a))  # bank-ccb asking on behalf of bank-icbc
    with pytest.raises(RoleNotAllowed):
        svc.client(BANK).approve(g.consent_id)  # a bank approving
    with pytest.raises(RoleNotAllowed):
        svc.client("dept-courts").list()
    with pytest.raises(RoleNotAllowed):
        svc.client(BANK).rotate_keys()
    assert ea.get(g.consent_id).state == "ACTIVE"
    assert eb.list() == []


def test_revocation_is_refused_by_a_subscribed_verifier_within_a_second(svc: Service) -> None:
    ent = enterprise_code(14)
    me, bank = svc.client(ent, "enterprise"), svc.client(BANK)
    g = me.grant(terms(ent))
    tok = bank.token(g.consent_id).token or ""
    v = svc.verifier(status_ttl=300)  # only the push can make it notice in time
    try:
        assert v.wait_connected(5)
        args = bank_args(svc.pki, ent)
        v.verify(tok, **args)  # type: ignore[arg-type]
        fetches = v.status.fetches
        t0 = time.perf_counter()
        me.revoke(g.consent_id)
        while True:
            try:
                v.verify(tok, **args)  # type: ignore[arg-type]
            except E.ConsentRevoked:
                break
            assert time.perf_counter() - t0 < 1.0, "revocation not refused within 1 s"
            time.sleep(0.002)
        assert v.status.fetches == fetches  # it came by push, not by polling
        me2 = me.grant(terms(ent))
        tok2 = bank.token(me2.consent_id).token or ""
        me.pause(me2.consent_id)
        deadline = time.perf_counter() + 1.0
        while time.perf_counter() < deadline:
            try:
                v.verify(tok2, **args)  # type: ignore[arg-type]
            except E.ConsentSuspended:
                break
            time.sleep(0.002)
        else:
            pytest.fail("pause not seen within 1 s")
    finally:
        v.close()


def test_uses_are_counted_at_the_service(svc: Service) -> None:
    ent = enterprise_code(15)
    g = svc.client(ent, "enterprise").grant(terms(ent, max_uses=2))
    tok = svc.client(BANK).token(g.consent_id).token or ""
    coord = svc.verifier("coordinator")
    node = svc.verifier("dept-courts")
    try:
        args = bank_args(svc.pki, ent)
        assert coord.verify(tok, **args, count_use=True).uses == 1  # type: ignore[arg-type]
        node.verify(tok, **args)  # type: ignore[arg-type]  # nodes check, do not count
        assert coord.verify(tok, **args, count_use=True).uses == 2  # type: ignore[arg-type]
        with pytest.raises(E.UsesExhausted):
            coord.verify(tok, **args, count_use=True)  # type: ignore[arg-type]
        assert svc.client(ent, "enterprise").get(g.consent_id).uses == 2
    finally:
        coord.close()
        node.close()


def test_record_uses_over_grpc_and_the_coordinators_batch_counter(svc: Service) -> None:
    ent = enterprise_code(17)
    owner = svc.client(ent, "enterprise")
    grants = [owner.grant(terms(ent, max_uses=1)) for _ in range(3)]
    jtis = [svc.client(BANK).token(g.consent_id).jti or "" for g in grants]
    owner.revoke(grants[2].consent_id)
    coord = svc.client("coordinator")
    res = coord.record_uses([jtis[0], jtis[1], jtis[1], jtis[2], "no-such-jti"])
    assert res[:2] == [1, 1]
    assert [r.reason for r in res[2:]] == [  # type: ignore[union-attr]
        "CONSENT_USES_EXHAUSTED", "CONSENT_REVOKED", "CONSENT_NOT_FOUND",
    ]  # fmt: skip
    assert isinstance(res[2], E.UsesExhausted) and isinstance(res[3], E.ConsentRevoked)
    # A bank counts only its own; an enterprise not at all.
    # (another bank's token: NOT_FOUND, as if it did not exist; nobody named)
    theirs = svc.client(OTHER_BANK).record_uses([jtis[0]])[0]
    assert isinstance(theirs, E.ConsentNotFound) and BANK not in theirs.message
    with pytest.raises(FedcreditError) as exc:
        owner.record_uses([jtis[0]])
    assert exc.value.reason == "ROLE_NOT_ALLOWED"
    with pytest.raises(FedcreditError) as exc:
        coord.record_uses(["x"] * 1001)
    assert exc.value.reason == "BATCH_TOO_LARGE"
    # The verifier's counter batches the same way (one call per chunk).
    g = owner.grant(terms(ent, max_uses=2))
    jti = svc.client(BANK).token(g.consent_id).jti or ""
    v = svc.verifier("coordinator")
    try:
        counted = v.counter.use_many([(jti, 2, 0)] * 3)  # type: ignore[attr-defined]
        assert counted[:2] == [1, 2] and isinstance(counted[2], E.UsesExhausted)
    finally:
        v.close()
    assert owner.get(g.consent_id).uses == 2


def test_key_rotation_reaches_verifiers(svc: Service) -> None:
    ent = enterprise_code(16)
    op = svc.client("operator")
    v = svc.verifier(min_refresh_interval=0.0)
    try:
        g1 = svc.client(ent, "enterprise").grant(terms(ent))
        tok1 = svc.client(BANK).token(g1.consent_id).token or ""
        v.verify(tok1, **bank_args(svc.pki, ent))  # type: ignore[arg-type]  # caches the JWKS
        rotated = op.rotate_keys(immediate=True)
        assert rotated.kid in {k["kid"] for k in op.jwks()["keys"]}
        g2 = svc.client(ent, "enterprise").grant(terms(ent))
        tok2 = svc.client(BANK).token(g2.consent_id).token or ""
        header = __import__("json").loads(b64url_decode(tok2.split(".")[0]))
        assert header["kid"] == rotated.kid
        # Unknown kid: one refresh fetches the new key; the old key still verifies old tokens.
        v.verify(tok2, **bank_args(svc.pki, ent))  # type: ignore[arg-type]
        v.verify(tok1, **bank_args(svc.pki, ent))  # type: ignore[arg-type]
        # A scheduled rotation publishes first and signs later.
        planned = op.rotate_keys()
        assert (
            planned.activate_at >= int(time.time()) + svc.authority.settings.key_publish_lead_s - 1
        )
        assert planned.kid in {k["kid"] for k in op.jwks()["keys"]}
        assert svc.authority.signer().kid == rotated.kid
    finally:
        v.close()


def test_verifier_keeps_last_good_keys_and_fails_closed_when_status_is_stale(
    pki: Pki, tmp_path: Path
) -> None:
    service, server = start(pki, tmp_path, status_ttl_s=1, status_lifetime_s=2)
    ent = enterprise_code(17)
    g = service.client(ent, "enterprise").grant(terms(ent))
    tok = service.client(BANK).token(g.consent_id).token or ""
    v = service.verifier(subscribe=False, jwks_ttl=0.5, status_ttl=0.5)
    try:
        v.verify(tok, **bank_args(pki, ent))  # type: ignore[arg-type]
        stop(server, service.authority)  # type: ignore[arg-type]
        time.sleep(0.7)
        # JWKS and status refetches fail: the last good ones are used while valid.
        v.verify(tok, **bank_args(pki, ent))  # type: ignore[arg-type]
        time.sleep(2.0)
        with pytest.raises(E.StatusUnavailable):
            v.verify(tok, **bank_args(pki, ent))  # type: ignore[arg-type]
    finally:
        v.close()


def test_a_client_of_another_ca_is_refused(svc: Service, tmp_path: Path) -> None:
    from fedcredit.common import pki as pki_mod

    rogue: TlsFiles = pki_mod.init_pki(tmp_path / "rogue", [(BANK, "bank")])[BANK]
    # Trust the real server CA but present a certificate from another CA.
    mixed = TlsFiles(ca=svc.pki.tls(BANK).ca, cert=rogue.cert, key=rogue.key)
    c = ConsentClient(svc.address, mixed, server_org=SERVER_ORG, timeout=3)
    with pytest.raises(Exception) as info:
        c.list()
    assert getattr(info.value, "reason", "") in ("UNAVAILABLE", "UNAUTHENTICATED")

"""The attack matrix, live (issue 14): a real consent service, real department nodes and a
real coordinator, all over mTLS gRPC on loopback, each verifying through the consent
service (pushed status and keys, uses reserved there). Every class of attack the issue
names is thrown at BOTH a node (a bank's direct fetch) and the coordinator (Score), and
each must be refused with its documented reason (asserted from the ErrorInfo that crossed
the wire), never INTERNAL or UNKNOWN, without a traceback logged; in a batch (GetFeatures,
ScoreBatch) a bad item fails only itself.

Classes: forged tokens (unknown key, genuine kid with another key, alg none, HMAC with
the public key), malleable encodings, malformed headers and payloads (deep nesting,
non-UTF-8, wrong member types), a request whose bytes are not UTF-8, exp - iat over the
purpose's cap, uses beyond max_uses (also re-signed with max_uses raised by a leaked key),
a use record matched with the wrong sub or aud, a token presented for another enterprise
or by another bank, revoked and paused consents, a leaked key after `rotate --compromised`
(also with iat back-dated), and watcher flooding at the consent service."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedcredit.common.departments import BY_ID, DEFAULT_BANKS
from fedcredit.common.errors import FedcreditError, from_rpc_error
from fedcredit.common.wire import item_exception
from fedcredit.consent.authority import ConsentAuthority
from fedcredit.consent.client import ConsentClient
from fedcredit.consent.keys import thumbprint
from fedcredit.consent.service import serve, stop
from fedcredit.consent.settings import ConsentSettings
from fedcredit.consent.statuslist import b64url, b64url_decode
from fedcredit.consent.store import ConsentStore
from fedcredit.coordinator.client import CoordinatorClient
from fedcredit.node.catalog import BY_NAME
from fedcredit.node.client import NodeClient, build_request
from fedcredit.v1 import coordinator_pb2, feature_pb2
from tests.consent.malformed import malformed, malleated
from tests.coordinator.conftest import (
    BANK,
    OTHER_BANK,
    City,
    ConsentEnv,
    Coord,
    OffsetClock,
    RunningNode,
    node_factory,
    start_coordinator,
    start_nodes,
    stop_coordinator,
)

# Status streams one certificate may hold at this consent service (the flood's limit).
WATCH_CAP = 4
NEVER = ("INTERNAL", "UNKNOWN")


@dataclass
class Live:
    pki: Any
    city: City
    env: ConsentEnv
    nodes: list[RunningNode]
    coord: Coord
    next_code: int = 100
    cases_built: int = field(default=0)

    @property
    def authority(self) -> ConsentAuthority:
        return self.env.authority

    @property
    def node(self) -> RunningNode:
        return self.nodes[0]

    def code(self) -> str:
        """An enterprise not used by any other case (a batch names an enterprise once)."""
        self.next_code += 1
        return self.city.codes[self.next_code]

    def node_features(self) -> list[str]:
        return [
            f
            for f in self.city.features
            if BY_ID[BY_NAME[f].department].category == self.node.category
        ]

    def verifiers(self) -> list[Any]:
        # The coordinator's verifier is the one it was built with (start_coordinator).
        return [n.verifier for n in self.nodes] + [self.coord.server._args[2]]

    def wait_pushed(self) -> None:
        """Until every verifier holds the authority's latest status list (pushed)."""
        seq = self.authority.status.seq
        deadline = time.monotonic() + 20
        while any(v.status.seq < seq for v in self.verifiers()):
            assert time.monotonic() < deadline, "status change not pushed within 20 s"
            time.sleep(0.02)


@pytest.fixture(scope="module")
def live(pki: Any, city: City, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    d: Path = tmp_path_factory.mktemp("attack-live")
    banks = {b: pki.tls(b).identity() for b in DEFAULT_BANKS}
    clock = OffsetClock()
    authority = ConsentAuthority(
        ConsentStore(f"sqlite:///{d / 'consent.sqlite'}"),
        ConsentSettings(),
        banks=list(DEFAULT_BANKS),
        bank_certs=lambda b: banks[b].cert_sha256 if b in banks else None,
        clock=clock,
    )
    server, port = serve(
        authority, address="127.0.0.1:0", tls=pki.tls("consent-service"),
        watchers_per_identity=WATCH_CAP,
    )  # fmt: skip
    env = ConsentEnv(authority, f"127.0.0.1:{port}", clock, server, banks)
    nodes = start_nodes(pki, env, city, d)
    for n in nodes:
        assert n.verifier.wait_connected(10)
    coord = start_coordinator(
        pki=pki, consent_env=env, city=city, tmp=d, nodes=node_factory(pki, nodes)
    )
    yield Live(pki, city, env, nodes, coord)
    stop_coordinator(coord)
    for n in nodes:
        n.close()
    stop(server, authority)
    authority.store.close()


# ------------------------------------------------------------------- the cases


@dataclass
class Case:
    name: str
    enterprise: str
    token: str
    reason: str
    bank: str = BANK
    meta: dict[str, str] = field(default_factory=dict)


def _jws(header: dict[str, Any], claims: dict[str, Any], key: Ed25519PrivateKey) -> str:
    h = b64url(json.dumps(header).encode())
    p = b64url(json.dumps(claims).encode())
    return f"{h}.{p}.{b64url(key.sign(f'{h}.{p}'.encode()))}"


def _parts(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    h, p, _ = token.split(".")
    return json.loads(b64url_decode(h)), json.loads(b64url_decode(p))


class Target:
    """What one target (a node, or the coordinator) is attacked with and how."""

    name = ""
    purpose = ""
    scope: tuple[str, ...] = ()

    def __init__(self, live: Live) -> None:
        self.live = live

    def grant(self, ent: str, max_uses: int = 5, bank: str = BANK) -> tuple[str, str]:
        return self.live.env.grant(
            ent, bank=bank, purpose=self.purpose, scope=self.scope, max_uses=max_uses
        )

    def ask(self, items: list[tuple[str, str]], bank: str = BANK) -> list[FedcreditError | None]:
        raise NotImplementedError


class NodeTarget(Target):
    name = "node"
    purpose = "model_training"

    def __init__(self, live: Live) -> None:
        super().__init__(live)
        self.scope = (live.node.category,)
        self.rounds = 0

    def ask(self, items: list[tuple[str, str]], bank: str = BANK) -> list[FedcreditError | None]:
        node = self.live.node
        self.rounds += 1  # one training fetch round: one use id
        with NodeClient(node.address, self.live.pki.tls(bank), server_org=node.org_id) as c:
            res = c.get_features(
                items, self.live.node_features(), purpose=self.purpose,
                request_id=f"round-{self.rounds}-{time.monotonic_ns()}",
            )  # fmt: skip
        return [r.error if r.error else None for r in res]  # type: ignore[misc]


class CoordTarget(Target):
    name = "coordinator"
    purpose = "credit_assessment"
    scope = ("score_only",)

    def ask(self, items: list[tuple[str, str]], bank: str = BANK) -> list[FedcreditError | None]:
        out: list[FedcreditError | None] = []
        with CoordinatorClient(self.live.coord.target, self.live.pki.tls(bank), timeout=30) as c:
            if len(items) == 1:
                try:
                    c.score(*items[0])
                    return [None]
                except FedcreditError as exc:
                    return [exc]
            rid = [f"i{k}" for k in range(len(items))]
            got = {
                r.request_id: r
                for r in c.score_batch([(e, t, r) for (e, t), r in zip(items, rid, strict=True)])
            }
        for r in rid:
            item = got[r]
            out.append(None if item.HasField("result") else item_exception(item.error))
        return out


def _forgeries(t: Target, key: Ed25519PrivateKey) -> list[Case]:
    """Forged tokens, each over a genuine consent of its own enterprise."""
    live = t.live
    rogue = Ed25519PrivateKey.generate()
    pub = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    cap_days = live.authority.settings.caps[t.purpose].max_validity_days

    def rogue_kid(h: dict[str, Any], c: dict[str, Any], tok: str) -> str:
        return _jws(dict(h, kid=thumbprint(rogue.public_key())), c, rogue)

    def alg_none(h: dict[str, Any], c: dict[str, Any], tok: str) -> str:
        return f"{b64url(json.dumps(dict(h, alg='none')).encode())}.{tok.split('.')[1]}."

    def hs256(h: dict[str, Any], c: dict[str, Any], tok: str) -> str:
        hs, p = b64url(json.dumps(dict(h, alg="HS256")).encode()), tok.split(".")[1]
        return f"{hs}.{p}.{b64url(hmac.new(pub, f'{hs}.{p}'.encode(), hashlib.sha256).digest())}"

    def changed(h: dict[str, Any], c: dict[str, Any], tok: str) -> str:
        hh, _, sig = tok.split(".")
        return f"{hh}.{b64url(json.dumps(dict(c, exp=c['exp'] + 86400)).encode())}.{sig}"

    forms: list[tuple[str, Callable[[dict[str, Any], dict[str, Any], str], str], str]] = [
        ("rogue_key", rogue_kid, "CONSENT_KEY_UNKNOWN"),
        ("genuine_kid_other_key", lambda h, c, _: _jws(h, c, rogue), "CONSENT_BAD_SIGNATURE"),
        ("alg_none", alg_none, "CONSENT_TOKEN_UNSIGNED"),
        ("hs256_with_public_key", hs256, "CONSENT_ALG_NOT_ALLOWED"),
        ("payload_changed_after_signing", changed, "CONSENT_BAD_SIGNATURE"),
        ("exp_minus_iat_over_cap", lambda h, c, _: _jws(h, dict(c, exp=c["iat"] + (cap_days + 1) * 86400), key), "CONSENT_LIFETIME_EXCEEDS_CAP"),
        ("exp_10_pow_30", lambda h, c, _: _jws(h, dict(c, exp=10**30), key), "CONSENT_LIFETIME_EXCEEDS_CAP"),
    ]  # fmt: skip
    out: list[Case] = []
    for name, forge, reason in forms:
        ent = live.code()
        _, token = t.grant(ent)
        h, c = _parts(token)
        out.append(Case(name, ent, forge(h, c, token), reason))
    return out


def _encodings(t: Target, key: Ed25519PrivateKey) -> list[Case]:
    _, token = t.grant(t.live.code())
    bad = {**malleated(token), **malformed(token, key)}
    return [Case(n, t.live.code(), tok, "CONSENT_TOKEN_MALFORMED") for n, tok in bad.items()]


def _uses(t: Target, key: Ed25519PrivateKey) -> list[Case]:
    """Use-count attacks; each consent's one use is spent first, through the target."""
    live = t.live
    out: list[Case] = []
    spent: list[tuple[str, str]] = []
    for _ in range(2):
        ent = live.code()
        _, token = t.grant(ent, max_uses=1)
        spent.append((ent, token))
    assert t.ask(spent) == [None, None]
    (e1, t1), (e2, t2) = spent
    out.append(Case("beyond_max_uses", e1, t1, "CONSENT_USES_EXHAUSTED", meta={"max_uses": "1"}))
    h, c = _parts(t2)
    c["authorization_details"][0]["max_uses"] = 50
    out.append(
        Case(
            "resigned_with_max_uses_raised",
            e2,
            _jws(h, c, key),
            "CONSENT_USES_EXHAUSTED",
            meta={"max_uses": "1"},
        )
    )
    # A use record is matched by jti AND sub AND aud: a leaked key's token that carries a
    # genuine consent's jti for an enterprise that never consented, or for another bank.
    e3 = live.code()
    _, t3 = t.grant(e3)
    h, c = _parts(t3)
    stranger = live.code()
    out.append(
        Case(
            "use_record_wrong_sub",
            stranger,
            _jws(h, dict(c, sub=stranger), key),
            "CONSENT_NOT_FOUND",
        )
    )
    other_x5t = b64url(live.env.bank_ids[OTHER_BANK].cert_sha256)
    wrong_aud = dict(c, aud=OTHER_BANK, cnf={"x5t#S256": other_x5t})
    out.append(
        Case(
            "use_record_wrong_aud",
            e3,
            _jws(h, wrong_aud, key),
            "CONSENT_NOT_FOUND",
            bank=OTHER_BANK,
        )
    )
    return out  # fmt: skip


def _parties_and_state(t: Target) -> list[Case]:
    live = t.live
    a = live.authority
    ent, other = live.code(), live.code()
    _, token = t.grant(ent)
    out = [
        Case("presented_for_another_enterprise", other, token, "CONSENT_ENTERPRISE_MISMATCH"),
        Case("stolen_by_another_bank", ent, token, "CONSENT_HOLDER_MISMATCH", bank=OTHER_BANK),
    ]
    for name, act, reason in (
        ("revoked", a.revoke, "CONSENT_REVOKED"),
        ("paused", a.pause, "CONSENT_SUSPENDED"),
    ):
        e = live.code()
        cid, tok = t.grant(e)
        act(live.env.enterprise(e), cid)
        out.append(Case(name, e, tok, reason))
    live.wait_pushed()
    return out


def all_cases(t: Target) -> list[Case]:
    key = t.live.authority.signer().record.private_key  # "leaked"
    return [*_forgeries(t, key), *_encodings(t, key), *_uses(t, key), *_parties_and_state(t)]


def _target(live: Live, name: str) -> Target:
    return NodeTarget(live) if name == "node" else CoordTarget(live)


def _check(case: Case, got: FedcreditError | None) -> str | None:
    """Why ``got`` is not the refusal ``case`` documents, or None."""
    if got is None:
        return f"{case.name}: answered"
    if got.reason in NEVER or got.reason != case.reason:
        return f"{case.name}: expected {case.reason}, got {got.reason}: {got}"
    if not str(got):
        return f"{case.name}: no sentence"
    for k, v in case.meta.items():
        if got.metadata.get(k) != v:
            return f"{case.name}: metadata {k}={got.metadata.get(k)!r}, expected {v!r}"
    return None


def _knows_compromised(verifier: Any, kid: str) -> bool:
    try:
        verifier.keys.lookup(kid)
    except FedcreditError as exc:
        return exc.reason == "CONSENT_KEY_COMPROMISED"
    return False


def _no_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    bad = [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert not bad, [r.getMessage() for r in bad]


# ------------------------------------------------------------------- the tests


@pytest.mark.parametrize("target", ["node", "coordinator"])
def test_every_attack_one_call_each(
    live: Live, target: str, caplog: pytest.LogCaptureFixture
) -> None:
    t = _target(live, target)
    with caplog.at_level(logging.INFO):
        cases = all_cases(t)
        problems = [
            p for case in cases if (p := _check(case, t.ask([(case.enterprise, case.token)], case.bank)[0]))
        ]  # fmt: skip
        # The target still serves a genuine token afterwards.
        ent = live.code()
        assert t.ask([(ent, t.grant(ent)[1])]) == [None]
    assert not problems, "\n".join(problems)
    _no_tracebacks(caplog)


@pytest.mark.parametrize("target", ["node", "coordinator"])
def test_a_bad_batch_item_fails_only_itself(
    live: Live, target: str, caplog: pytest.LogCaptureFixture
) -> None:
    t = _target(live, target)
    with caplog.at_level(logging.INFO):
        cases = all_cases(t)
        by_bank: dict[str, list[Case]] = {}
        for c in cases:
            by_bank.setdefault(c.bank, []).append(c)
        problems: list[str] = []
        for bank, group in by_bank.items():
            good = [(e, t.grant(e, bank=bank)[1]) for e in (live.code(), live.code())]
            items = [good[0], *((c.enterprise, c.token) for c in group), good[1]]
            got = t.ask(items, bank)
            assert got[0] is None and got[-1] is None, (bank, got[0], got[-1])
            problems += [p for c, g in zip(group, got[1:-1], strict=True) if (p := _check(c, g))]
    assert not problems, "\n".join(problems)
    _no_tracebacks(caplog)


def test_requests_that_are_not_utf8(live: Live) -> None:
    """Bytes that are not UTF-8 where a token string belongs: INVALID_ARGUMENT with its
    reason at both, never INTERNAL or UNKNOWN."""
    code, placeholder, junk = live.code(), "Q" * 40, b"\xff\xfe" * 20
    node = live.node
    raw = build_request([(code, placeholder)], live.node_features(), purpose="model_training")
    with NodeClient(node.address, live.pki.tls(BANK), server_org=node.org_id) as c:
        call = c.channel.unary_unary(
            "/fedcredit.v1.FeatureService/GetFeatures",
            request_serializer=None,
            response_deserializer=feature_pb2.GetFeaturesResponse.FromString,
        )
        with pytest.raises(grpc.RpcError) as info:
            call(raw.SerializeToString().replace(placeholder.encode(), junk), timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert from_rpc_error(info.value).reason == "REQUEST_MALFORMED"
    req = coordinator_pb2.ScoreRequest(enterprise=code, consent_token=placeholder)
    with CoordinatorClient(live.coord.target, live.pki.tls(BANK)) as cc:
        call = cc.channel.unary_unary(
            "/fedcredit.v1.ScoringService/Score",
            request_serializer=None,
            response_deserializer=coordinator_pb2.ScoreResult.FromString,
        )
        with pytest.raises(grpc.RpcError) as info:
            call(req.SerializeToString().replace(placeholder.encode(), junk), timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert from_rpc_error(info.value).reason == "REQUEST_MALFORMED"


def test_a_leaked_key_after_rotate_compromised(live: Live) -> None:
    """The operator rotates with --compromised: at both, the old key's genuine tokens and a
    forgery with iat back-dated to before the compromise are refused for the key; tokens
    re-issued under the new key are served."""
    targets = [NodeTarget(live), CoordTarget(live)]
    held: list[tuple[Target, str, str, str]] = []
    for t in targets:
        ent = live.code()
        cid, token = t.grant(ent)
        held.append((t, ent, cid, token))
    leaked = live.authority.signer().record.private_key
    old_kid = live.authority.signer().kid
    op = live.pki.issue("operator-attack", "operator")
    with ConsentClient(live.env.address, op, server_org="consent-service") as c:
        c.rotate_keys(compromised=True)
    deadline = time.monotonic() + 20
    while not all(_knows_compromised(v, old_kid) for v in live.verifiers()):
        assert time.monotonic() < deadline, "key change not pushed within 20 s"
        time.sleep(0.02)
    problems: list[str] = []
    for t, ent, cid, token in held:
        h, c = _parts(token)
        back = dict(c, iat=c["iat"] - 3600, nbf=c["nbf"] - 3600)
        for name, tok in (("old_key_genuine", token), ("old_key_backdated", _jws(h, back, leaked))):
            case = Case(f"{t.name}:{name}", ent, tok, "CONSENT_KEY_COMPROMISED")
            if p := _check(case, t.ask([(ent, tok)])[0]):
                problems.append(p)
        again = live.authority.token(live.env.bank_ids[BANK], cid).token or ""
        assert again != token and _parts(again)[0]["kid"] != old_kid
        assert t.ask([(ent, again)]) == [None], f"{t.name}: the re-issued token is refused"
    assert not problems, "\n".join(problems)


def test_watcher_flood_is_refused_by_name_and_blocks_nothing(live: Live) -> None:
    ent = live.code()
    flood = ConsentClient(
        live.env.address, live.pki.issue(ent, "enterprise"), server_org="consent-service"
    )
    streams: list[tuple[Iterator[Any], Callable[[], None]]] = []
    try:
        for _ in range(WATCH_CAP):
            items, cancel = flood.watch_status()
            next(items)
            streams.append((items, cancel))
        items, cancel = flood.watch_status()
        streams.append((items, cancel))
        with pytest.raises(FedcreditError) as info:
            next(items)
        assert info.value.reason == "TOO_MANY_WATCHERS", info.value
        # Both targets still answer, and a revocation still reaches them.
        for t in (NodeTarget(live), CoordTarget(live)):
            e = live.code()
            cid, tok = t.grant(e)
            assert t.ask([(e, tok)]) == [None]
            live.authority.revoke(live.env.enterprise(e), cid)
            live.wait_pushed()
            (got,) = t.ask([(e, tok)])
            assert (
                _check(Case(f"{t.name}:revoked_during_flood", e, tok, "CONSENT_REVOKED"), got)
                is None
            ), got
    finally:
        for _, cancel in streams:
            cancel()
        flood.close()

"""Key compromise at the coordinator over mTLS gRPC (issue 14, finding 2): after
RotateKeys(compromised) at its consent service, Score refuses the old key's genuine token
and a back-dated forgery with CONSENT_KEY_COMPROMISED within a second (pushed, not
polled), and scores the re-issued token. Its own consent service, so the session's keys
stay as they are for the other tests."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fedcredit.common.departments import DEFAULT_BANKS
from fedcredit.common.errors import FedcreditError
from fedcredit.consent.authority import ConsentAuthority
from fedcredit.consent.client import ConsentClient
from fedcredit.consent.service import serve, stop
from fedcredit.consent.settings import ConsentSettings
from fedcredit.consent.statuslist import b64url, b64url_decode
from fedcredit.consent.store import ConsentStore
from fedcredit.coordinator.client import CoordinatorClient

from .conftest import (
    BANK,
    City,
    ConsentEnv,
    Coord,
    OffsetClock,
    start_coordinator,
    stop_coordinator,
)


@pytest.fixture(scope="module")
def own_env(pki: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsentEnv]:
    d: Path = tmp_path_factory.mktemp("consent-compromise")
    banks = {b: pki.tls(b).identity() for b in DEFAULT_BANKS}
    clock = OffsetClock()
    authority = ConsentAuthority(
        ConsentStore(f"sqlite:///{d / 'consent.sqlite'}"),
        ConsentSettings(),
        banks=list(DEFAULT_BANKS),
        bank_certs=lambda b: banks[b].cert_sha256 if b in banks else None,
        clock=clock,
    )
    server, port = serve(authority, address="127.0.0.1:0", tls=pki.tls("consent-service"))
    env = ConsentEnv(authority, f"127.0.0.1:{port}", clock, server, banks)
    yield env
    stop(server, authority)
    authority.store.close()


@pytest.fixture(scope="module")
def coord(
    pki: Any, own_env: ConsentEnv, city: City, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Coord]:
    c = start_coordinator(pki=pki, consent_env=own_env, city=city, tmp=tmp_path_factory.mktemp("c"))
    yield c
    stop_coordinator(c)


def test_score_refuses_the_compromised_keys_tokens_within_a_second(
    pki: Any, coord: Coord, own_env: ConsentEnv, city: City
) -> None:
    ent = city.codes[30]
    cid, token = own_env.grant(ent)
    leaked = own_env.authority.signer().record.private_key
    h, p, _ = token.split(".")
    claims = json.loads(b64url_decode(p))
    back = dict(
        claims, iat=claims["iat"] - 3600, nbf=claims["nbf"] - 3600, exp=claims["exp"] - 3600
    )
    p2 = b64url(json.dumps(back).encode())
    backdated = f"{h}.{p2}.{b64url(leaked.sign(f'{h}.{p2}'.encode()))}"
    with CoordinatorClient(coord.target, pki.tls(BANK), timeout=20) as c:
        assert c.score(ent, token).rating in "ABCD"
        op_tls = pki.issue("operator-9", "operator")
        with ConsentClient(own_env.address, op_tls, server_org="consent-service") as op:
            t0 = time.perf_counter()
            op.rotate_keys(compromised=True)
        # Scoring while waiting would spend the consent's uses: wait out the second the
        # push is allowed, then one Score must be refused for the key.
        time.sleep(max(0.0, 1.0 - (time.perf_counter() - t0)))
        with pytest.raises(FedcreditError) as info:
            c.score(ent, token)
        assert info.value.reason == "CONSENT_KEY_COMPROMISED", info.value
        with pytest.raises(FedcreditError) as info:
            c.score(ent, backdated)
        assert info.value.reason == "CONSENT_KEY_COMPROMISED"
        again = own_env.authority.token(own_env.bank_ids[BANK], cid).token or ""
        assert again != token
        assert c.score(ent, again).rating in "ABCD"

"""Key compromise at a node over mTLS gRPC (issue 14, finding 2): once the authority
declares its key compromised, the node refuses the old key's genuine token and a
back-dated forgery with CONSENT_KEY_COMPROMISED, and serves the re-issued token. A
consent authority of its own (the ``consents`` fixture is overridden here), so the
session's keys are untouched."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedcredit.common.departments import DEFAULT_BANKS
from fedcredit.consent.authority import ConsentAuthority
from fedcredit.consent.statuslist import b64url, b64url_decode
from fedcredit.consent.store import ConsentStore
from tests.conftest import Pki
from tests.node.conftest import BANK, Consents, NodeFactory, world_codes


@pytest.fixture
def consents(tmp_path: Path, pki: Pki) -> Iterator[Consents]:
    store = ConsentStore(f"sqlite:///{tmp_path / 'consent-own.sqlite'}")

    def bank_cert(org: str) -> bytes | None:
        return pki.tls(org).identity().cert_sha256 if org in pki.files else None

    authority = ConsentAuthority(store, banks=list(DEFAULT_BANKS), bank_certs=bank_cert)
    yield Consents(authority, pki)
    store.close()


def test_the_node_refuses_everything_the_compromised_key_signed(
    make_node: NodeFactory, consents: Consents, small_world: Path
) -> None:
    node = make_node("tax")
    code = world_codes(small_world)[50]
    token = consents.token(code, max_uses=3)
    leaked = consents.authority.signer().record.private_key
    h, p, _ = token.split(".")
    c = json.loads(b64url_decode(p))
    back = dict(c, iat=c["iat"] - 3600, nbf=c["nbf"] - 3600, exp=c["exp"] - 3600, jti="back")
    p2 = b64url(json.dumps(back).encode())
    backdated = f"{h}.{p2}.{b64url(leaked.sign(f'{h}.{p2}'.encode()))}"
    with node.client() as cl:
        [ok] = cl.get_features([(code, token)], ["revenue_12m"], **node.coordinator_kw())
        assert ok.error is None
        consents.authority.rotate_keys(compromised=True)
        for t in (token, backdated):
            [r] = cl.get_features([(code, t)], ["revenue_12m"], **node.coordinator_kw())
            assert r.error is not None and r.error.reason == "CONSENT_KEY_COMPROMISED", r.error
        again = consents.authority.token(consents.bank(BANK), consents.granted[token]).token
        assert again and again != token
        [r] = cl.get_features([(code, again)], ["revenue_12m"], **node.coordinator_kw())
        assert r.error is None, r.error

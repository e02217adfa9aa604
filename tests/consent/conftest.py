"""Fixtures for the consent tests: a controllable clock, actors, an authority per engine."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from fedcredit.common import uscc
from fedcredit.common.tls import Identity
from fedcredit.consent.authority import ConsentAuthority
from fedcredit.consent.settings import ConsentSettings
from fedcredit.consent.store import ConsentStore
from fedcredit.consent.terms import ConsentTerms

BANK = "bank-icbc-weihai"
OTHER_BANK = "bank-ccb-weihai"


class FakeClock:
    """Epoch seconds that only move when a test says so."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.t = start

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


def enterprise_code(n: int) -> str:
    return uscc.generate(random.Random(1000 + n))


def bank_identity(org: str = BANK) -> Identity:
    return Identity(org_id=org, role="bank", cert_sha256=hashlib.sha256(org.encode()).digest())


def enterprise_identity(code: str) -> Identity:
    return Identity(
        org_id=code, role="enterprise", cert_sha256=hashlib.sha256(code.encode()).digest()
    )


COORDINATOR = Identity(org_id="coordinator", role="coordinator", cert_sha256=b"c" * 32)


@dataclass
class World:
    authority: ConsentAuthority
    clock: FakeClock
    ent: str
    other_ent: str

    @property
    def enterprise(self) -> Identity:
        return enterprise_identity(self.ent)

    @property
    def bank(self) -> Identity:
        return bank_identity(BANK)

    def terms(self, **kw: object) -> ConsentTerms:
        base: dict[str, object] = {
            "enterprise": self.ent,
            "bank": BANK,
            "purpose": "credit_assessment",
            "scope": ["judicial", "operations_tax"],
            "validity_days": 30,
            "max_uses": 3,
            "retention_days": 30,
        }
        base.update(kw)
        return ConsentTerms(**base)  # type: ignore[arg-type]


def make_world(url: str, **settings: object) -> World:
    clock = FakeClock()
    store = ConsentStore(url)
    bank_certs = {b: bank_identity(b).cert_sha256 for b in (BANK, OTHER_BANK)}
    authority = ConsentAuthority(
        store,
        ConsentSettings(**settings),  # type: ignore[arg-type]
        banks=[BANK, OTHER_BANK],
        bank_certs=bank_certs.get,
        clock=clock,
    )
    return World(
        authority=authority, clock=clock, ent=enterprise_code(1), other_ent=enterprise_code(2)
    )


@pytest.fixture
def world(db_url: str) -> Iterator[World]:
    w = make_world(db_url)
    yield w
    w.authority.close()
    w.authority.store.close()


@pytest.fixture
def sqlite_world(tmp_path: object) -> Iterator[World]:
    w = make_world(f"sqlite:///{tmp_path}/consent.sqlite")
    yield w
    w.authority.close()
    w.authority.store.close()

"""Marketplace fixtures: the store on both databases, a real ledger library as the sink,
a real consent authority (in-process verifier), and the MarketService over mTLS."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedcredit.common import uscc
from fedcredit.common.departments import DEFAULT_BANKS
from fedcredit.common.tls import Identity
from fedcredit.ledger.log import Log
from fedcredit.market.rules import GuaranteeView, Profile
from fedcredit.market.service import Marketplace, MarketSettings
from fedcredit.market.store import MarketStore

BANK = DEFAULT_BANKS[0]


def code(n: int) -> str:
    return uscc.generate(random.Random(7000 + n))


def bank(org: str = BANK) -> Identity:
    return Identity(org, "bank", org.encode().ljust(32, b"."))


def ent(c: str) -> Identity:
    return Identity(c, "enterprise", c.encode().ljust(32, b"."))


class Clock:
    def __init__(self) -> None:
        self.t = 1_800_000_000.0

    def __call__(self) -> float:
        return self.t


class FakeGuarantees:
    """Stands in for the coordinator's decisions (its real path is tested in tests/coordinator)."""

    def __init__(self) -> None:
        self.views: dict[str, GuaranteeView] = {}

    def get(self, enterprise: str, application_id: str, bank: str) -> GuaranteeView | None:
        g = self.views.get(application_id)
        return g if g is not None and g.enterprise == enterprise and g.bank == bank else None


@dataclass
class Env:
    market: Marketplace
    log: Log
    clock: Clock
    guarantees: FakeGuarantees


def product(pid: str = "p1", **kw: Any) -> dict[str, Any]:
    spec = {"product_id": pid, "name": "SME working capital", "grade_floor": "C",
            "amount_min": 100_000, "amount_max": 5_000_000, "term_min": 6, "term_max": 36,
            "rate_min_bp": 350, "rate_max_bp": 600, "industries": [], "regions": [],
            "fund_guaranteed": True}  # fmt: skip
    spec.update(kw)
    return spec


def make_env(url: str, tmp: Path, **settings: Any) -> Env:
    log = Log.open(
        f"sqlite:///{tmp}/ledger.sqlite",
        Ed25519PrivateKey.generate(),
        "ledger/test",
        actor="market",
    )
    clock = Clock()
    g = FakeGuarantees()
    m = Marketplace(
        MarketStore(url), log, guarantees=g, settings=MarketSettings(**settings), clock=clock
    )
    return Env(m, log, clock, g)


def seed(env: Env, n: int = 3, grade: str = "B", run: str = "run-0") -> list[str]:
    from fedcredit.market.ratings import rate_city

    codes = [code(i) for i in range(n)]
    rate_city(env.market, run, [Profile(c, "C", "huancui", 40, grade, 12_000) for c in codes])
    return codes


@pytest.fixture
def env(db_url: str, tmp_path: Path) -> Iterator[Env]:
    e = make_env(db_url, tmp_path)
    yield e
    e.market.store.close()
    e.log.close()

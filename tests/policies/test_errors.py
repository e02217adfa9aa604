"""A machine-readable reason names one error class across every service: a process that
holds several SDKs (the portal; a test run) rebuilds each error as its own service's class
(common.errors maps a reason to one class, the last one defined)."""

from __future__ import annotations

import importlib
from collections import defaultdict

from fedcredit.common.errors import FedcreditError

SERVICES = ("consent", "ledger", "node", "coordinator", "market", "policies")


def _subclasses(cls: type) -> list[type]:
    out = []
    for sub in cls.__subclasses__():
        out += [sub, *_subclasses(sub)]
    return out


def test_every_reason_names_one_class() -> None:
    for s in SERVICES:
        importlib.import_module(f"fedcredit.{s}.errors")
    by_reason: dict[str, set[str]] = defaultdict(set)
    for cls in _subclasses(FedcreditError):
        reason = cls.__dict__.get("reason")
        if reason is not None:
            by_reason[reason].add(f"{cls.__module__}.{cls.__qualname__}")
    shared = {r: sorted(c) for r, c in by_reason.items() if len(c) > 1}
    assert shared == {}

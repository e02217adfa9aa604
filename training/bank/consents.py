"""Borrowers grant their banks ``model_training`` consents (city mode, demo and tests).

Each enterprise grants over its own mTLS identity (a certificate issued into the
deployment's PKI on first use, as ``fedcredit pki issue --role enterprise`` does),
all of its grants in one ``GrantConsent`` call; enterprises run in parallel.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from fedcredit.training.bank.city import read_loan_book

if TYPE_CHECKING:
    from rich.progress import Progress

    from fedcredit.common.config import Deployment
    from fedcredit.common.tls import TlsFiles

# Within consent/policy.py's caps for model_training (365 days, 50 uses, 365 days' retention).
VALIDITY_DAYS = 365
MAX_USES = 50
RETENTION_DAYS = 30
THREADS = 16


def training_scope(dep: Deployment) -> list[str]:
    """Every category a node of the deployment serves: the model uses all of them."""
    from fedcredit.common.departments import BY_ID

    return sorted({BY_ID[n.department].category for n in dep.nodes})


def enterprise_tls(dep: Deployment, code: str) -> TlsFiles:
    from fedcredit.common import pki

    cert = dep.pki_dir / "orgs" / f"{code}.pem"
    if not cert.exists():
        try:
            pki.issue(dep.pki_dir, code, "enterprise")
        except Exception:
            if not cert.exists():  # another thread issued it meanwhile: fine
                raise
    return dep.tls(code)


def collect_training_consents(
    dep: Deployment,
    world_dir: str | Path,
    banks: Sequence[str] | None = None,
    progress: Progress | None = None,
) -> dict[str, int]:
    """Every borrower of every bank in ``banks`` (default: the deployment's) grants that bank
    a model_training consent; returns bank -> consents granted.

    ``progress``: a ``rich.progress.Progress`` (a task is added) or None.
    """
    from fedcredit.consent.client import ConsentClient
    from fedcredit.consent.terms import ConsentTerms

    world = Path(world_dir)
    chosen = list(banks) if banks is not None else list(dep.banks)
    by_enterprise: dict[str, list[str]] = {}
    for bank in chosen:
        for code in read_loan_book(world, bank):
            by_enterprise.setdefault(code, []).append(bank)
    scope = training_scope(dep)
    svc = dep.service("consent")
    counts = dict.fromkeys(chosen, 0)
    lock = threading.Lock()
    task = (
        progress.add_task("model_training consents", total=len(by_enterprise))
        if progress is not None
        else None
    )

    def grant(item: tuple[str, list[str]]) -> None:
        code, its_banks = item
        terms = [
            ConsentTerms(
                enterprise=code,
                bank=b,
                purpose="model_training",
                scope=scope,
                validity_days=VALIDITY_DAYS,
                max_uses=MAX_USES,
                retention_days=RETENTION_DAYS,
            )
            for b in its_banks
        ]
        tls = enterprise_tls(dep, code)
        with ConsentClient(svc.address, tls, server_org=svc.org_id, timeout=30.0) as cc:
            views = cc.grant_many(terms)
        with lock:
            for v in views:
                counts[v.bank] += 1
        if progress is not None and task is not None:
            progress.advance(task)

    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(grant, sorted(by_enterprise.items())))
    return counts

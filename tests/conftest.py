"""Shared fixtures: a PKI for the default organisations, and `db_url` over both engines."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from fedcredit.common import pki as pki_mod
from fedcredit.common.departments import DEFAULT_BANKS, DEPARTMENTS
from fedcredit.common.tls import TlsFiles

POSTGRES_URL = os.environ.get(
    "FEDCREDIT_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

DEFAULT_ORGS: list[tuple[str, str]] = [
    ("consent-service", "consent"),
    ("ledger", "ledger"),
    ("coordinator", "coordinator"),
    ("auditor-pboc-weihai", "auditor"),
    ("operator", "operator"),
    *[(d.org_id, "department") for d in DEPARTMENTS],
    *[(b, "bank") for b in DEFAULT_BANKS],
]


@dataclass
class Pki:
    """A development PKI made once per test session."""

    dir: Path
    files: dict[str, TlsFiles] = field(default_factory=dict)

    def tls(self, org_id: str) -> TlsFiles:
        return self.files[org_id]

    def issue(self, org_id: str, role: str) -> TlsFiles:
        if org_id not in self.files:
            self.files[org_id] = pki_mod.issue(self.dir, org_id, role)
        return self.files[org_id]


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    return Pki(dir=d, files=pki_mod.init_pki(d, DEFAULT_ORGS))


def _postgres_reachable() -> str | None:
    """None when PostgreSQL answers, else the reason it does not."""
    import sqlalchemy as sa

    try:
        eng = sa.create_engine(POSTGRES_URL, connect_args={"connect_timeout": 3})
        with eng.connect() as conn:
            conn.execute(sa.text("select 1"))
        eng.dispose()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}".splitlines()[0]
    return None


_pg_problem: list[str | None] = []


def _pg_problem_once() -> str | None:
    if not _pg_problem:
        _pg_problem.append(_postgres_reachable())
    return _pg_problem[0]


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh database URL: a SQLite file, or a private schema in the local PostgreSQL.

    In CI an unreachable PostgreSQL is a failure; elsewhere the test is skipped
    with the reason printed.
    """
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'test.sqlite'}"
        return
    problem = _pg_problem_once()
    if problem is not None:
        msg = f"PostgreSQL at {POSTGRES_URL} is unreachable: {problem}"
        if IN_CI:
            pytest.fail(msg + " (CI requires it)")
        pytest.skip(msg)
    import sqlalchemy as sa

    schema = "t_" + uuid.uuid4().hex[:16]
    admin = sa.create_engine(POSTGRES_URL)
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in POSTGRES_URL else "?"
    yield f"{POSTGRES_URL}{sep}options=-csearch_path%3D{schema}"
    with admin.begin() as conn:
        conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()

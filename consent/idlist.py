"""A list of keys (jtis) bound as ONE statement parameter, on SQLite and PostgreSQL.

``col IN (:a, :b, ...)`` with a thousand values costs SQLAlchemy a fresh rendering of the
statement on every call (an "expanding" parameter is spliced in at execution, so neither
SQLAlchemy's compiled cache nor the database's prepared-statement cache is reused) and the
driver a thousand bound values. Counting a batch of uses did that a dozen times per call
(issue 14: ~56 ms of CPU per 1,000 uses). Here the list travels as one value -- a JSON
array read by ``json_each`` on SQLite (built in since 3.38), a ``text[]`` read by
``unnest`` on PostgreSQL -- so each statement's SQL text is the same on every call and is
compiled once, and there is no limit on bound parameters to chunk around.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, String, any_, bindparam, func, select
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.sql.expression import BindParameter


def param(name: str, dialect: str) -> BindParameter[Any]:
    """The bound parameter that carries a list (see :func:`value`)."""
    if dialect == "postgresql":
        return bindparam(name, type_=ARRAY(String))
    return bindparam(name, type_=String)


def value(keys: Sequence[str], dialect: str) -> Any:
    """``keys`` as the value of :func:`param`: a list (PostgreSQL) or a JSON array (SQLite)."""
    if dialect == "postgresql":
        return list(keys)
    return json.dumps(list(keys), ensure_ascii=False, separators=(",", ":"))


def rows(name: str, dialect: str) -> Any:
    """A one-column (``value``) FROM source of the list bound as ``name``."""
    if dialect == "postgresql":
        return func.unnest(param(name, dialect)).table_valued("value").render_derived()
    return func.json_each(param(name, dialect)).table_valued("value")


def member(col: ColumnElement[Any], name: str, dialect: str) -> ColumnElement[bool]:
    """``col IN (the list bound as name)``.

    On PostgreSQL ``col = ANY(:name)``: the plan PostgreSQL makes of an ``IN (...)`` list
    anyway (an index scan visits the keys in sorted order, so concurrent batches over the
    same rows lock them in one order and cannot deadlock each other)."""
    if dialect == "postgresql":
        return col == any_(param(name, dialect))
    src = rows(name, dialect)
    return col.in_(select(src.c.value))

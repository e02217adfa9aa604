"""The node's own database: the department's raw records, nothing else.

One table per raw table of the department (``raw_<name>``, the columns of
:mod:`node.schema` plus a surrogate ``id`` that never leaves the node), a small
``node_meta`` table (department, as-of month, data version) and ``node_loads``
(an audit trail of loads). SQLite by default, PostgreSQL supported.

Monthly tables have a natural key (enterprise, period[, direction]): appending a
month that is already there is refused (:class:`node.errors.DuplicateRecord`) and the
whole append is rolled back. Every load bumps ``data_version``; the feature engine
checks it on every request, so answers reflect new data at once.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from fedcredit.common.db import make_engine
from fedcredit.common.departments import BY_ID
from fedcredit.common.errors import StoreUnavailable
from fedcredit.node.errors import (
    DuplicateRecord,
    RawDataInvalid,
    RawDataNotFound,
    UnknownDepartment,
    WrongDepartment,
)
from fedcredit.node.records import (
    Batch,
    Columns,
    RawDataError,
    batch_from_columns,
    convert,
    read_csv_text,
)
from fedcredit.node.schema import BY_DEPARTMENT, TableSpec, month_ordinal, month_text

_SQL_TYPES: dict[str, Callable[[], Any]] = {
    "str": lambda: sa.String(200),
    "int": sa.BigInteger,
    "float": sa.Float,
    "month": lambda: sa.String(7),
    "date": lambda: sa.String(10),
}
INSERT_CHUNK = 20_000
READ_CHUNK = 10_000  # codes per IN (...) query


@dataclass(frozen=True, slots=True)
class StoreState:
    department: str | None
    as_of: int | None  # month ordinal
    data_version: int

    @property
    def as_of_text(self) -> str:
        return month_text(self.as_of) if self.as_of is not None else ""


@dataclass(frozen=True, slots=True)
class LoadResult:
    department: str
    mode: str
    rows: dict[str, int]
    as_of: str
    data_version: int
    seconds: float


def natural_key(spec: TableSpec) -> tuple[str, ...] | None:
    if not spec.monthly:
        return None
    extra = [c.name for c in spec.columns if c.kind == "str" and c.name != "code"]
    return ("code", "period", *extra)


def build_metadata(department: str) -> tuple[sa.MetaData, dict[str, sa.Table]]:
    md = sa.MetaData()
    tables: dict[str, sa.Table] = {}
    for spec in BY_DEPARTMENT[department]:
        cols: list[Any] = [
            sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True)
        ]
        for c in spec.columns:
            cols.append(sa.Column(c.name, _SQL_TYPES[c.kind](), nullable=c.nullable))
        key = natural_key(spec)
        if key:
            cols.append(sa.UniqueConstraint(*key, name=f"uq_raw_{spec.name}_key"))
        else:
            cols.append(sa.Index(f"ix_raw_{spec.name}_code", "code"))
        tables[spec.name] = sa.Table(f"raw_{spec.name}", md, *cols)
    sa.Table(
        "node_meta",
        md,
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.String(200), nullable=False),
    )
    sa.Table(
        "node_loads", md,
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
        sa.Column("at", sa.Float, nullable=False), sa.Column("mode", sa.String(16), nullable=False),
        sa.Column("source", sa.String(1000), nullable=False), sa.Column("rows", sa.Text, nullable=False),
        sa.Column("as_of", sa.String(7), nullable=False), sa.Column("data_version", sa.BigInteger, nullable=False),
    )  # fmt: skip
    return md, tables


class NodeStore:
    """Raw records of one department (thread-safe; connections from the engine's pool)."""

    def __init__(self, url: str | Engine, department: str) -> None:
        if department not in BY_ID:
            raise UnknownDepartment(
                f"unknown department {department!r}; expected one of {', '.join(BY_ID)}"
            )
        self.department = department
        self.engine = url if isinstance(url, Engine) else make_engine(url)
        self.metadata, self.tables = build_metadata(department)
        self.meta = self.metadata.tables["node_meta"]
        self.loads = self.metadata.tables["node_loads"]
        self.specs = {s.name: s for s in BY_DEPARTMENT[department]}
        # Reads go to the driver directly: SQLAlchemy's per-row processing costs more than
        # the query at these volumes. Driver errors that escape SQLAlchemy's wrapping
        # (raised while fetching) count as outages too.
        self._ph = "?" if self.engine.dialect.paramstyle == "qmark" else "%s"
        self._meta_sql = "SELECT key, value FROM node_meta"
        self._select_sql = {
            s.name: f"SELECT {', '.join(s.column_names)} FROM raw_{s.name} WHERE code IN "
            for s in BY_DEPARTMENT[department]
        }
        self._all_sql = {
            s.name: f"SELECT {', '.join(s.column_names)} FROM raw_{s.name}"
            for s in BY_DEPARTMENT[department]
        }
        dbapi = self.engine.dialect.loaded_dbapi
        self._driver_errors: tuple[type[BaseException], ...] = (
            (dbapi.OperationalError, dbapi.InterfaceError) if dbapi is not None else ()
        )

    # -- plumbing ----------------------------------------------------------------------

    @contextmanager
    def _guard(self) -> Iterator[None]:
        """Database outages become STORE_UNAVAILABLE (retryable), never INTERNAL."""
        try:
            yield
        except IntegrityError:
            raise
        except (OperationalError, DBAPIError) as exc:
            if isinstance(exc, DBAPIError) and not (
                isinstance(exc, OperationalError) or exc.connection_invalidated
            ):
                raise
            raise StoreUnavailable(
                f"the {self.department} node's database does not answer: "
                f"{str(exc.orig).splitlines()[0] if exc.orig else exc}"
            ) from exc
        except self._driver_errors as exc:
            raise StoreUnavailable(
                f"the {self.department} node's database does not answer: "
                f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
            ) from exc

    def create_schema(self) -> None:
        with self._guard():
            self.metadata.create_all(self.engine)

    def close(self) -> None:
        self.engine.dispose()

    def _meta(self, conn: Connection) -> dict[str, str]:
        return {r.key: r.value for r in conn.execute(sa.select(self.meta.c.key, self.meta.c.value))}

    def _set_meta(self, conn: Connection, values: dict[str, str]) -> None:
        for k, v in values.items():
            n = conn.execute(
                self.meta.update().where(self.meta.c.key == k).values(value=v)
            ).rowcount
            if not n:
                conn.execute(self.meta.insert().values(key=k, value=v))

    def last_load_at(self) -> float | None:
        """When records were last loaded (``node_loads``), or None if never."""
        with self.engine.connect() as conn:
            at = conn.execute(sa.select(sa.func.max(self.loads.c.at))).scalar()
        return None if at is None else float(at)

    def state(self) -> StoreState:
        """Department, as-of month and data version (one small query; raises if the DB is down).

        Run on every request, so it takes a pooled driver connection directly (no
        statement compilation, no result objects); a connection that fails is discarded."""
        with self._guard():
            conn = self.engine.raw_connection()
            try:
                cur = conn.cursor()
                try:
                    cur.execute(self._meta_sql)
                    m = dict(cur.fetchall())
                finally:
                    cur.close()
            except BaseException:
                conn.invalidate()
                raise
            finally:
                conn.close()
        return StoreState(
            m.get("department"),
            int(m["as_of"]) if "as_of" in m else None,
            int(m.get("data_version", "0")),
        )

    # -- loading -----------------------------------------------------------------------

    def _source_dir(self, source: Path) -> Path:
        for cand in (source / "departments" / self.department, source):
            if (cand / "meta.json").is_file():
                return cand
        raise RawDataNotFound(
            f"{source} holds no data for {self.department}: expected {source}/meta.json or "
            f"{source}/departments/{self.department}/meta.json"
        )

    def load(
        self,
        source: Path | str,
        *,
        append: bool = False,
        progress: Callable[[str, int, int], None] | None = None,
    ) -> LoadResult:
        """Load a department export (a world directory or ``departments/<id>``).

        Without ``append`` the store's records are replaced; with it, the files' rows are
        added (a monthly record that already exists is refused). All in one transaction.
        """
        started = time.perf_counter()
        src = self._source_dir(Path(source))
        as_of = self._source_as_of(src)
        parsed = self._parse_tables(src, append)
        with self._guard():
            try:
                with self.engine.begin() as conn:
                    rows, new_as_of, version = self._write(
                        conn, src, parsed, as_of, append, progress
                    )
            except IntegrityError as exc:
                raise DuplicateRecord(
                    "the append holds a monthly record that is already loaded (same enterprise and "
                    f"period); nothing was loaded: {str(exc.orig).splitlines()[0]}"
                ) from exc
        return LoadResult(self.department, "append" if append else "replace", rows,
                          month_text(new_as_of), version, time.perf_counter() - started)  # fmt: skip

    def _source_as_of(self, src: Path) -> int:
        """The export's as-of month (``meta.json``), checked to be this department's."""
        meta = json.loads((src / "meta.json").read_text())
        if meta.get("department") != self.department:
            raise WrongDepartment(
                f"{src} holds data of department {meta.get('department')!r}, not {self.department!r}"
            )
        try:
            return month_ordinal(str(meta.get("as_of", "")))
        except ValueError as exc:
            raise RawDataInvalid(f"{src}/meta.json as_of: {exc}") from exc

    def _parse_tables(self, src: Path, append: bool) -> dict[str, dict[str, Any]]:
        """Every table file of the export as text columns, each value's type validated (an
        append may carry only some tables; a full load needs them all)."""
        parsed: dict[str, dict[str, Any]] = {}
        for name, spec in self.specs.items():
            path = src / spec.file_name
            if not path.exists():
                if append:
                    continue  # an append may carry only some tables
                raise RawDataNotFound(
                    f"{path} is missing; a full load needs every table of {self.department}"
                )
            try:
                text = read_csv_text(path, spec)
                convert(spec, text)  # validates every value's type
            except RawDataError as exc:
                raise RawDataInvalid(str(exc)) from exc
            parsed[name] = text
        return parsed

    def _write(
        self,
        conn: Connection,
        src: Path,
        parsed: dict[str, dict[str, Any]],
        as_of: int,
        append: bool,
        progress: Callable[[str, int, int], None] | None,
    ) -> tuple[dict[str, int], int, int]:
        """Insert the parsed rows (replacing the store's records unless ``append``), bump the
        data version and record the load: ``(rows per table, as-of month, data version)``."""
        total = sum(len(t["code"]) for t in parsed.values())
        done = 0
        rows: dict[str, int] = {}
        self.metadata.create_all(conn)
        m = self._meta(conn)
        if m.get("department") not in (None, self.department):
            raise WrongDepartment(
                f"this database belongs to the {m['department']} node, not {self.department}"
            )
        if not append:
            for t in self.tables.values():
                conn.execute(t.delete())
        for name, text in parsed.items():
            records = _records(self.specs[name], text)
            for i in range(0, len(records), INSERT_CHUNK):
                chunk = records[i : i + INSERT_CHUNK]
                conn.execute(self.tables[name].insert(), chunk)
                done += len(chunk)
                if progress:
                    progress(name, done, total)
            rows[name] = len(records)
        old_as_of = int(m["as_of"]) if "as_of" in m and append else None
        new_as_of = max(as_of, old_as_of) if old_as_of is not None else as_of
        version = int(m.get("data_version", "0")) + 1
        self._set_meta(
            conn,
            {"department": self.department, "as_of": str(new_as_of), "data_version": str(version)},
        )
        conn.execute(self.loads.insert().values(
            at=time.time(), mode="append" if append else "replace", source=str(src),
            rows=json.dumps(rows, sort_keys=True), as_of=month_text(new_as_of), data_version=version,
        ))  # fmt: skip
        return rows, new_as_of, version

    # -- reading -----------------------------------------------------------------------

    def _rows(self, conn: Connection, name: str, codes: Sequence[str] | None) -> list[Any]:
        if codes is None:
            return list(conn.exec_driver_sql(self._all_sql[name]).cursor.fetchall())
        rows: list[Any] = []
        for i in range(0, len(codes), READ_CHUNK):  # below every driver's parameter limit
            part = tuple(codes[i : i + READ_CHUNK])
            sql = self._select_sql[name] + "(" + ", ".join([self._ph] * len(part)) + ")"
            rows += conn.exec_driver_sql(sql, part).cursor.fetchall()
        return rows

    def _read(self, conn: Connection, name: str, codes: Sequence[str] | None) -> Columns:
        spec = self.specs[name]
        result = self._rows(conn, name, codes)
        cols = list(zip(*result, strict=True)) if result else [() for _ in spec.columns]
        raw: dict[str, Any] = {}
        for c, values in zip(spec.columns, cols, strict=True):
            if c.kind == "date" and c.nullable:
                raw[c.name] = np.array(["" if v is None else v for v in values], dtype="U10")
            elif c.kind in ("int", "float"):
                raw[c.name] = np.array(values, dtype=np.int64 if c.kind == "int" else np.float64)
            else:
                raw[c.name] = np.array(values, dtype=str) if values else np.zeros(0, dtype="U1")
        return convert(spec, raw)

    def fetch(self, codes: Sequence[str], as_of: int) -> Batch:
        """The raw records of ``codes`` as a batch (rows of other enterprises never read)."""
        with self._guard(), self.engine.connect() as conn:
            tables = {name: self._read(conn, name, codes) for name in self.specs}
        return batch_from_columns(self.department, codes, as_of, tables)

    def codes(self) -> list[str]:
        """Every enterprise the department holds any record about, sorted."""
        union = " UNION ".join(f"SELECT code FROM raw_{name}" for name in self.specs)
        with self._guard(), self.engine.connect() as conn:
            rows = conn.exec_driver_sql(union).cursor.fetchall()
        return sorted(r[0] for r in rows)

    def fetch_population(self, as_of: int) -> tuple[list[str], Batch]:
        """Every enterprise the department holds records about, and all their records."""
        with self._guard(), self.engine.connect() as conn:
            tables = {name: self._read(conn, name, None) for name in self.specs}
        codes = sorted(set().union(*(set(t["code"].tolist()) for t in tables.values())))
        return codes, batch_from_columns(self.department, codes, as_of, tables)


def _records(spec: TableSpec, text: dict[str, Any]) -> list[dict[str, Any]]:
    """Text columns -> insert parameter dicts (typed ints/floats, NULL for empty dates)."""
    cols: list[list[Any]] = []
    for c in spec.columns:
        v = text[c.name]
        if c.kind == "int":
            cols.append(v.astype(np.int64).tolist())
        elif c.kind == "float":
            cols.append(v.astype(np.float64).tolist())
        elif c.nullable:
            cols.append([None if x == "" else x for x in v.tolist()])
        else:
            cols.append(v.tolist())
    names = spec.column_names
    return [dict(zip(names, r, strict=True)) for r in zip(*cols, strict=True)]

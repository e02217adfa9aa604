"""The node's store on SQLite and PostgreSQL: load, replace, append, refusals, reads."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fedcredit.common.errors import FedcreditError
from fedcredit.node import catalog
from fedcredit.node.schema import month_ordinal
from fedcredit.node.store import NodeStore
from fedcredit.world import pooled
from tests.node.conftest import world_codes


def append_dir(tmp: Path, department: str, as_of: str, files: dict[str, str]) -> Path:
    d = tmp / f"append-{department}-{as_of}"
    d.mkdir(parents=True, exist_ok=True)
    (d / "meta.json").write_text(json.dumps({"department": department, "as_of": as_of}))
    for name, text in files.items():
        (d / name).write_text(text)
    return d


def append_january_filing(url: str, tmp: Path, code: str, revenue: int) -> None:
    """What `fedcredit node load --append` does from another process: January 2026's tax
    filing of ``code`` is added to the node database at ``url``."""
    loader = NodeStore(url, "tax")
    d = append_dir(tmp, "tax", "2026-01", {
        "filings.csv": "code,period,sales_revenue,vat_paid,income_tax_paid,filed_on\n"
                       f"{code},2026-01,{revenue},7000,1000,2026-02-10\n"})  # fmt: skip
    loader.load(d, append=True)
    loader.close()


def test_load_replace_append_and_read_back(db_url: str, small_world: Path, tmp_path: Path) -> None:
    store = NodeStore(db_url, "tax")
    store.create_schema()
    r = store.load(small_world)
    rows = (small_world / "departments/tax/filings.csv").read_text().count("\n") - 1
    assert r.rows["filings"] == rows and r.data_version == 1 and r.as_of == "2025-12"
    st = store.state()
    assert (st.department, st.as_of_text, st.data_version) == ("tax", "2025-12", 1)
    # What the store gives back computes exactly what the files compute.
    codes = world_codes(small_world)
    as_of = month_ordinal("2025-12")
    from_db = catalog.compute(store.fetch(codes[:50], as_of))
    from_files = catalog.compute(pooled.read_department(small_world, "tax", codes[:50], as_of))
    np.testing.assert_array_equal(from_db.values, from_files.values)
    np.testing.assert_array_equal(from_db.reasons, from_files.reasons)
    # Append a new month for one enterprise: as-of moves, version bumps.
    code = codes[0]
    d = append_dir(tmp_path, "tax", "2026-01", {
        "filings.csv": "code,period,sales_revenue,vat_paid,income_tax_paid,filed_on\n"
                       f"{code},2026-01,123456,7000,1000,2026-02-10\n"})  # fmt: skip
    r2 = store.load(d, append=True)
    assert r2.rows == {"filings": 1} and r2.as_of == "2026-01" and r2.data_version == 2
    # The same month again is refused and nothing changes.
    with pytest.raises(FedcreditError) as exc:
        store.load(d, append=True)
    assert exc.value.reason == "DUPLICATE_RECORD"
    assert store.state().data_version == 2
    # A full load replaces everything (and goes back to the export's as-of).
    r3 = store.load(small_world)
    assert r3.rows["filings"] == rows and r3.as_of == "2025-12" and r3.data_version == 3
    codes_pop, batch = store.fetch_population(as_of)
    assert len(batch.t("filings")["code"]) == rows and set(codes_pop) <= set(codes)
    store.close()


def test_bad_loads_are_refused_precisely(db_url: str, small_world: Path, tmp_path: Path) -> None:
    store = NodeStore(db_url, "tax")
    store.create_schema()
    with pytest.raises(FedcreditError) as exc:
        store.load(tmp_path / "nothing-here")
    assert exc.value.reason == "RAW_DATA_NOT_FOUND"
    with pytest.raises(FedcreditError) as exc:
        store.load(small_world / "departments" / "courts")
    assert exc.value.reason == "WRONG_DEPARTMENT"
    bad = append_dir(tmp_path, "tax", "2026-01", {
        "filings.csv": "code,period,sales_revenue,vat_paid,income_tax_paid,filed_on\n"
                       "91371002MAAU9BJ37Q,2026-13,1,1,1,2026-02-10\n"})  # fmt: skip
    with pytest.raises(FedcreditError) as exc:
        store.load(bad, append=True)
    assert exc.value.reason == "RAW_DATA_INVALID" and "2026-13" in exc.value.message
    wrong_cols = append_dir(
        tmp_path / "x", "tax", "2026-01", {"filings.csv": "code,period,revenue\n"}
    )
    with pytest.raises(FedcreditError) as exc:
        store.load(wrong_cols, append=True)
    assert exc.value.reason == "RAW_DATA_INVALID" and "expected columns" in exc.value.message
    assert store.state().data_version == 0
    with pytest.raises(FedcreditError) as exc:
        NodeStore(db_url, "weather")
    assert exc.value.reason == "UNKNOWN_DEPARTMENT"
    store.close()

"""The synthetic city: reproducibility, shape, realism and the difficulty of the task."""

from __future__ import annotations

import csv
import json
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fedcredit.clients.cli import build_app
from fedcredit.common import uscc
from fedcredit.common.departments import DEPARTMENTS
from fedcredit.node.schema import BY_DEPARTMENT
from fedcredit.world.errors import InvalidWorldParameter, NotAWorld
from fedcredit.world.generate import generate, load_manifest


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def city(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("city")
    generate(out, enterprises=3000, banks=7, months=24, seed=42)
    return out


def _tree(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_bytes_and_other_seed_differs(tmp_path: Path) -> None:
    generate(tmp_path / "a", enterprises=400, seed=5)
    generate(tmp_path / "b", enterprises=400, seed=5)
    generate(tmp_path / "c", enterprises=400, seed=6)
    a, b, c = _tree(tmp_path / "a"), _tree(tmp_path / "b"), _tree(tmp_path / "c")
    assert a == b
    assert a.keys() == c.keys()
    assert a["enterprises.csv"] != c["enterprises.csv"]
    assert a["departments/tax/filings.csv"] != c["departments/tax/filings.csv"]


def test_manifest_hashes_every_file(city: Path) -> None:
    import hashlib

    m = load_manifest(city)
    assert m["seed"] == 42 and m["enterprises"] == 3000 and m["as_of"] == "2025-12"
    on_disk = {str(p.relative_to(city)) for p in city.rglob("*") if p.is_file()} - {"manifest.json"}
    assert set(m["files"]) == on_disk
    for rel, info in m["files"].items():
        assert hashlib.sha256((city / rel).read_bytes()).hexdigest() == info["sha256"], rel


def test_two_thousand_enterprises_within_five_seconds(tmp_path: Path) -> None:
    started = time.perf_counter()
    generate(tmp_path, enterprises=2000, seed=1)
    elapsed = time.perf_counter() - started
    print(f"2,000 enterprises generated in {elapsed:.2f} s (target <= 5 s)")
    assert elapsed <= 5.0


def test_registry_is_public_data_with_valid_unique_codes(city: Path) -> None:
    rows = _rows(city / "enterprises.csv")
    assert len(rows) == 3000
    codes = [r["code"] for r in rows]
    assert len(set(codes)) == len(codes)
    assert all(uscc.is_valid(c) for c in codes)
    assert set(rows[0]) == {
        "code",
        "name",
        "industry",
        "district",
        "size_class",
        "enterprise_type",
        "founded_on",
    }
    sizes = Counter(r["size_class"] for r in rows)
    assert sizes["micro"] > sizes["small"] > sizes["medium"] > 0  # heavy-tailed sizes
    # The latent health is only in the truth file.
    header = (city / "enterprises.csv").read_text(encoding="utf-8").splitlines()[0]
    assert "health" not in header and "default" not in header
    truth = _rows(city / "_truth" / "enterprises.csv")
    assert [t["code"] for t in truth] == codes


def test_every_department_writes_its_declared_tables(city: Path) -> None:
    codes = {r["code"] for r in _rows(city / "enterprises.csv")}
    for d in DEPARTMENTS:
        meta = json.loads((city / "departments" / d.id / "meta.json").read_text())
        assert meta["department"] == d.id and meta["as_of"] == "2025-12"
        seen: set[str] = set()
        for spec in BY_DEPARTMENT[d.id]:
            path = city / "departments" / d.id / spec.file_name
            header = path.read_text(encoding="utf-8").splitlines()[0]
            assert header == ",".join(spec.column_names)
            rows = _rows(path)
            assert meta["tables"][spec.name] == len(rows)
            seen |= {r["code"] for r in rows}
        assert seen <= codes
        assert seen, d.id
    # Not every department knows every firm (coverage is partial, e.g. housing fund).
    hf = {r["code"] for r in _rows(city / "departments/housing_fund/contributions.csv")}
    assert 0.2 * len(codes) < len(hf) < 0.8 * len(codes)


def test_monthly_records_have_gaps_and_entry_noise(city: Path) -> None:
    rows = _rows(city / "departments/tax/filings.csv")
    per_firm = Counter(r["code"] for r in rows)
    assert min(per_firm.values()) < 24 and max(per_firm.values()) == 24
    revenue = np.array([int(r["sales_revenue"]) for r in rows], dtype=float)
    assert (revenue == 0).mean() > 0.005  # zero-revenue months exist
    # Heavy tail: the top 1 % of filings hold a large share of revenue.
    top = np.sort(revenue)[-len(revenue) // 100 :].sum()
    assert top / revenue.sum() > 0.1


def test_loan_books_are_non_iid_with_a_few_percent_defaults(city: Path) -> None:
    m = load_manifest(city)
    reg = {r["code"]: r for r in _rows(city / "enterprises.csv")}
    books = {b: _rows(city / "banks" / b / "loans.csv") for b in m["banks"]}
    assert len(books) == 7
    loans = [x for book in books.values() for x in book]
    share = len({x["code"] for x in loans}) / len(reg)
    assert 0.11 <= share <= 0.19, share
    rate = np.mean([int(x["defaulted"]) for x in loans])
    assert 0.015 <= rate <= 0.07, rate
    # Non-IID: banks' industry mixes differ (total variation distance between books).
    sections = sorted({r["industry"] for r in reg.values()})

    def mix(book: list[dict[str, str]]) -> np.ndarray:
        c = Counter(reg[x["code"]]["industry"] for x in book)
        v = np.array([c[s] for s in sections], dtype=float)
        return v / v.sum()

    mixes = [mix(b) for b in books.values() if len(b) >= 20]
    tvd = [0.5 * np.abs(a - b).sum() for i, a in enumerate(mixes) for b in mixes[i + 1 :]]
    assert np.median(tvd) > 0.2, tvd


def test_bad_parameters_are_refused_precisely(tmp_path: Path) -> None:
    with pytest.raises(InvalidWorldParameter, match="expected 13 to 120"):
        generate(tmp_path, enterprises=100, months=6)
    with pytest.raises(InvalidWorldParameter, match="expected a month as YYYY-MM"):
        generate(tmp_path, enterprises=100, as_of="2025-13")
    with pytest.raises(NotAWorld):
        load_manifest(tmp_path / "nothing")


def test_cli_generate_json(tmp_path: Path) -> None:
    res = CliRunner().invoke(
        build_app(),
        ["world", "generate", "--enterprises", "200", "--banks", "3", "--months", "18",
         "--seed", "9", "--out", str(tmp_path), "--json"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["enterprises"] == 200 and len(out["banks"]) == 3
    assert load_manifest(tmp_path)["months"] == 18
    bad = CliRunner().invoke(
        build_app(), ["world", "generate", "--enterprises", "5", "--out", str(tmp_path)]
    )
    assert bad.exit_code != 0
    assert (
        "error: INVALID_WORLD_PARAMETER: --enterprises: expected 10 to 2,000,000, got 5"
        in bad.output
    )

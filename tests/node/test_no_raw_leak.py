"""Scan every response of a full-catalog request to all twelve nodes: no raw record value,
no raw text and no row identifier leaves a node — only the catalog's derived values."""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from fedcredit.common.departments import CATEGORIES, DEPARTMENTS
from fedcredit.node import catalog
from fedcredit.node.client import build_request
from fedcredit.node.schema import BY_DEPARTMENT
from fedcredit.v1 import feature_pb2
from fedcredit.world import pooled
from tests.node.conftest import Consents, NodeFactory, world_codes

ALLOWED_RESPONSE = {"features", "items", "as_of", "data_version"}
ALLOWED_ITEM = {"enterprise", "values", "missing", "consent_jti", "disclosure_index"}


def raw_values(world: Path, department: str) -> tuple[dict[str, set[float]], set[bytes]]:
    """Per enterprise: numeric raw values with 3+ significant digits; and all raw text."""
    numbers: dict[str, set[float]] = defaultdict(set)
    texts: set[bytes] = set()
    for spec in BY_DEPARTMENT[department]:
        kinds = {c.name: c.kind for c in spec.columns}
        with (world / "departments" / department / spec.file_name).open(encoding="utf-8") as f:
            for row in csv.DictReader(f):
                for col, val in row.items():
                    if col == "code" or val == "":
                        continue
                    if kinds[col] in ("int", "float"):
                        v = float(val)
                        # A value that rounds to itself at the release precision cannot be
                        # told apart from a rounded aggregate; those are not claims we can check.
                        if v != catalog.round_significant(np.array([v]), catalog.RELEASE_DIGITS)[0]:
                            numbers[row["code"]].add(v)
                    elif len(val) >= 4:
                        texts.add(val.encode())
    return numbers, texts


def scan(
    responses: list[Any], numbers: dict[str, set[float]], texts: set[bytes]
) -> tuple[list[str], int]:
    """Problems found, and how many (value, raw value) pairs were compared."""
    problems: list[str] = []
    compared = 0
    lengths = sorted({len(t) for t in texts})
    for resp in responses:
        fields = {fd.name for fd, _ in resp.ListFields()}
        if not fields <= ALLOWED_RESPONSE:
            problems.append(f"response carries {sorted(fields - ALLOWED_RESPONSE)}")
        for item in resp.items:
            fields = {fd.name for fd, _ in item.ListFields()}
            if not fields <= ALLOWED_ITEM:
                problems.append(f"{item.enterprise}: item carries {sorted(fields - ALLOWED_ITEM)}")
            blob = item.SerializeToString()
            # Every substring of the lengths raw texts have, looked up in the set of raw texts.
            windows = {blob[i : i + n] for n in lengths for i in range(len(blob) - n + 1)}
            problems += [f"{item.enterprise}: raw text {t!r}" for t in sorted(windows & texts)]
            own = numbers.get(item.enterprise, set())
            for name, v in zip(resp.features, item.values, strict=True):
                if math.isnan(v):
                    continue
                compared += len(own)
                if v in own:
                    problems.append(f"{item.enterprise}: {name} = {v} is a raw record value")
    return problems, compared


def test_full_catalog_responses_carry_no_raw_value_or_row_id(
    make_node: NodeFactory, consents: Consents, small_world: Path
) -> None:
    codes = world_codes(small_world)
    tokens = [(c, consents.token(c, scope=list(CATEGORIES))) for c in codes]
    total_compared = 0
    for d in DEPARTMENTS:
        node = make_node(d.id)
        with node.client() as c:
            responses = list(
                c.stub.StreamFeatures(
                    build_request(tokens, [], chunk_size=100, **node.coordinator_kw())
                )
            )
        served = [it for r in responses for it in r.items]
        assert len(served) == len(codes) and all(not it.HasField("error") for it in served)
        numbers, texts = raw_values(small_world, d.id)
        problems, compared = scan(responses, numbers, texts)
        assert problems == [], (d.id, problems[:10])
        total_compared += compared
        # Every value is the catalog's derived value (recomputed here from the files), every
        # integer is the disclosure-log index of that very answer: nothing else is in there.
        all_codes, names, x = pooled.compute_all(small_world, departments=[d.id])
        row = {code: i for i, code in enumerate(all_codes)}
        assert list(responses[0].features) == names
        log_entries = node.log.get_entries(0, node.entries())
        for it in served:
            np.testing.assert_array_equal(np.array(it.values), x[row[it.enterprise]])
            assert log_entries[it.disclosure_index].index == it.disclosure_index
            assert f'"subject":"{it.enterprise}"'.encode() in log_entries[it.disclosure_index].data
    print(f"compared {total_compared:,} released values with raw record values of the same firm")
    assert total_compared > 100_000  # the scan has teeth


def test_the_scan_would_catch_a_leak(small_world: Path) -> None:
    numbers, texts = raw_values(small_world, "tax")
    code, values = next((c, v) for c, v in numbers.items() if v)
    month_value = sorted(values)[0]  # e.g. one month's revenue
    leaky = feature_pb2.GetFeaturesResponse(
        features=["revenue_12m"],
        items=[feature_pb2.FeatureVector(enterprise=code, values=[month_value], missing=[0])],
    )
    problems, _ = scan([leaky], numbers, texts)
    assert problems and "raw record value" in problems[0]
    date = next(t for t in texts if t.count(b"-") == 2)
    leaky_text = feature_pb2.GetFeaturesResponse(
        features=["x"],
        items=[
            feature_pb2.FeatureVector(
                enterprise=code, consent_jti=date.decode(), values=[0.0], missing=[0]
            )
        ],
    )
    problems, _ = scan([leaky_text], numbers, texts)
    assert any("raw text" in p for p in problems)

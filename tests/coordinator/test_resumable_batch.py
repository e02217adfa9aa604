"""Resumable, idempotent ScoreBatch (issue 17): a batch with an id keeps each item's answer;
sending it again replays what was scored (no disclosure, no ledger entry, no use) and
scores the rest; the CLI writes each answer as it arrives and resumes from its file."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from fedcredit.clients.cli import build_app
from fedcredit.common.errors import FedcreditError
from fedcredit.coordinator.store import CoordinatorStore
from fedcredit.v1 import coordinator_pb2 as pb

from .conftest import (
    BANK,
    City,
    ConsentEnv,
    Coord,
    RunningNode,
    start_coordinator,
    stop_coordinator,
)
from .test_coord_scoring import client
from .test_coord_uses import disclosed, settled


@pytest.fixture(scope="module")
def nodes(
    pki: Any, consent_env: ConsentEnv, city: City, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[RunningNode]]:
    from .conftest import start_nodes

    ns = start_nodes(pki, consent_env, city, tmp_path_factory.mktemp("nodes"))
    yield ns
    for n in ns:
        n.close()


@pytest.fixture(scope="module")
def coord(
    pki: Any,
    consent_env: ConsentEnv,
    city: City,
    nodes: list[RunningNode],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Coord]:
    from .conftest import node_factory

    c = start_coordinator(
        pki=pki,
        consent_env=consent_env,
        city=city,
        tmp=tmp_path_factory.mktemp("coord"),
        nodes=node_factory(pki, nodes),
    )
    yield c
    stop_coordinator(c)


GRANTED: dict[str, str] = {}  # token -> consent id


def grant_many(consent_env: ConsentEnv, codes: list[str]) -> list[tuple[str, str, str]]:
    out = []
    for k, code in enumerate(codes):
        cid, token = consent_env.grant(code, scope=("judicial", "operations_tax"), max_uses=3)
        GRANTED[token] = cid
        out.append((code, token, f"r{k}"))
    return out


def essentials(item: pb.ScoreBatchItem) -> tuple[Any, ...]:
    r = item.result
    return (item.request_id, r.enterprise, r.rating, r.probability_of_default, r.ledger_index,
            r.feature_hash, r.consent_jti)  # fmt: skip


def test_a_batch_sent_again_is_replayed_without_disclosure_ledger_or_use(
    pki: Any, coord: Coord, consent_env: ConsentEnv, city: City, nodes: list[RunningNode]
) -> None:
    items = grant_many(consent_env, city.codes[300:306])
    jtis = {}
    with client(pki, coord) as c:
        # An interrupted first run: only the first half was sent.
        first = list(c.score_batch(items[:3], batch_id="resume-1"))
        assert all(i.HasField("result") and not i.replayed for i in first)
        for i in first:
            jtis[i.request_id] = i.result.consent_jti
        ledger_before = len(coord.ledger.entries("score_access"))
        disclosed_before = disclosed(nodes)
        # Resumed: the whole batch again under the same id.
        resumed = list(c.score_batch(items, batch_id="resume-1"))
        assert [i.request_id for i in resumed] == [f"r{k}" for k in range(6)]
        assert [i.replayed for i in resumed] == [True] * 3 + [False] * 3
        assert [essentials(i) for i in resumed[:3]] == [essentials(i) for i in first]
        assert len(coord.ledger.entries("score_access")) == ledger_before + 3
        # Third time: nothing new anywhere.
        ledger_mid, disclosed_mid = len(coord.ledger.entries("score_access")), disclosed(nodes)
        again = list(c.score_batch(items, batch_id="resume-1"))
        assert all(i.replayed for i in again)
        assert [essentials(i) for i in again] == [essentials(i) for i in resumed]
    assert len(coord.ledger.entries("score_access")) == ledger_mid
    assert disclosed(nodes) == disclosed_mid
    assert sum(disclosed_mid) > sum(disclosed_before)  # the second half was asked of nodes
    # One use per enterprise, however often the batch was sent.
    for _, token, _ in items:
        assert settled(consent_env, GRANTED[token], 1) == 1


def test_a_resent_request_id_with_other_content_is_a_conflict(
    pki: Any, coord: Coord, consent_env: ConsentEnv, city: City
) -> None:
    items = grant_many(consent_env, city.codes[310:312])
    with client(pki, coord) as c:
        list(c.score_batch(items, batch_id="conflict-1"))
        swapped = [(items[1][0], items[1][1], "r0")]
        (out,) = list(c.score_batch(swapped, batch_id="conflict-1"))
        assert out.error.reason == "BATCH_ITEM_CONFLICT"
        # Another bank's batch with the same id is its own batch (nothing replayed across banks).
        (dup,) = list(c.score_batch([("91370000000000000X", "a.b.c", "")], batch_id="conflict-1"))
        assert dup.error.reason == "INVALID_BATCH_ITEM"


def test_bad_batch_ids_are_refused_in_one_status(pki: Any, coord: Coord) -> None:
    with client(pki, coord) as c:
        for bid in ["x" * 129, "has space", "ünïcode"]:
            with pytest.raises(FedcreditError) as exc:
                list(c.score_batch([("91370000000000000X", "a.b.c", "r1")], batch_id=bid))
            assert exc.value.reason == "INVALID_BATCH_ID"
            assert len(exc.value.message) < 300


def test_store_claims_keep_use_indexes_across_runs(db_url: str) -> None:
    st = CoordinatorStore.open(db_url)
    try:
        rows = st.claim_batch_items("bank-a", "b", [("1", "h1", "j1"), ("2", "h2", "j1"), ("3", "h3", "j2")], 1)  # fmt: skip
        assert [rows[r].use_index for r in "123"] == [0, 1, 0]
        again = st.claim_batch_items("bank-a", "b", [("2", "h2", "j1"), ("4", "h4", "j1")], 2)
        assert again["2"].use_index == 1 and again["4"].use_index == 2
        st.store_batch_results("bank-a", "b", [("2", b"answer")], 3)
        st.store_batch_results("bank-a", "b", [("2", b"other")], 4)  # first answer stays
        got = st.batch_items("bank-a", "b", ["1", "2", "9"])
        assert got["2"].result == b"answer" and got["1"].result is None and "9" not in got
        assert st.batch_items("bank-b", "b", ["2"]) == {}
        many = [(str(k), f"h{k}", f"j{k}") for k in range(10, 1300)]
        assert len(st.claim_batch_items("bank-a", "big", many, 5)) == len(many)
    finally:
        st.close()


# ---------------------------------------------------------------- the CLI


@pytest.fixture(scope="module")
def config(pki: Any, coord: Coord, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cfg") / "deployment.toml"
    path.write_text(
        f"""
[deployment]
name = "resume-test"
pki = "{pki.dir}"

[[organisations]]
id = "coordinator"
role = "coordinator"

[[organisations]]
id = "{BANK}"
role = "bank"

[services.coordinator]
org = "coordinator"
address = "{coord.target}"
database = "sqlite:///unused.sqlite"
"""
    )
    return path


def run(*args: str) -> Any:
    return CliRunner().invoke(build_app(), list(args), catch_exceptions=False)


def test_cli_writes_as_it_goes_reports_bad_rows_and_resumes(
    config: Path, consent_env: ConsentEnv, city: City, tmp_path: Path, nodes: list[RunningNode]
) -> None:
    items = grant_many(consent_env, city.codes[320:326])
    rows = [json.dumps({"enterprise": e, "token": t, "request_id": r}) for e, t, r in items]
    part = tmp_path / "part.jsonl"
    part.write_text("\n".join(rows[:2]) + "\n")
    full = tmp_path / "full.jsonl"
    full.write_text("\n".join([*rows[:3], "{not json", '["a list"]', *rows[3:]]) + "\n")
    out = tmp_path / "results.csv"
    base = ["bank", "score-batch", "--config", str(config), "--bank", BANK, "--out", str(out)]
    res = run(*base, "--input", str(part), "--batch-id", "cli-resume", "--json")
    assert res.exit_code == 0, res.output
    journal = tmp_path / "results.csv.jsonl"
    assert len(journal.read_text().splitlines()) == 2
    # Without --resume the file is not overwritten.
    res = run(*base, "--input", str(full), "--json")
    assert res.exit_code == 8 and "BATCH_JOURNAL_EXISTS" in res.output and "--resume" in res.output
    before = disclosed(nodes)
    res = run(*base, "--input", str(full), "--resume", "--json")
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["batch_id"] == "cli-resume" and data["counts"]["invalid_row"] == 2
    lines = [json.loads(x) for x in journal.read_text().splitlines()]
    assert {x["batch_id"] for x in lines} == {"cli-resume"}
    scored = {x["request_id"] for x in lines if "rating" in x}
    assert scored == {f"r{k}" for k in range(6)}
    invalid = [x for x in lines if x.get("error", {}).get("reason") == "INVALID_INPUT_ROW"]
    assert [x["input_row"] for x in invalid] == [4, 5]
    # r0 and r1 were not sent again at all; only r2..r5 reached the nodes.
    assert sum(disclosed(nodes)) - sum(before) == 4 * 2
    csv_rows = out.read_text().splitlines()
    assert csv_rows[0].startswith("request_id,enterprise,rating") and len(csv_rows) == 1 + 8


def test_cli_binary_input_is_one_line(config: Path, tmp_path: Path) -> None:
    f = tmp_path / "b.csv"
    f.write_bytes(b"\xff\xfe\x00\x81" * 10)
    res = run("bank", "score-batch", "--config", str(config), "--bank", BANK, "--input", str(f))
    assert res.exit_code == 3 and "Traceback" not in res.output

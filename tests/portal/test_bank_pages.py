"""The bank's pages over HTTP against the real consent service, coordinator and ledger:
score under a consent (rating, PD, the reasons chart), a guarantee decision, the watch
list, a batch upload with progress and a results CSV; CSRF and wrong-role refusals that
change nothing; every act ledgered as the bank's, ``via: portal``."""

from __future__ import annotations

import csv
import io
import json
import random
import re
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from starlette.routing import Route

from fedcredit.common import uscc
from fedcredit.common.tls import Identity
from fedcredit.consent.client import ConsentClient
from fedcredit.ledger.client import LedgerClient
from fedcredit.portal.bank_pages import BANK_ROUTES
from tests.portal.conftest import BANK, Federation, Scoring
from tests.portal.test_portal_http import enrolled, terms
from tests.portal.webclient import Visitor

_rng = random.Random(20190)


def consent(fed: Federation, purpose: str, **kw: Any) -> tuple[str, str]:
    """(enterprise, consent id): the bank asked, the enterprise approved."""
    ent = uscc.generate(_rng)
    with ConsentClient(fed.consent_address, fed.pki.tls(BANK), server_org="consent-service") as c:  # fmt: skip
        cid = c.request(terms(ent, purpose=purpose, scope=["score_only"], **kw)).consent_id
    fed.authority.approve(Identity(ent, "enterprise", b""), cid)
    return ent, cid


def uses(fed: Federation, ent: str, cid: str) -> int:
    return fed.authority.get(Identity(ent, "enterprise", b""), cid).uses


def entries(fed: Federation, ent: str) -> list[dict[str, Any]]:
    fed.ledger.checkpoint()
    with LedgerClient(fed.ledger_address, fed.pki.tls("auditor-pboc-weihai"), server_org="ledger") as lc:  # fmt: skip
        return [json.loads(bytes(pe.entry.data)) for page in lc.list_by_subject(ent) for pe in page.entries]  # fmt: skip


def _client(fed: Federation) -> httpx.Client:
    return httpx.Client(base_url=fed.url.replace("localhost", "127.0.0.1"), timeout=60)


@pytest.fixture
def bank_v(federation: Federation, scoring: Scoring) -> Iterator[Visitor]:
    with _client(federation) as c:
        v = Visitor(c)
        enrolled(federation, v, BANK, "bank")
        yield v


def form(v: Visitor, path: str, **fields: str) -> httpx.Response:
    return v.post_form(path, {"csrf": v.csrf, **fields})


def test_bank_scores_and_sees_the_chart(federation: Federation, bank_v: Visitor) -> None:
    ent, cid = consent(federation, "credit_assessment")
    assert f'href="/bank/score?consent={cid}"' in bank_v.get("/bank").text  # the desk links it
    assert f'<option value="{cid}" selected>' in bank_v.get(f"/bank/score?consent={cid}").text
    page = bank_v.get("/bank/score").text
    assert cid in page and ent in page and "信用等级" not in page  # no result yet
    r = form(bank_v, "/bank/score", consent_id=cid)
    assert r.status_code == 303 and r.headers["location"].startswith("/bank/score")
    page = bank_v.get("/bank/score?lang=en").text
    rating = re.search(r'data-rating="([A-D])"', page)
    assert rating and 'id="reasons-chart"' in page and "<svg" in page and "<script>" not in page
    assert "Probability of default" in page and ent in page
    assert uses(federation, ent, cid) == 1
    access = [e for e in entries(federation, ent) if e["kind"] == "score_access"]
    assert access[-1]["payload"]["bank"] == BANK and access[-1]["payload"]["via"] == "portal"
    assert access[-1]["payload"]["rating"] == rating.group(1)
    assert access[-1]["actor"] == "coordinator"
    # the consent token and the delegation ticket stay in the portal: no JWS reaches the browser
    for path in ("/bank/score", "/bank/guarantee", "/bank/watch", "/bank/batch", "/bank"):
        assert "eyJ" not in bank_v.get(path).text, path


def test_bank_applies_for_a_guarantee(federation: Federation, bank_v: Visitor) -> None:
    ent, cid = consent(federation, "guarantee")
    assert cid in bank_v.get("/bank/guarantee").text
    r = form(bank_v, "/bank/guarantee", consent_id=cid, amount_yuan="300000", term_months="12", collateral_yuan="0")  # fmt: skip
    assert r.status_code == 303
    page = bank_v.get("/bank/guarantee").text
    m = re.search(r'id="decision-outcome" data-approved="([01])" data-reason="([A-Z_]+)"', page)
    assert m, page
    decided = [e["payload"] for e in entries(federation, ent) if e["kind"] == "guarantee_decision"]  # fmt: skip
    assert decided and decided[-1]["via"] == "portal" and decided[-1]["bank"] == BANK
    assert decided[-1]["approved"] == (m.group(1) == "1") and decided[-1]["reason"] == m.group(2)
    # bad input is refused precisely, and changes nothing
    before = uses(federation, ent, cid)
    r = form(bank_v, "/bank/guarantee", consent_id=cid, amount_yuan="-5", term_months="12")
    assert r.status_code == 303
    assert "amount_yuan" in bank_v.get("/home").text
    assert uses(federation, ent, cid) == before


def test_watch_list_checks_ratings(federation: Federation, bank_v: Visitor) -> None:
    ent, cid = consent(federation, "post_loan_monitoring", validity_days=360, max_uses=12, loan_term_days=365)  # fmt: skip
    page = bank_v.get("/bank/watch").text
    assert ent in page and "尚未检查" in page
    assert form(bank_v, "/bank/watch/check").status_code == 303
    page = bank_v.get("/bank/watch").text
    row = re.search(rf'<tr data-enterprise="{ent}"[^>]*>(.*?)</tr>', page, re.S)
    assert row and re.search(r"<td>[A-D]</td>", row.group(1)), page
    assert uses(federation, ent, cid) == 1


def _upload(v: Visitor, text: str | bytes) -> httpx.Response:
    body = text.encode() if isinstance(text, str) else text
    files = {"file": ("batch.csv", body, "text/csv")}
    return v.http.post("/bank/batch", data={"csrf": v.csrf}, files=files,
                       headers={"cookie": f"fc_session={v.sid}"})  # fmt: skip


def _until_done(v: Visitor, job_url: str) -> str:
    """The progress fragment once the job is no longer running (htmx polls the same)."""
    deadline = time.monotonic() + 90
    while True:
        frag = v.get(job_url + "/progress").text
        if 'data-state="running"' not in frag or time.monotonic() > deadline:
            return frag
        time.sleep(0.3)


def test_batch_upload_shows_progress_and_results(federation: Federation, bank_v: Visitor) -> None:
    made = [consent(federation, "credit_assessment") for _ in range(3)]
    rows = ["consent_id,request_id", *[f"{cid},r{i}" for i, (_, cid) in enumerate(made)],
            "c_does_not_exist,r9", ",r10"]  # fmt: skip
    r = _upload(bank_v, "\n".join(rows) + "\n")
    assert r.status_code == 303, r.text
    job_url = r.headers["location"]
    assert "hx-get" in bank_v.get(job_url).text or 'data-state="done"' in bank_v.last.text  # type: ignore[union-attr]
    frag = _until_done(bank_v, job_url)
    assert 'data-state="done"' in frag and "hx-get" not in frag, frag
    got = bank_v.get(job_url + "/results.csv")
    assert got.headers["content-type"].startswith("text/csv")
    out = {r["request_id"]: r for r in csv.DictReader(io.StringIO(got.text))}
    assert set(out) == {"r0", "r1", "r2", "r9", "r10"}
    for i, (ent, cid) in enumerate(made):
        assert out[f"r{i}"]["enterprise"] == ent and out[f"r{i}"]["rating"] in "ABCD"
        assert uses(federation, ent, cid) == 1
    assert out["r9"]["error"] and not out["r9"]["rating"]
    assert "eyJ" not in got.text  # no token in the download either
    assert not any(r["replayed"] for r in out.values())
    # sent again under its batch id: every row replayed, no consent used twice
    assert form(bank_v, job_url + "/resume").status_code == 303
    frag = _until_done(bank_v, job_url)
    assert 'data-state="done"' in frag, frag
    again = {r["request_id"]: r for r in csv.DictReader(io.StringIO(bank_v.get(job_url + "/results.csv").text))}  # fmt: skip
    for i, (ent, cid) in enumerate(made):
        assert again[f"r{i}"]["replayed"] == "yes"
        assert again[f"r{i}"]["rating"] == out[f"r{i}"]["rating"]
        assert uses(federation, ent, cid) == 1
    assert out["r10"]["error"] == "INVALID_INPUT_ROW"
    # the same org sees its batch; another bank's session does not
    assert job_url.rsplit("/", 1)[1] in bank_v.get("/bank/batch").text
    with _client(federation) as c:
        other = Visitor(c)
        enrolled(federation, other, "bank-weihai-rural", "bank")
        assert other.get(job_url).status_code == 404
        assert other.get(job_url + "/results.csv").status_code == 404


def test_a_bad_file_is_refused_and_nothing_scored(federation: Federation, bank_v: Visitor) -> None:
    for text in (
        "enterprise\n123\n",
        b"consent_id\n\xff\xfe\n",  # not UTF-8
        "consent_id\n",
    ):
        r = _upload(bank_v, text)
        assert r.status_code == 303 and r.headers["location"] == "/"
        assert "PORTAL_BATCH_FILE_INVALID" in bank_v.get("/home").text


def test_every_bank_form_refuses_without_csrf(federation: Federation, bank_v: Visitor) -> None:
    ent, cid = consent(federation, "credit_assessment")
    posts = [r.path for r in BANK_ROUTES if "POST" in (r.methods or ())]
    assert len(posts) == 5
    for path in posts:
        path = path.replace("{batch_id}", "pb-x")
        r = bank_v.post_form(path, {"csrf": "forged", "consent_id": cid, "amount_yuan": "1", "term_months": "1"})  # fmt: skip
        assert r.status_code == 403, path
    assert uses(federation, ent, cid) == 0
    assert not [e for e in entries(federation, ent) if e["kind"] == "score_access"]


def test_other_roles_are_refused(federation: Federation, scoring: Scoring) -> None:
    ent, cid = consent(federation, "credit_assessment")
    with _client(federation) as c:
        v = Visitor(c)
        enrolled(federation, v, uscc.generate(_rng), "enterprise")
        for path in ("/bank/score", "/bank/guarantee", "/bank/watch", "/bank/batch", "/bank/batch/pb-x/progress"):  # fmt: skip
            r = v.get(path)
            assert r.status_code == 303 and r.headers["location"] == "/home", path
        r = form(v, "/bank/score", consent_id=cid)
        assert r.status_code == 303 and r.headers["location"] == "/"
        assert "ROLE_NOT_ALLOWED" in v.get("/home").text
    with _client(federation) as c:  # not signed in at all
        v = Visitor(c)
        v.get("/signin")
        assert form(v, "/bank/score", consent_id=cid).headers["location"] == "/"
        assert v.get("/bank/score").headers["location"] == "/signin"
    assert uses(federation, ent, cid) == 0


def test_a_banks_batches_survive_a_portal_restart(
    federation: Federation, scoring: Scoring, tmp_path: Any
) -> None:
    """The portal keeps each batch job (batch id, owner, state, results) in its database:
    after a restart the bank finds the batch, its results download as before, and sending
    it again replays what was scored (no consent used twice). A row given with its token is
    kept without it (no token on disk): resumed, it is refused by name."""
    from dataclasses import replace

    from starlette.testclient import TestClient

    from fedcredit.portal.app import build_app

    settings = replace(federation.settings, database=f"sqlite:///{tmp_path / 'portal.sqlite'}")
    made = [consent(federation, "credit_assessment") for _ in range(2)]
    tok_ent, tok_cid = consent(federation, "credit_assessment")
    with ConsentClient(federation.consent_address, federation.pki.tls(BANK), server_org="consent-service") as cc:  # fmt: skip
        token = cc.token(tok_cid).token or ""
    rows = ["consent_id,enterprise,token,request_id", *[f"{cid},,,r{i}" for i, (_, cid) in enumerate(made)],
            f",{tok_ent},{token},rt"]  # fmt: skip
    with TestClient(build_app(settings, federation.backend), follow_redirects=False) as before:
        v = Visitor(before)
        enrolled(federation, v, BANK, "bank")
        job_url = _upload(v, "\n".join(rows) + "\n").headers["location"]
        assert 'data-state="done"' in _until_done(v, job_url)
        first = v.get(job_url + "/results.csv").text
    stored = (tmp_path / "portal.sqlite").read_bytes()
    assert token.encode() not in stored  # the consent token never reached the disk
    batch_id = job_url.rsplit("/", 1)[1]
    with TestClient(
        build_app(settings, federation.backend), follow_redirects=False
    ) as after:  # restarted
        v = Visitor(after)
        enrolled(federation, v, BANK, "bank")
        assert batch_id in v.get("/bank/batch").text
        assert 'data-state="done"' in v.get(job_url).text
        assert v.get(job_url + "/results.csv").text == first
        assert form(v, job_url + "/resume").status_code == 303
        assert 'data-state="done"' in _until_done(v, job_url)
        again = {r["request_id"]: r for r in csv.DictReader(io.StringIO(v.get(job_url + "/results.csv").text))}  # fmt: skip
        other = Visitor(after)
        enrolled(federation, other, "bank-weihai-rural", "bank")
        assert other.get(job_url).status_code == 404  # still only its owner's
    for i, (ent, cid) in enumerate(made):
        assert again[f"r{i}"]["replayed"] == "yes" and uses(federation, ent, cid) == 1
    assert again["rt"]["error"] == "PORTAL_BATCH_TOKEN_NOT_KEPT" and uses(federation, tok_ent, tok_cid) == 1  # fmt: skip


def test_the_watch_lists_last_check_survives_a_portal_restart(
    federation: Federation, scoring: Scoring, tmp_path: Any
) -> None:
    """The ratings a bank's last "check now" saw are kept in the portal's database: after a
    restart the page still shows them (and the next check compares against them)."""
    from dataclasses import replace

    from starlette.testclient import TestClient

    from fedcredit.portal.app import build_app

    settings = replace(federation.settings, database=f"sqlite:///{tmp_path / 'portal.sqlite'}")
    ent, cid = consent(federation, "post_loan_monitoring", validity_days=360, max_uses=12, loan_term_days=365)  # fmt: skip
    pattern = rf'<tr data-enterprise="{ent}"[^>]*>(.*?)</tr>'
    with TestClient(build_app(settings, federation.backend), follow_redirects=False) as before:
        v = Visitor(before)
        enrolled(federation, v, BANK, "bank")
        assert form(v, "/bank/watch/check").status_code == 303
        seen = re.search(pattern, v.get("/bank/watch").text, re.S)
        assert seen and re.search(r"<td>[A-D]</td>", seen.group(1))
    with TestClient(build_app(settings, federation.backend), follow_redirects=False) as after:
        v = Visitor(after)
        enrolled(federation, v, BANK, "bank")
        again = re.search(pattern, v.get("/bank/watch").text, re.S)
        assert again and again.group(1) == seen.group(1)  # shown as last seen, no new check
    assert uses(federation, ent, cid) == 1


def test_hostile_requests_to_the_bank_pages_change_nothing(
    federation: Federation, bank_v: Visitor
) -> None:
    """tests/portal/test_hostile_http.py's requests with the coordinator behind the pages
    (there it is absent): no 500, no internals, no use of a consent, no score logged."""
    from tests.portal.test_hostile_http import SEEN, hostile_requests

    ent, cid = consent(federation, "credit_assessment")
    problems = hostile_requests(bank_v, [r for r in BANK_ROUTES if isinstance(r, Route)])
    assert not problems, "\n".join(problems[:40])
    assert SEEN[400] > 0, "no request reached a field's check"
    assert uses(federation, ent, cid) == 0
    assert not [e for e in entries(federation, ent) if e["kind"] == "score_access"]

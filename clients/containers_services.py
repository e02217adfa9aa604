"""`make compose-test`, the platform's user-facing services in their containers: the web
portal over HTTP from the host and the policy-fund service over mTLS.

* the portal (plain HTTP on its 127.0.0.1 port in the test layout): ``/healthz``, the
  sign-in page, a signed-in page refused to a visitor without a session (303 to
  ``/signin``), a state-changing call refused without the session's CSRF token, and one
  call through the portal to the consent service (a sign-in for an organisation without a
  passkey: the consent service's own ``PASSKEY_NONE_REGISTERED`` comes back, so the
  portal's mTLS channel to it works);
* the policy service: a department publishes a 免申即享 policy whose rule asks a node
  (``social_security.headcount``), lists it, and the operator runs a screening of the whole
  registry through the node containers;
* the marketplace: a bank publishes a credit product over mTLS (the market service writes
  it to its PostgreSQL store and the ledger) and lists it;
* after the platform's restart (containers_story): the portal answers again, the policy is
  still published, a second screening notifies nobody twice (the awards of the first run
  are in PostgreSQL), and the bank's product is still on the market.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from fedcredit.clients.compose import PORTAL_PORT
from fedcredit.clients.containers import Cluster
from fedcredit.clients.demo_stage import Demo, DemoFailed

POLICY_ID = "compose-headcount"
# Budget for every enterprise of the test city (1,500 x 10,000 yuan): a second run can only
# notify an enterprise the first run left out, so it must notify none.
POLICY = f"""id = "{POLICY_ID}"
title = "Employment support (compose-test)"
department = "dept-tax"
mode = "automatic"
amount_yuan = 10000
budget_yuan = 100000000
opens = "2026-01-01"
closes = "2026-12-31"
rule = "social_security.headcount >= 5 && registry.founded_year >= 1900"
decline_days = 7
"""
SCREEN_DAY = "2026-06-01"
PRODUCT_ID = "compose-working-capital"
PRODUCT = {"product_id": PRODUCT_ID, "name": "SME working capital (compose-test)",
           "grade_floor": "C", "amount_min": 100_000, "amount_max": 5_000_000, "term_min": 6,
           "term_max": 36, "rate_min_bp": 350, "rate_max_bp": 600, "industries": [],
           "regions": [], "fund_guaranteed": True}  # fmt: skip


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    cookies: dict[str, str] = field(default_factory=dict)

    def json(self) -> Any:
        return json.loads(self.body)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kw: Any) -> None:
        return None  # a 303 is an answer to check, not to follow


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())


def http(url: str, *, data: dict[str, Any] | None = None, headers: dict[str, str] | None = None,
         cookies: dict[str, str] | None = None) -> Answer:  # fmt: skip
    """One request from the host, no proxy, no redirect followed; any status is an answer."""
    hdrs = dict(headers or {})
    if cookies:
        hdrs["Cookie"] = "; ".join(f"{k}={v}" for k, v in cookies.items())
    body = None
    if data is not None:
        body = json.dumps(data).encode()
        hdrs.setdefault("Content-Type", "application/json")
    req = urllib.request.Request(url, data=body, headers=hdrs, method="POST" if body else "GET")
    try:
        with _OPENER.open(req, timeout=30) as r:
            status, head, raw = r.status, r.headers, r.read()
    except urllib.error.HTTPError as exc:
        status, head, raw = exc.code, exc.headers, exc.read()
    except OSError as exc:
        raise DemoFailed("portal", f"{url}: no answer: {exc}") from exc
    jar = {}
    for line in head.get_all("Set-Cookie") or []:
        name, _, rest = line.partition("=")
        jar[name.strip()] = rest.split(";", 1)[0]
    return Answer(status, {k.lower(): v for k, v in head.items()}, raw, jar)


def portal_url(cluster: Cluster) -> str:
    assert cluster.layout is not None
    return "http://" + cluster.layout.address("portal", PORTAL_PORT)


def _expect(ok: bool, what: str) -> None:
    if not ok:
        raise DemoFailed("portal", what)


def check_portal(demo: Demo, cluster: Cluster) -> None:
    """The portal's container answers the host over HTTP: health, the sign-in page, the
    refusals, and one call through it to the consent service."""
    base = portal_url(cluster)
    health = http(f"{base}/healthz")
    _expect(health.status == 200 and health.body.strip() == b"ok",
            f"/healthz: expected 200 ok, got {health.status} {health.body[:80]!r}")  # fmt: skip
    page = http(f"{base}/signin")
    text = page.body.decode("utf-8", "replace")
    csrf = re.search(r'<meta name="csrf-token" content="([^"]+)"', text)
    _expect(page.status == 200 and "text/html" in page.headers.get("content-type", "")
            and '<form id="signin"' in text,
            f"/signin: expected the sign-in page, got {page.status} {text[:200]!r}")  # fmt: skip
    if csrf is None or not page.cookies:
        raise DemoFailed("portal", "/signin: the page set no session cookie or CSRF token")
    home = http(f"{base}/home")
    _expect(home.status == 303 and home.headers.get("location", "").endswith("/signin"),
            f"/home without a session: expected 303 to /signin, got {home.status} "
            f"{home.headers.get('location')}")  # fmt: skip
    accept = {"Accept": "application/json"}
    forged = http(f"{base}/signin/begin", data={"org": "dept-tax"}, headers=accept,
                  cookies=page.cookies)  # fmt: skip
    _expect(forged.status == 403 and forged.json().get("error") == "CSRF_FAILED",
            f"/signin/begin without the CSRF token: expected 403 CSRF_FAILED, got "
            f"{forged.status} {forged.body[:200]!r}")  # fmt: skip
    begin = http(f"{base}/signin/begin", data={"org": "dept-tax"},
                 headers={**accept, "X-CSRF-Token": csrf.group(1)}, cookies=page.cookies)  # fmt: skip
    _expect(begin.status == 400 and begin.json().get("error") == "PASSKEY_NONE_REGISTERED",
            f"/signin/begin for dept-tax (no passkey): expected the consent service's "
            f"PASSKEY_NONE_REGISTERED, got {begin.status} {begin.body[:200]!r}")  # fmt: skip
    demo.console.print(
        f"portal at {base}: /healthz ok; /signin {page.status} ({len(page.body):,} bytes); "
        f"/home without a session {home.status} -> /signin; /signin/begin without CSRF "
        f"{forged.status}; with it, through the consent service: {begin.json()['error']}"
    )


def _policy(demo: Demo, who: str, *args: str, timeout: float = 120.0) -> Any:
    return demo.fedcredit("policy", *args, "--config", str(demo.config), "--as", who,
                          timeout=timeout)  # fmt: skip


def check_policies(demo: Demo, cluster: Cluster) -> dict[str, Any]:
    """Publish, list and screen through the policy service's container; the first run's
    summary (for the check after the restart)."""
    path = cluster.dir / "policy-compose.toml"
    path.write_text(POLICY, encoding="utf-8")
    plan = _policy(demo, "dept-tax", "publish", str(path))
    listed = _policy(demo, "dept-tax", "list")
    if POLICY_ID not in [p.get("id") for p in listed]:
        raise DemoFailed("policies", f"published {POLICY_ID}, `policy list` shows {listed}")
    run = _policy(demo, "operator", "screen", "--today", SCREEN_DAY, "--run-id", "compose-1",
                  timeout=300)  # fmt: skip
    eligible = int(run.get("eligible", {}).get(POLICY_ID, 0))
    notified = int(run.get("notified", {}).get(POLICY_ID, 0))
    if int(run.get("enterprises", 0)) != demo.enterprises or not 0 < notified == eligible:
        raise DemoFailed("policies", f"screening of {demo.enterprises} enterprises: expected "
                         f"every eligible one notified, got {run}")  # fmt: skip
    by = sorted({c["evaluated_by"] for c in plan.get("clauses", [])})
    demo.console.print(
        f"policy {POLICY_ID} published by dept-tax (clauses evaluated by {', '.join(by)}); "
        f"screening of {run['enterprises']:,} enterprises through the nodes: {eligible:,} "
        f"eligible, {notified:,} notified"
    )
    return dict(run)


def check_after_restart(demo: Demo, cluster: Cluster, first: dict[str, Any]) -> None:
    """After the platform restart: the portal answers, the policy and its awards remain,
    the bank's product is still on the market."""
    health = http(f"{portal_url(cluster)}/healthz")
    _expect(health.status == 200, f"/healthz after the restart: {health.status}")
    listed = _policy(demo, "dept-tax", "list")
    if POLICY_ID not in [p.get("id") for p in listed]:
        raise DemoFailed("restart", f"{POLICY_ID} is gone after the restart: {listed}")
    run = _policy(demo, "operator", "screen", "--today", SCREEN_DAY, "--run-id", "compose-2",
                  timeout=300)  # fmt: skip
    eligible = int(run.get("eligible", {}).get(POLICY_ID, 0))
    again = int(run.get("notified", {}).get(POLICY_ID, 0))
    if eligible != int(first["eligible"][POLICY_ID]) or again != 0:
        raise DemoFailed("restart", f"the second screening found {eligible} eligible (first: "
                         f"{first['eligible'][POLICY_ID]}) and notified {again} again: the "
                         "awards were lost")  # fmt: skip
    if not _product_listed(demo):
        raise DemoFailed("restart", f"the market lost {PRODUCT_ID} in the restart")
    demo.console.print(
        f"portal /healthz ok; policy {POLICY_ID} still published; a second screening: "
        f"{eligible:,} eligible, none notified twice; {PRODUCT_ID} still on the market"
    )


def _market(demo: Demo) -> Any:
    from fedcredit.common.pki import org_files
    from fedcredit.market.client import MarketClient

    assert demo.dep is not None
    svc = demo.dep.service("market")
    bank = demo.dep.banks[0]
    return bank, MarketClient(svc.address, org_files(demo.dep.pki_dir, bank), server_org=svc.org_id)


def check_market(demo: Demo) -> None:
    """A bank publishes a product on the marketplace's container and finds it listed."""
    bank, market = _market(demo)
    with market:
        got = market.publish_product(PRODUCT, request_id="compose-product-1")
        listed = [p.get("product_id") for p in market.products(bank)]
    if PRODUCT_ID not in listed:
        raise DemoFailed("market", f"published {PRODUCT_ID}, the market lists {listed}")
    demo.console.print(
        f"marketplace: {bank} published {PRODUCT_ID} (ledger entry {got['ledger_index']}); "
        f"listed with {len(listed) - 1} other product(s)"
    )


def _product_listed(demo: Demo) -> bool:
    bank, market = _market(demo)
    with market:
        return PRODUCT_ID in [p.get("product_id") for p in market.products(bank)]

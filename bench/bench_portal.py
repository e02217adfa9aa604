"""Portal benchmark: pages' server time under 50 concurrent signed-in users, and the
enterprise's access page with 1,000 ledger entries rendered and verified in Chromium.

Everything runs here, on loopback: the ledger and the consent service (with
PasskeyService) over gRPC with mTLS, and the portal (uvicorn, one process). Each user
enrols a passkey and signs in through the portal (a software authenticator), then asks
for its consents page and its access page in a loop. Server time is the portal's own
``Server-Timing`` (the page handler, service calls included); the floor in the same run
is ``GET /healthz`` (no session, no service call) under the same concurrency.

Run: ``python -m bench.bench_portal [--users 50] [--seconds 20] [--entries 1000]``.
Writes bench/results/portal.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import socket
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from fedcredit.common import pki, uscc
from fedcredit.common.departments import DEFAULT_BANKS
from fedcredit.common.tls import Identity
from fedcredit.consent.authority import ConsentAuthority
from fedcredit.consent.passkey_client import PasskeyClient
from fedcredit.consent.passkeys import PasskeyAuthority
from fedcredit.consent.settings import ConsentSettings
from fedcredit.consent.store import ConsentStore
from fedcredit.consent.terms import ConsentTerms
from fedcredit.ledger.client import LedgerClient
from fedcredit.portal.app import build_app
from fedcredit.portal.backend import Backend
from fedcredit.portal.settings import PortalSettings
from tests.consent.softkey import SoftKey

RESULTS = Path(__file__).resolve().parent / "results" / "portal.json"
BANK = DEFAULT_BANKS[0]
CHROMIUM = "/usr/bin/chromium"
OPERATOR = Identity("operator", "operator", b"")


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] if s else float("nan")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def federation(d: Path) -> Iterator[dict[str, Any]]:
    """Ledger, consent (+ passkeys) and the portal, on loopback."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from fedcredit.common.server import build_aio_server, mark_serving
    from fedcredit.consent.service import serve, stop
    from fedcredit.ledger.log import Log
    from fedcredit.ledger.service import LedgerServicer, register_ledger
    from fedcredit.ledger.settings import LedgerSettings, LogSettings

    orgs = [("consent-service", "consent"), ("ledger", "ledger"), ("operator", "operator"),
            ("portal", "portal"), (BANK, "bank")]  # fmt: skip
    files = pki.init_pki(d / "pki", orgs)
    log = Log.open(f"sqlite:///{d / 'ledger.sqlite'}", Ed25519PrivateKey.generate(), "ledger/central",
                   actor="ledger", settings=LogSettings(checkpoint_interval=0.5))  # fmt: skip
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    servicer = LedgerServicer(log, LedgerSettings())

    async def start_ledger() -> tuple[Any, int]:
        server, port = build_aio_server(address="127.0.0.1:0", tls=files["ledger"],
            register=lambda s: register_ledger(s, servicer), service_names=["fedcredit.v1.LedgerService"])  # fmt: skip
        await server.start()
        await mark_serving(server)
        return server, port

    lserver, lport = asyncio.run_coroutine_threadsafe(start_ledger(), loop).result(30)
    sink = LedgerClient(f"127.0.0.1:{lport}", files["consent-service"], server_org="ledger")
    bank_id = files[BANK].identity()
    authority = ConsentAuthority(ConsentStore(f"sqlite:///{d / 'consent.sqlite'}"), ConsentSettings(),
        sink=sink, banks=[BANK], bank_certs=lambda b: bank_id.cert_sha256 if b == BANK else None)  # fmt: skip
    port = _port()
    settings = PortalSettings(address=f"127.0.0.1:{port}", signin_burst=10_000)
    passkeys = PasskeyAuthority(authority, rp_id="localhost", origins=[settings.url])
    cserver, cport = serve(authority, address="127.0.0.1:0", tls=files["consent-service"], passkeys=passkeys)  # fmt: skip
    # the ledger reads an enterprise's entries for the portal only under its delegation
    # ticket (consent/delegation.py), checked as the ledger daemon checks it
    from fedcredit.consent.passkey_client import RemoteDelegationVerifier

    delegation = RemoteDelegationVerifier(consent_address=f"127.0.0.1:{cport}", tls=files["ledger"],
        server_org="consent-service", issuer=authority.settings.issuer, audience="ledger")  # fmt: skip
    servicer.delegation = delegation.verifier
    # The portal in a process of its own (as `fedcredit portal serve` runs it): the load
    # generator here must not share its interpreter.
    import multiprocessing

    child = multiprocessing.get_context("spawn").Process(
        target=serve_portal, args=(port, cport, lport, str(d / "pki")), daemon=True
    )
    child.start()
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline or not child.is_alive():
            raise RuntimeError("the portal did not start within 60 s")
        time.sleep(0.2)
    try:
        yield {
            "url": settings.url,
            "authority": authority,
            "passkeys": passkeys,
            "log": log,
            "bank": bank_id,
        }
    finally:
        child.terminate()
        child.join(10)
        stop(cserver, authority)
        delegation.close()
        sink.close()
        asyncio.run_coroutine_threadsafe(lserver.stop(0), loop).result(10)
        log.close()


def serve_portal(port: int, cport: int, lport: int, pki_dir: str) -> None:
    """The portal process: its own certificate, the services' addresses."""
    import uvicorn

    files = pki.org_files(Path(pki_dir), "portal")
    settings = PortalSettings(address=f"127.0.0.1:{port}", signin_burst=10_000)
    backend = Backend(
        PasskeyClient(f"127.0.0.1:{cport}", files, server_org="consent-service"),
        LedgerClient(f"127.0.0.1:{lport}", files, server_org="ledger"),
    )
    uvicorn.run(build_app(settings, backend), host="127.0.0.1", port=port, log_level="warning",
                lifespan="off", ws="none")  # fmt: skip


class User:
    """One signed-in enterprise (its own session cookie, kept by hand: it is Secure)."""

    def __init__(self, base: str, org: str) -> None:
        self.base, self.org, self.sid, self.csrf = base, org, "", ""

    def _keep(self, r: httpx.Response) -> httpx.Response:
        for h in r.headers.get_list("set-cookie"):
            m = re.match(r"fc_session=([^;]+)", h)
            if m:
                self.sid = m.group(1)
        m = re.search(r'name="csrf-token" content="([^"]+)"', r.text)
        if m:
            self.csrf = m.group(1)
        return r

    def sign_up(self, c: httpx.Client, fed: dict[str, Any]) -> None:
        key = SoftKey(fed["url"])
        code, _ = fed["passkeys"].issue_enrol_code(OPERATOR, self.org, "enterprise", 3600)

        def h() -> dict[str, str]:
            return {"cookie": f"fc_session={self.sid}", "x-csrf-token": self.csrf, "accept": "application/json"}  # fmt: skip

        self._keep(c.get("/enrol", headers=h()))
        o = self._keep(
            c.post("/enrol/begin", json={"org": self.org, "code": code}, headers=h())
        ).json()
        self._keep(
            c.post("/enrol/finish", json={"credential": key.create(o["options"])}, headers=h())
        )
        self._keep(c.get("/signin", headers=h()))
        o = self._keep(c.post("/signin/begin", json={"org": self.org}, headers=h())).json()
        r = self._keep(
            c.post("/signin/finish", json={"assertion": key.get(o["options"])}, headers=h())
        )
        assert r.status_code == 200, r.text
        self._keep(c.get("/enterprise", headers=h()))


def seed(fed: dict[str, Any], org: str, n_consents: int) -> None:
    """A few consents per enterprise: pending requests and direct grants (their events
    are ledger entries about the enterprise)."""
    a: ConsentAuthority = fed["authority"]
    ent = Identity(org, "enterprise", b"")
    for i in range(n_consents):
        t = ConsentTerms(org, BANK, "credit_assessment", ["judicial", "operations_tax"], max_uses=3)
        if i % 2:
            a.request(fed["bank"], t)
        else:
            a.grant(ent, t)


async def load(base: str, users: list[User], seconds: float, paths: list[str]) -> dict[str, list[float]]:  # fmt: skip
    """Each user asks for ``paths`` in turn until ``seconds`` pass: the server times."""
    out: dict[str, list[float]] = {p: [] for p in paths}
    deadline = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=len(users) + 5)
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as c:

        async def one(u: User) -> None:
            i = 0
            while time.monotonic() < deadline:
                path = paths[i % len(paths)]
                i += 1
                r = await c.get(path, headers={"cookie": f"fc_session={u.sid}"})
                if r.status_code != 200:
                    raise RuntimeError(f"{path}: HTTP {r.status_code} for {u.org}")
                m = re.search(r"dur=([0-9.]+)", r.headers.get("server-timing", ""))
                out[path].append(float(m.group(1)) if m else float("nan"))

        await asyncio.gather(*(one(u) for u in users))
    return out


def run_load(base: str, sessions: list[tuple[str, str]], seconds: float, paths: list[str]) -> dict[str, list[float]]:  # fmt: skip
    """The load generator, in a process of its own (spawned): it must not share the
    interpreter of the services it measures."""
    users = []
    for org, sid in sessions:
        u = User(base, org)
        u.sid = sid
        users.append(u)
    return asyncio.run(load(base, users, seconds, paths))


def browser_access_page(fed: dict[str, Any], org: str, entries: int, runs: int) -> dict[str, float]:
    """An enterprise with ``entries`` ledger entries: Chromium loads its access page and
    verifies every proof and the checkpoint; ms from navigation start to done."""
    from playwright.sync_api import sync_playwright

    log = fed["log"]
    items = [("consent_event", org, {"event": "used", "n": i, "bank": BANK}) for i in range(entries)]  # fmt: skip
    for i in range(0, len(items), 500):
        log.append_many(items[i : i + 500])
    log.checkpoint()
    key = SoftKey(fed["url"])
    code, _ = fed["passkeys"].issue_enrol_code(OPERATOR, org, "enterprise", 3600)
    times, verify, server = [], [], []
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"])  # fmt: skip
        ctx = b.new_context()
        page = ctx.new_page()
        cdp = ctx.new_cdp_session(page)
        cdp.send("WebAuthn.enable", {"enableUI": False})
        cdp.send("WebAuthn.addVirtualAuthenticator", {"options": {"protocol": "ctap2", "transport": "internal",
                 "hasResidentKey": True, "hasUserVerification": True, "isUserVerified": True,
                 "automaticPresenceSimulation": True}})  # fmt: skip
        page.goto(fed["url"] + "/enrol")
        page.fill("#org", org)
        page.fill("#code", code)
        page.click("form#enrol button[type=submit]")
        page.wait_for_url("**/signin")
        page.fill("#org", org)
        page.click("form#signin button[type=submit]")
        page.wait_for_url("**/enterprise")
        for _ in range(runs):
            resp = page.goto(fed["url"] + "/enterprise/access")
            page.wait_for_selector("body[data-proofs-done='1']", timeout=60_000)
            done = page.evaluate("() => performance.now()")
            n_ok = page.locator("td.proof[data-status=verified]").count()
            if n_ok < entries:
                raise RuntimeError(f"only {n_ok} of {entries} proofs verified")
            times.append(float(done))
            verify.append(float(page.get_attribute("body", "data-verified-ms") or "nan"))
            m = re.search(
                r"dur=([0-9.]+)", (resp.headers.get("server-timing") if resp else "") or ""
            )
            server.append(float(m.group(1)) if m else float("nan"))
        b.close()
    del key
    return {"load_and_verify_ms": statistics.median(times), "verify_ms": statistics.median(verify),
            "server_ms": statistics.median(server), "max_ms": max(times)}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--users", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--consents", type=int, default=6, help="consents per user")
    ap.add_argument("--entries", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    console = Console()
    rng = random.Random(19)
    rows: list[dict[str, Any]] = []
    load_before = os.getloadavg()[0]  # the machine is shared: say how loaded it was
    with tempfile.TemporaryDirectory() as tmp, federation(Path(tmp)) as fed:
        base = fed["url"].replace("localhost", "127.0.0.1")
        users = [User(base, uscc.generate(rng)) for _ in range(args.users)]
        with httpx.Client(base_url=base, timeout=60) as c:
            for i, u in enumerate(users, 1):
                seed(fed, u.org, args.consents)
                u.sign_up(c, fed)
                if i % 10 == 0:
                    console.print(f"signed in {i}/{len(users)} users")
        fed["authority"].deliver_events()
        fed["log"].checkpoint()
        console.print(f"{args.users} users for {args.seconds:.0f} s on /enterprise and /enterprise/access ...")  # fmt: skip
        import multiprocessing

        # /signin renders a template and calls no service: the floor of a page's server time
        paths = ["/enterprise", "/enterprise/access", "/signin"]
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            got = pool.apply(run_load, (base, [(u.org, u.sid) for u in users], args.seconds, paths))
        for path, vals in got.items():
            floor = path == "/signin"
            name = f"floor: GET {path} (template only)" if floor else f"GET {path}"
            p95 = round(pct(vals, 0.95), 2)
            rows.append({"metric": f"{name} server time p95, {args.users} users", "value": p95, "unit": "ms", "target": None if floor else "<= 50", "met": None if floor else p95 <= 50,
                         "p50": round(pct(vals, 0.5), 2), "p99": round(pct(vals, 0.99), 2), "n": len(vals)})  # fmt: skip
        console.print(f"access page with {args.entries} entries in Chromium ...")
        b = browser_access_page(fed, uscc.generate(rng), args.entries, args.runs)
        rows.append({"metric": f"access page, {args.entries} entries: load + verify in Chromium (median of {args.runs})", "value": round(b["load_and_verify_ms"], 1), "unit": "ms",
                     "target": "<= 2000", "met": b["load_and_verify_ms"] <= 2000, "verify_ms": round(b["verify_ms"], 1), "server_ms": round(b["server_ms"], 1), "max_ms": round(b["max_ms"], 1)})  # fmt: skip
    t = Table(title="portal")
    for col in ("metric", "value", "unit", "target", "met", "detail"):
        t.add_column(col)
    for r in rows:
        detail = ", ".join(f"{k}={r[k]}" for k in ("p50", "p99", "n", "verify_ms", "server_ms", "max_ms") if k in r)  # fmt: skip
        t.add_row(r["metric"], str(r["value"]), r["unit"], str(r["target"] or ""), "" if r["met"] is None else str(r["met"]), detail)  # fmt: skip
    console.print(t)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    machine = f"shared 2-core machine, load average (1 min) {load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end"  # fmt: skip
    console.print(machine)
    RESULTS.write_text(json.dumps({"rows": rows, "machine": machine}, indent=2) + "\n")  # fmt: skip


if __name__ == "__main__":
    main()

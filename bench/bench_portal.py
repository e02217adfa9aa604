"""Portal benchmark: pages' server time under 50 concurrent signed-in users, and the
enterprise's access page with 1,000 ledger entries rendered and verified in Chromium.

Deployed as a deployment runs it: ``fedcredit init`` writes a local deployment and the
ledger, the consent service (with PasskeyService) and the portal start as ``fedcredit up``
starts them (clients/supervisor.py: ``fedcredit ledger serve``, ``fedcredit consent serve``,
``fedcredit portal serve``, each a process of its own, gRPC with mTLS between them). The
portal runs one uvicorn worker, as ``fedcredit portal serve`` does: sessions live in the
portal process, so a second worker would not know the first one's sign-ins. The load
generator is a process of its own too (an ``httpx.AsyncClient``, one task per user), run
twice: first as people use pages (each user thinks 1-3 s between pages, uniformly drawn, as
locust's ``between(1, 3)``: the rows with the 50 ms target), then as a stress test with no
think time (each user asks for its next page as soon as the last one arrived: 50 closed
loops, several hundred requests per second, far beyond what 50 people click; no target, it
shows where the 2-core machine saturates).

Each user enrols a passkey and signs in through the portal (a software authenticator),
then asks for its consents page, its access page and the two floors in turn. Two times
per request: the server time (the portal's own ``Server-Timing``: the page handler,
service calls included) and the response time the client saw (the HTTP stack and the
event loop's queue included). Floors in the same run, same users, same server:
``GET /healthz`` (the bare server stack: no session, no template, no service call) and
``GET /signin`` (session and template, no service call).

Run: ``python -m bench.bench_portal [--users 50] [--seconds 20] [--entries 1000]``.
Writes bench/results/portal.json. ``FEDCREDIT_PORTAL_PROFILE=FILE`` profiles the portal
process (cProfile; stats written to FILE when it stops).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import statistics
import tempfile
import time
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import tomli_w
from rich.console import Console
from rich.table import Table

from fedcredit.clients.supervisor import Supervisor, service_specs
from fedcredit.common import uscc
from fedcredit.common.config import Deployment, load_config
from fedcredit.common.departments import DEFAULT_BANKS
from fedcredit.common.deploy import write_local_deployment
from fedcredit.consent.client import ConsentClient
from fedcredit.consent.passkey_client import PasskeyClient
from fedcredit.consent.terms import ConsentTerms
from tests.consent.softkey import SoftKey

RESULTS = Path(__file__).resolve().parent / "results" / "portal.json"
BANK = DEFAULT_BANKS[0]
CHROMIUM = "/usr/bin/chromium"
SERVICES = ("ledger", "consent", "portal")
PAGES = ["/enterprise", "/enterprise/access"]
FLOORS = {"/healthz": "bare server stack", "/signin": "session + template, no service call"}
# Think time between a user's pages (s, uniform), as locust's between(1, 3): 50 people, not 50 loops.
THINK = (1.0, 3.0)


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] if s else float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (``/proc/PID/stat``, proc(5))."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def write_deployment(d: Path, browser_org: str, entries: int) -> Deployment:
    """A local deployment (one bank) whose portal lets 50 sign-ins come from one address,
    and whose ledger already holds ``entries`` entries about ``browser_org``."""
    cfg = write_local_deployment(d, name="portalbench", bank_count=1)
    data = tomllib.loads(cfg.read_text())
    data["portal"]["signin_burst"] = 10_000  # every user signs in from 127.0.0.1
    cfg.write_text(tomli_w.dumps(data))
    dep = load_config(cfg)
    seed_ledger(dep, browser_org, entries)
    return dep


def seed_ledger(dep: Deployment, org: str, entries: int) -> None:
    """The ledger's own store, written with the ledger's own key before it starts (as a
    long-running deployment would have it: entries about the enterprise, checkpointed)."""
    from fedcredit.ledger.keys import log_signer
    from fedcredit.ledger.log import Log
    from fedcredit.ledger.settings import load_settings

    settings = load_settings(dep.section("ledger"))
    svc = dep.service("ledger")
    log = Log.open(svc.database, log_signer(dep, settings.origin), settings.origin,
                   actor=svc.org_id, settings=settings.log)  # fmt: skip
    try:
        items = [("consent_event", org, {"event": "used", "n": i, "bank": BANK}) for i in range(entries)]  # fmt: skip
        for i in range(0, len(items), 500):
            log.append_many(items[i : i + 500])
        log.checkpoint()
    finally:
        log.close()


@contextmanager
def federation(dep: Deployment) -> Iterator[dict[str, Any]]:
    """Ledger, consent and portal as ``fedcredit up`` runs them; ``fedcredit down`` after."""
    sup = Supervisor(dep)
    specs = [s for s in service_specs(dep) if s.name in SERVICES]
    try:
        sup.start(specs, timeout=120)
        portal = next(s for s in specs if s.name == "portal")
        port = int(portal.address.rpartition(":")[2])
        consent = dep.service("consent").address
        with PasskeyClient.from_deployment(dep, "operator") as op, \
                ConsentClient(consent, dep.tls(BANK), server_org="consent-service") as bank:  # fmt: skip
            yield {"url": f"http://localhost:{port}", "base": f"http://127.0.0.1:{port}",
                   "operator": op, "bank": bank, "supervisor": sup}  # fmt: skip
    finally:
        sup.stop([s.name for s in specs])


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
        """Enrol a passkey with the operator's one-time code, then sign in with it."""
        key = SoftKey(fed["url"])
        code = fed["operator"].issue_enrol_code(self.org, "enterprise", 3600).code

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
        if r.status_code != 200:
            raise RuntimeError(f"sign-in of {self.org}: expected HTTP 200, got {r.status_code}: {r.text}")  # fmt: skip
        self._keep(c.get("/enterprise", headers=h()))


def seed(fed: dict[str, Any], org: str, n_consents: int) -> None:
    """The bank asks each enterprise for a few consents (pending on its consents page; each
    request is a ledger entry about the enterprise on its access page)."""
    for _ in range(n_consents):
        fed["bank"].request(ConsentTerms(org, BANK, "credit_assessment", ["judicial", "operations_tax"], max_uses=3))  # fmt: skip


async def load(base: str, sessions: list[tuple[str, str]], seconds: float, paths: list[str], think: tuple[float, float] | None) -> dict[str, Any]:  # fmt: skip
    """Each user asks for ``paths`` in turn until ``seconds`` pass, thinking a uniformly
    drawn ``think`` seconds between pages (None: no think time): per path the server times
    (``Server-Timing``, where the page sends one) and the response times seen here."""
    server: dict[str, list[float]] = {p: [] for p in paths}
    response: dict[str, list[float]] = {p: [] for p in paths}
    service: dict[str, list[float]] = {p: [] for p in paths}  # of the server time: service calls
    deadline = time.monotonic() + seconds

    async def one(i: int, org: str, sid: str) -> None:
        rng = random.Random(i)  # each user its own think times, the same in every run
        if think is not None:  # people arrive over one think time, not all in the same ms
            await asyncio.sleep(rng.uniform(0, think[1]))
        # a client per user, as a browser keeps its own connection: one shared pool of 50
        # connections costs the generator more CPU per request than the portal spends
        async with httpx.AsyncClient(base_url=base, timeout=60, limits=httpx.Limits(max_connections=1)) as c:  # fmt: skip
            while time.monotonic() < deadline:
                path = paths[i % len(paths)]
                i += 1
                t0 = time.perf_counter()
                r = await c.get(path, headers={"cookie": f"fc_session={sid}"})
                response[path].append((time.perf_counter() - t0) * 1000)
                if r.status_code != 200:
                    raise RuntimeError(f"{path}: expected HTTP 200, got {r.status_code} for {org}")  # fmt: skip
                timing = r.headers.get("server-timing", "")
                m = re.search(r"app;dur=([0-9.]+)", timing)
                if m:
                    server[path].append(float(m.group(1)))
                m = re.search(r"svc;dur=([0-9.]+)", timing)
                if m:
                    service[path].append(float(m.group(1)))
                if think is not None:
                    await asyncio.sleep(rng.uniform(*think))

    await asyncio.gather(*(one(i, org, sid) for i, (org, sid) in enumerate(sessions)))
    return {"server": server, "response": response, "service_wait": service}


def run_load(base: str, sessions: list[tuple[str, str]], seconds: float, paths: list[str], think: tuple[float, float] | None) -> dict[str, Any]:  # fmt: skip
    """The load generator, in a process of its own (spawned): it must not share the
    interpreter of the services it measures. Its own CPU time is reported: a generator
    that needs a whole core would measure itself."""
    cpu0 = time.process_time()
    got = asyncio.run(load(base, sessions, seconds, paths, think))
    got["cpu_s"] = time.process_time() - cpu0
    return got


def browser_access_page(fed: dict[str, Any], org: str, entries: int, runs: int) -> dict[str, float]:
    """An enterprise with ``entries`` ledger entries: Chromium loads its access page and
    verifies every proof and the checkpoint; ms from navigation start to done."""
    from playwright.sync_api import sync_playwright

    code = fed["operator"].issue_enrol_code(org, "enterprise", 3600).code
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
                r"app;dur=([0-9.]+)", (resp.headers.get("server-timing") if resp else "") or ""
            )
            server.append(float(m.group(1)) if m else float("nan"))
        b.close()
    return {"load_and_verify_ms": statistics.median(times), "verify_ms": statistics.median(verify),
            "server_ms": statistics.median(server), "max_ms": max(times)}  # fmt: skip


def _stats(vals: list[float]) -> dict[str, Any]:
    return {"p50": round(pct(vals, 0.5), 2), "p95": round(pct(vals, 0.95), 2),
            "p99": round(pct(vals, 0.99), 2), "n": len(vals)}  # fmt: skip


def load_rows(got: dict[str, Any], users: int, how: str, targeted: bool) -> list[dict[str, Any]]:
    """One row per path: the server time p95 is the value (the issue's measure; the floor
    /healthz sends no Server-Timing, so its value is the response time), the part of it
    spent waiting for service calls, the response times beside it, and each page's
    response p95 read against the bare stack's (/healthz)."""
    rows: list[dict[str, Any]] = []
    floor_resp = pct(got["response"]["/healthz"], 0.95)
    for path in [*PAGES, *FLOORS]:
        srv, resp = got["server"][path], got["response"][path]
        page = path in PAGES
        what = "server" if srv else "response"
        name = f"GET {path}" if page else f"floor: GET {path} ({FLOORS[path]})"
        aim = page and targeted
        row: dict[str, Any] = {"metric": f"{name} {what} time p95, {users} users, {how}",
            "value": round(pct(srv or resp, 0.95), 2), "unit": "ms",
            "target": "<= 50" if aim else None, "met": pct(srv, 0.95) <= 50 if aim else None,
            "server": _stats(srv) if srv else None, "response": _stats(resp),
            "service_wait": _stats(got["service_wait"][path]) if page else None}  # fmt: skip
        if page:
            row["response_p95_over_healthz_floor"] = round(pct(resp, 0.95) / floor_resp, 1)
        rows.append(row)
    return rows


def measure(fed: dict[str, Any], args: argparse.Namespace, rng: random.Random, console: Console) -> tuple[list[dict[str, Any]], dict[str, Any]]:  # fmt: skip
    """Sign the users in, then the load: the rows, and what the run cost (requests per
    second; each process's CPU during the load, in % of one core)."""
    import multiprocessing

    users = [User(fed["base"], uscc.generate(rng)) for _ in range(args.users)]
    with httpx.Client(base_url=fed["base"], timeout=60) as c:
        for i, u in enumerate(users, 1):
            seed(fed, u.org, args.consents)
            u.sign_up(c, fed)
            if i % 10 == 0:
                console.print(f"signed in {i}/{len(users)} users")
    sup: Supervisor = fed["supervisor"]
    pids = {name: sup.pid(name) for name in SERVICES}
    sessions = [(u.org, u.sid) for u in users]
    rows: list[dict[str, Any]] = []
    during: dict[str, Any] = {}
    for phase, think in (("think 1-3 s", THINK), ("no think time (stress)", None)):
        console.print(f"{args.users} users for {args.seconds * (3 if think else 1):.0f} s, {phase}, on {', '.join(PAGES)} and the floors ...")  # fmt: skip
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            cpu0 = {n: cpu_seconds(p) for n, p in pids.items() if p}
            t0 = time.monotonic()
            # with think time a user asks ~0.5 pages/s: 3x longer for enough samples per page
            secs = args.seconds * (3 if think is not None else 1)
            got = pool.apply(run_load, (fed["base"], sessions, secs, [*PAGES, *FLOORS], think))  # fmt: skip
            wall = time.monotonic() - t0
            cpu = {n: round(100 * (cpu_seconds(p) - cpu0[n]) / wall, 1) for n, p in pids.items() if p}  # fmt: skip
        cpu["load generator"] = round(100 * got["cpu_s"] / wall, 1)
        n = sum(len(v) for v in got["response"].values())
        rows += load_rows(got, args.users, phase, targeted=think is not None)
        during[phase] = {"requests_per_s": round(n / wall, 1), "cpu_percent_of_a_core": cpu}
    return rows, during


def print_table(console: Console, rows: list[dict[str, Any]], machine: str) -> None:
    t = Table(title=f"portal ({machine})")
    for col in ("metric", "value", "unit", "target", "met", "server p50/p95/p99", "of which service calls p50/p95", "response p50/p95/p99", "n / detail"):  # fmt: skip
        t.add_column(col)
    for r in rows:
        srv, resp = r.get("server"), r.get("response")
        detail = f"n={resp['n']}" if resp else ", ".join(f"{k}={r[k]}" for k in ("verify_ms", "server_ms", "max_ms") if k in r)  # fmt: skip
        if "response_p95_over_healthz_floor" in r:
            detail += f", response p95 / /healthz floor p95: {r['response_p95_over_healthz_floor']}x"  # fmt: skip
        t.add_row(r["metric"], str(r["value"]), r["unit"], str(r["target"] or ""), "" if r["met"] is None else ("yes" if r["met"] else "no"),
                  "/".join(str(srv[k]) for k in ("p50", "p95", "p99")) if srv else "",
                  "/".join(str(r["service_wait"][k]) for k in ("p50", "p95")) if r.get("service_wait") else "",
                  "/".join(str(resp[k]) for k in ("p50", "p95", "p99")) if resp else "", detail)  # fmt: skip
    console.print(t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--users", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--consents", type=int, default=6, help="consents per user")
    ap.add_argument("--entries", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    console = Console(width=max(Console().width, 180))
    rng = random.Random(19)
    load_start = os.getloadavg()  # the machine is shared: say how loaded it was
    with tempfile.TemporaryDirectory() as tmp:
        browser_org = uscc.generate(rng)
        dep = write_deployment(Path(tmp) / "dep", browser_org, args.entries)
        with federation(dep) as fed:
            rows, during = measure(fed, args, rng, console)
            load_mid = os.getloadavg()
            console.print(f"access page with {args.entries} entries in Chromium ...")
            b = browser_access_page(fed, browser_org, args.entries, args.runs)
    rows.append({"metric": f"access page, {args.entries} entries: load + verify in Chromium (median of {args.runs})", "value": round(b["load_and_verify_ms"], 1), "unit": "ms",
                 "target": "<= 2000", "met": b["load_and_verify_ms"] <= 2000, "verify_ms": round(b["verify_ms"], 1), "server_ms": round(b["server_ms"], 1), "max_ms": round(b["max_ms"], 1)})  # fmt: skip
    load_end = os.getloadavg()
    machine = f"{os.cpu_count()} cores, shared; load average (1 min) {load_start[0]:.1f} at the start, {load_mid[0]:.1f} after the load, {load_end[0]:.1f} at the end"  # fmt: skip
    print_table(console, rows, machine)
    for phase, d in during.items():
        cpu = ", ".join(f"{k} {v} %" for k, v in d["cpu_percent_of_a_core"].items())
        console.print(f"during the load ({phase}): {d['requests_per_s']} requests/s; CPU (% of one core): {cpu}")  # fmt: skip
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    out = {"rows": rows, "machine": machine, "cores": os.cpu_count(),
           "during_load": during, "load_average_1min": {"start": round(load_start[0], 2), "after_load": round(load_mid[0], 2), "end": round(load_end[0], 2)},
           "design": {"services": "ledger, consent, portal: one process each, started as `fedcredit up` starts them",
                      "portal_workers": 1, "load_generator": "own process, httpx.AsyncClient",
                      "users": args.users, "seconds": args.seconds, "think_time_s": [list(THINK), 0]}}  # fmt: skip
    RESULTS.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()

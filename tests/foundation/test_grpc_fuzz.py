"""Every method of every fedcredit gRPC service, fuzzed through real mTLS channels (issue 17).

The services run as real processes (`fedcredit up`: ledger, consent, one node with its
witness, coordinator). For each method found in the generated service descriptors, a
seeded generator of our own sends random, mutated, truncated and oversized messages as
raw bytes (so that bytes no client library would produce reach the server), as a bank
and as the coordinator. Every answer must be OK or a precise status: never INTERNAL or
UNKNOWN, an INVALID_ARGUMENT always carries a reason, and no message holds SQL text, a
Python class name, a traceback or an echoed oversized value.
"""

from __future__ import annotations

import json
import math
import random
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.rpc import error_details_pb2
from grpc_status import rpc_status

import fedcredit.v1
from fedcredit.common import tls as tls_mod
from fedcredit.common.config import load_config
from fedcredit.common.deploy import write_local_deployment

pytestmark = pytest.mark.xdist_group("up-down")

NODE = "tax"
SERVICE_HOST = {  # gRPC service -> the deployment service that serves it
    "ConsentService": "consent",
    "PasskeyService": "consent",  # served beside it when the deployment has a portal
    "ScoringService": "coordinator",
    "GuaranteeService": "coordinator",
    "ModelRegistry": "coordinator",
    "FeatureService": f"node-{NODE}",
    "WitnessService": f"node-{NODE}",
    "LedgerService": "ledger",
}
# Services `fedcredit up` does not run (each started by its own command with its own
# arguments); they sit behind the same interceptor (common.server) but are not fuzzed here.
NOT_RUN_BY_UP: dict[str, str] = {}
# Services `up` does not run (each has its own serve command and arguments) that this test
# hosts itself, in-process, on the test PKI: the same build_server and interceptor.
IN_PROCESS = {"PolicyService": "policies", "MarketService": "market"}
CASES_PER_METHOD = 30
LEAKS = re.compile(
    r"sqlite3|psycopg|sqlalchemy|\[SQL|SELECT |INSERT INTO|Traceback|<class |"
    r"\b[A-Z][a-z]\w*(?:Error|Exception)\b|File \""
)


def fc(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fedcredit.clients.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def policies_host(pki: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The PolicyService (empty registry, its own log) on the session PKI."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from fedcredit.ledger.log import Log
    from fedcredit.policies.service import PolicyServicer, build_policy_server
    from fedcredit.policies.store import PolicyStore

    d = tmp_path_factory.mktemp("policies")
    pki.issue("policies", "policy")
    store = PolicyStore.open(f"sqlite:///{d / 'pol.sqlite'}")
    ledger = Log.open(f"sqlite:///{d / 'l.sqlite'}", Ed25519PrivateKey.generate(), "platform")
    servicer = PolicyServicer(store=store, ledger=ledger, nodes={})
    server = build_policy_server(servicer, address="127.0.0.1:0", tls=pki.tls("policies"))
    server.start()
    try:
        yield f"127.0.0.1:{server.port}"
    finally:
        server.stop()


@pytest.fixture(scope="module")
def market_host(pki: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The MarketService (empty store, its own log, no coordinator) on the session PKI."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from fedcredit.ledger.log import Log
    from fedcredit.market.service import Marketplace
    from fedcredit.market.servicer import serve
    from fedcredit.market.store import MarketStore

    d = tmp_path_factory.mktemp("market")
    log = Log.open(f"sqlite:///{d / 'l.sqlite'}", Ed25519PrivateKey.generate(), "m", actor="market")
    market = Marketplace(MarketStore(f"sqlite:///{d / 'm.sqlite'}"), log, guarantees=None)
    server, port = serve(market, "127.0.0.1:0", pki.issue("market", "market"))
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(1).wait()


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    cfg = write_local_deployment(tmp_path_factory.mktemp("fuzz") / "dep", name="fuzz", bank_count=2)
    only = ["ledger", "consent", f"node-{NODE}", "coordinator"]
    try:
        up = fc("up", "--config", str(cfg), *[a for s in only for a in ("--only", s)], "--json")
        rows = {r["service"]: r for r in json.loads(up.stdout or "[]")} if up.stdout else {}
        assert all(rows.get(s, {}).get("healthy") for s in only), up.stdout + up.stderr
        yield cfg
    finally:
        fc("down", "--config", str(cfg), "--json")


# ---------------------------------------------------------------- the generator
_INTS = [0, 1, -1, 2, 7, 255, 2**31 - 1, -(2**31), 2**32 - 1, 2**53, 2**63 - 1, -(2**63)]
_U64 = [0, 1, 2, 1000, 2**32, 2**53, 2**63 - 1, 2**63, 2**64 - 1]
_STRINGS = [
    "",
    "x",
    "91371000MA3C1234X5",
    "c_" + "0" * 16,
    "bank-icbc-weihai",
    "dept-tax",
    "coordinator",
    "score_access",
    "credit_assessment",
    "\u0000",
    "é\u202e\U0001f600",
    "' OR 1=1 --",
    "%s%n{0}",
    "{",
    "eyJhbGciOiJFZERTQSJ9.e30.",
    # JSON where JSON is read (statements, assertions, credentials, fields), of the wrong shape
    '{"nonce": [1], "org": {"a": 1}, "action": null, "consent": 7}',
    '{"action": "activate_model", "org": 1, "nonce": "n", "model": {"version": []}}',
    '{"id": "x", "rawId": "x", "response": {"clientDataJSON": 5}, "type": "public-key"}',
    "[]",
    "null",
    "1e999",
    '{"a": ' * 200 + "1" + "}" * 200,
]


def _string(rng: random.Random) -> str:
    r = rng.random()
    if r < 0.5:
        return rng.choice(_STRINGS)
    if r < 0.8:
        return "".join(chr(rng.randrange(32, 0x2FFF)) for _ in range(rng.randrange(1, 40)))
    if r < 0.95:
        return rng.choice("AZ9-_") * rng.randrange(100, 5_000)
    return "Q" * rng.choice([20_000, 300_000, 1_000_000])


def _small(f: FieldDescriptor, rng: random.Random) -> Any:
    if f.type == FieldDescriptor.TYPE_STRING:
        return rng.choice(_STRINGS)
    if f.type == FieldDescriptor.TYPE_BYTES:
        return rng.randbytes(32)
    return _scalar(f, rng)


def _scalar(f: FieldDescriptor, rng: random.Random) -> Any:
    t = f.type
    if t == FieldDescriptor.TYPE_STRING:
        return _string(rng)
    if t == FieldDescriptor.TYPE_BYTES:
        n = rng.choice([0, 1, 31, 32, 33, 64, 1_000, 100_000])
        return rng.randbytes(n)
    if t == FieldDescriptor.TYPE_BOOL:
        return rng.random() < 0.5
    if t == FieldDescriptor.TYPE_ENUM:
        known = [v.number for v in f.enum_type.values]  # type: ignore[union-attr]
        return rng.choice([*known, max(known) + 1, 99, 2**31 - 1, -1])
    if t in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return rng.choice([0.0, -1.0, 1e308, -1e308, math.nan, math.inf, 0.5, 1e-320])
    if t in (FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64):
        return rng.choice(_U64)
    if t in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32):
        return rng.choice([0, 1, 5, 1000, 2**31, 2**32 - 1])
    if t in (
        FieldDescriptor.TYPE_INT32,
        FieldDescriptor.TYPE_SINT32,
        FieldDescriptor.TYPE_SFIXED32,
    ):
        return rng.choice([v for v in _INTS if -(2**31) <= v < 2**31])
    return rng.choice(_INTS)


def fill(msg: Any, rng: random.Random, depth: int = 0) -> Any:
    d: Descriptor = msg.DESCRIPTOR
    for f in d.fields:
        if rng.random() < 0.35:
            continue
        repeated = f.is_repeated
        if f.type == FieldDescriptor.TYPE_MESSAGE:
            if depth > 3:
                continue
            if repeated:
                for _ in range(rng.choice([1, 2, 3, 50]) if depth == 0 else 1):
                    fill(getattr(msg, f.name).add(), rng, depth + 1)
            else:
                fill(getattr(msg, f.name), rng, depth + 1)
        elif repeated:
            n = rng.choice([1, 2, 5, 64, 65, 2_000, 300_000 if rng.random() < 0.2 else 3])
            values = [_scalar(f, rng) for _ in range(min(n, 8))]
            if n > 8:  # many items: short ones (a message stays under the 64 MB limit)
                values = [_small(f, rng)] * n
            getattr(msg, f.name).extend(values)
        else:
            setattr(msg, f.name, _scalar(f, rng))
    return msg


def payloads(input_type: Any, rng: random.Random, k: int) -> Iterator[bytes]:
    """Valid random messages, then mutations of them: truncated, bit-flipped, random bytes,
    a string field holding invalid UTF-8, oversized and deeply nested garbage."""
    for i in range(k):
        raw = fill(input_type(), rng).SerializeToString()
        kind = i % 6
        if kind == 1 and raw:
            raw = raw[: rng.randrange(len(raw))]
        elif kind == 2 and raw:
            b = bytearray(raw)
            for _ in range(rng.randrange(1, 8)):
                b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
            raw = bytes(b)
        elif kind == 3:
            raw = rng.randbytes(rng.choice([1, 7, 100, 4_000]))
        elif kind == 4:
            raw = b"\x0a\x04\xff\xfe\xfd\xfc" + raw  # field 1, length 4, not UTF-8
        elif kind == 5 and i % 12 == 5:
            raw = b"\x0a\x80\x80\x04" + b"\x0a" * 3 + raw  # a length beyond the message
        yield raw


# ---------------------------------------------------------------- the check
def _all_services() -> list[Any]:
    """Every service of every generated module (a new .proto is picked up by itself)."""
    import importlib
    import pkgutil

    out = []
    for info in pkgutil.iter_modules(fedcredit.v1.__path__):
        if info.name.endswith("_pb2"):
            mod = importlib.import_module(f"fedcredit.v1.{info.name}")
            out.extend(mod.DESCRIPTOR.services_by_name.values())
    return out


def _methods() -> list[tuple[str, Any]]:
    out = []
    for service in _all_services():
        if service.name in NOT_RUN_BY_UP:
            print(f"not fuzzed here: {service.name} ({NOT_RUN_BY_UP[service.name]})")
            continue
        for m in service.methods:
            out.append((service.name, m))
    return out


def _call(ch: grpc.Channel, m: Any, raw: bytes, timeout: float) -> tuple[grpc.StatusCode, Any]:
    path = f"/{m.containing_service.full_name}/{m.name}"
    try:
        if m.client_streaming and m.server_streaming:
            it = ch.stream_stream(path)(iter([raw, raw]), timeout=timeout)
            for _ in it:
                pass
        elif m.client_streaming:
            ch.stream_unary(path)(iter([raw]), timeout=timeout)
        elif m.server_streaming:
            for _ in ch.unary_stream(path)(raw, timeout=timeout):
                pass
        else:
            ch.unary_unary(path)(raw, timeout=timeout)
    except grpc.RpcError as exc:
        return exc.code(), exc  # type: ignore[attr-defined]
    return grpc.StatusCode.OK, None


def _problems(service: str, m: Any, raw: bytes, code: grpc.StatusCode, exc: Any) -> list[str]:
    where = f"{service}/{m.name} ({len(raw)} bytes)"
    if code == grpc.StatusCode.OK:
        return []
    details = exc.details() or ""
    out = []
    if code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
        out.append(f"{where}: {code.name} {details[:200]!r}")
    if LEAKS.search(details):
        out.append(f"{where}: the message leaks internals: {details[:300]!r}")
    if len(details) > 1_200 or re.search(r"\S{200,}", details):
        out.append(f"{where}: an oversized message ({len(details)} characters)")
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        status = rpc_status.from_call(exc)
        infos = [
            d
            for d in (status.details if status else [])
            if d.Is(error_details_pb2.ErrorInfo.DESCRIPTOR)
        ]
        if not infos:
            out.append(f"{where}: INVALID_ARGUMENT without an ErrorInfo reason: {details[:200]!r}")
        else:
            info = error_details_pb2.ErrorInfo()
            infos[0].Unpack(info)
            for v in info.metadata.values():
                if len(v) > 300 or LEAKS.search(v):
                    out.append(f"{where}: ErrorInfo metadata leaks or echoes: {v[:100]!r}")
    return out


def test_every_method_of_every_service_answers_malformed_input_precisely(
    deployment: Path, pki: Any, policies_host: str, market_host: str
) -> None:
    dep = load_config(deployment)
    methods = _methods()
    assert {s for s, _ in methods} == set(SERVICE_HOST) | set(IN_PROCESS), (
        "a service without a host"
    )
    # One caller of every role the deployment holds certificates for (the portal, a
    # department, the operator, ...): a method that refuses a role before it reads the
    # request is fuzzed as the roles it serves too. Derived, so a new role is included.
    by_role: dict[str, str] = {}
    for org in dep.organisations.values():
        by_role.setdefault(org.role, org.id)
    callers = sorted(by_role.values())
    addresses = {}
    for host in set(SERVICE_HOST.values()):
        if host.startswith("node-"):
            n = next(n for n in dep.nodes if n.department == NODE)
            addresses[host] = (n.address, n.org_id)
        else:
            s = dep.service(host)
            addresses[host] = (s.address, s.org_id)
    channels = {
        (host, who): tls_mod.channel(addr, dep.tls(who), server_org=org)
        for host, (addr, org) in addresses.items()
        for who in callers
    }
    for role, who in by_role.items():  # the in-process services trust the test PKI
        tls = pki.issue(who, role)
        channels[("policies", who)] = tls_mod.channel(policies_host, tls, server_org="policies")
        channels[("market", who)] = tls_mod.channel(market_host, tls, server_org="market")
    ent = "91371000MA3C1234X5"  # enterprises hold certificates only on the services' PKI
    callers.append(ent)
    for host, address in (("policies", policies_host), ("market", market_host)):
        channels[(host, ent)] = tls_mod.channel(
            address, pki.issue(ent, "enterprise"), server_org=host
        )
    for host in addresses:  # the deployment's services do not know it: the bank stands in
        channels[(host, ent)] = channels[(host, "bank-icbc-weihai")]
    rng = random.Random(17)
    problems: list[str] = []
    codes: Counter[str] = Counter()
    t0 = time.monotonic()
    try:
        for service, m in methods:
            input_type = _message_class(m.input_type)
            timeout = 1.0 if m.server_streaming else 15.0
            for i, raw in enumerate(payloads(input_type, rng, CASES_PER_METHOD)):
                who = callers[i % len(callers)]
                host = SERVICE_HOST.get(service) or IN_PROCESS[service]
                code, exc = _call(channels[(host, who)], m, raw, timeout)
                codes[code.name] += 1
                problems += _problems(service, m, raw, code, exc)
    finally:
        for ch in channels.values():
            ch.close()
    took = time.monotonic() - t0
    print(f"{sum(codes.values())} calls over {len(methods)} methods in {took:.1f} s: {dict(codes)}")
    assert not problems, "\n".join(problems[:40])
    assert codes["INVALID_ARGUMENT"] > len(methods)  # the generator does reach the checks


def _message_class(desc: Descriptor) -> Any:
    from google.protobuf import message_factory

    return message_factory.GetMessageClass(desc)


# ---------------------------------------------------------------- /metrics
def _scrape(address: str) -> dict[str, float]:
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            key = s.name + "{" + ",".join(f"{k}={v}" for k, v in sorted(s.labels.items())) + "}"
            out[key] = s.value
    return out


def _sum(samples: dict[str, float], name: str, **labels: str) -> float:
    want = [f"{k}={v}" for k, v in labels.items()]
    return sum(
        v for k, v in samples.items() if k.startswith(name + "{") and all(w in k for w in want)
    )


def test_every_service_serves_metrics_that_move_with_a_score(deployment: Path) -> None:
    from fedcredit.coordinator.client import CoordinatorClient

    dep = load_config(deployment)
    node = next(n for n in dep.nodes if n.department == NODE)
    where = {s: dep.service(s).metrics for s in ("ledger", "consent", "coordinator")}
    where[f"node-{NODE}"] = node.metrics
    assert all(where.values()), f"a service without a metrics address: {where}"
    before = {s: _scrape(a) for s, a in where.items()}
    for s, samples in before.items():  # `up` health-checked each: requests were counted
        assert any(k.startswith("fedcredit_requests_total{") for k in samples), s
    assert "fedcredit_ledger_size{service=ledger}" in before["ledger"]
    assert "fedcredit_ledger_checkpoint_age_seconds{service=ledger}" in before["ledger"]

    coord = dep.service("coordinator")
    with (
        CoordinatorClient(coord.address, dep.tls("bank-icbc-weihai"), server_org=coord.org_id) as c,
        pytest.raises(Exception) as refused,
    ):
        c.score("91371000MA3C1234X5", "not-a-token")
    reason = getattr(refused.value, "reason", "")
    after = _scrape(where["coordinator"])
    b, a = before["coordinator"], after
    assert _sum(a, "fedcredit_requests_total", method="Score") == (
        _sum(b, "fedcredit_requests_total", method="Score") + 1
    )
    assert _sum(a, "fedcredit_refusals_total", reason=reason) == (
        _sum(b, "fedcredit_refusals_total", reason=reason) + 1
    ), reason
    print(f"Score refused with {reason}; coordinator series after it:")
    for k, v in sorted(a.items()):
        if k.startswith("fedcredit_") and v != b.get(k):
            print(f"  {k}: {b.get(k, 0)} -> {v}")


def test_status_shows_each_services_essentials(deployment: Path) -> None:
    st = fc("status", "--config", str(deployment), "--json")
    rows = {r["service"]: r for r in json.loads(st.stdout)}
    for s in ("ledger", "consent", "coordinator", f"node-{NODE}"):
        m = rows[s]["metrics"]
        assert m is not None and m["requests"] > 0, (s, m)
    assert rows["ledger"]["metrics"]["ledger_size"] >= 0
    assert "checkpoint_age_s" in rows["ledger"]["metrics"]
    assert "data_age_s" in rows[f"node-{NODE}"]["metrics"]
    assert rows["node-courts"]["metrics"] is None  # not running: nothing scraped

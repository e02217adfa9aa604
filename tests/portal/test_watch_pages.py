"""The department's node page and the operator's service health page, over HTTP against
real servers: a department node (gRPC, mTLS, the portal's own certificate reads its
catalog), the federation's ledger and consent service (gRPC health), and the process's
Prometheus /metrics endpoint (disclosures by node, purpose and bank)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from fedcredit.common import metrics
from fedcredit.common.departments import BY_ID, DEFAULT_BANKS
from fedcredit.common.metrics import ESSENTIALS
from fedcredit.portal import i18n
from fedcredit.portal.watch import Target, Watch
from tests.node.conftest import (  # noqa: F401 - the node tests' fixtures, reused here
    Consents,
    NodeFactory,
    consents,
    make_node,
    small_world,
    world_codes,
)
from tests.portal.conftest import BANK, Federation, free_port
from tests.portal.test_portal_http import enrolled
from tests.portal.webclient import Visitor


@pytest.fixture
def visitor(federation: Federation) -> Iterator[Visitor]:
    base = federation.url.replace("localhost", "127.0.0.1")
    with httpx.Client(base_url=base, timeout=30, follow_redirects=False) as c:
        yield Visitor(c)


@pytest.fixture(scope="module")
def metrics_address() -> Iterator[str]:
    server, port = metrics.serve("127.0.0.1:0")
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.shutdown()


@pytest.fixture
def watched(federation: Federation, make_node: NodeFactory, metrics_address: str) -> Iterator[Any]:  # noqa: F811
    node = make_node("tax")
    org = BY_ID["tax"].org_id
    metrics.gauge_from(metrics.NODE_DATA_AGE, lambda: 7260.0, metrics.service(), org)
    dead = Target("node-customs", BY_ID["customs"].org_id, f"127.0.0.1:{free_port()}")
    services = [
        Target("ledger", "ledger", federation.ledger_address, metrics_address),
        Target("consent", "consent-service", federation.consent_address),
        Target("node-tax", org, node.address, metrics_address),
        dead,
    ]
    nodes = [Target("node-tax", org, node.address, metrics_address), dead]
    federation.app.state.watch = Watch(nodes, services, federation.pki.tls("portal"))
    try:
        yield node
    finally:
        federation.app.state.watch = None


def _cell(page: str, bank: str, purpose: str) -> int:
    m = re.search(rf'data-bank="{bank}" data-purpose="{purpose}">.*?data-count="(\d+)"', page)
    return int(m.group(1)) if m else 0


def _bank_total(page: str, bank: str) -> int:
    cells = re.findall(rf'data-bank="{bank}" data-purpose="[^"]*">.*?data-count="(\d+)"', page)
    return sum(int(c) for c in cells)


def test_department_sees_its_node_and_disclosures_by_bank_and_purpose(
    federation: Federation,
    visitor: Visitor,
    watched: Any,
    consents: Consents,  # noqa: F811
    small_world: Path,  # noqa: F811
) -> None:
    org = BY_ID["tax"].org_id
    enrolled(federation, visitor, org, "department")
    first = visitor.get("/department").text
    before = _cell(first, BANK, "credit_assessment")
    # The counters are the process's, cumulative since it started (the page says so):
    # other tests in this worker may have disclosed to any bank before, so compare.
    other_before = _bank_total(first, DEFAULT_BANKS[1])
    codes = world_codes(small_world)[40:43]
    with watched.client() as c:
        res = c.get_features([(x, consents.token(x)) for x in codes], ["revenue_12m"], **watched.coordinator_kw())  # fmt: skip
    assert not any(r.error for r in res)
    r = visitor.get("/department?lang=en")
    assert r.status_code == 200
    page = r.text
    assert "Disclosures by bank and purpose" in page and 'data-reachable="1"' in page
    version = re.search(r'id="data-version">(\d+)<', page)
    assert version and int(version.group(1)) >= 1
    assert re.search(r'id="as-of">\d{4}-\d{2}<', page)
    assert 'id="data-age">2 h 1 min<' in page  # the node's data-age gauge, 7,260 s
    assert _cell(page, BANK, "credit_assessment") == before + 3
    # nothing counted for a bank nothing was disclosed to
    assert _bank_total(page, DEFAULT_BANKS[1]) == other_before
    zh = visitor.get("/department?lang=zh").text
    assert "数据披露次数（按银行与用途）" in zh and "授信评估" in zh


def test_department_without_a_node_or_unreachable(
    federation: Federation, visitor: Visitor, watched: Any
) -> None:
    enrolled(federation, visitor, BY_ID["customs"].org_id, "department")
    page = visitor.get("/department?lang=en").text
    assert 'data-reachable="0"' in page and "the node does not answer" in page
    assert 'id="no-metrics"' in page
    enrolled(federation, visitor, BY_ID["ip"].org_id, "department")  # a node not in this watch
    assert 'id="no-node"' in visitor.get("/department").text


def test_operator_sees_each_services_health_and_metrics(
    federation: Federation, visitor: Visitor, watched: Any
) -> None:
    enrolled(federation, visitor, "operator", "operator")
    r = visitor.get("/operator/health?lang=en")
    assert r.status_code == 200
    page = r.text
    for name in ("ledger", "consent", "node-tax"):
        assert f'data-service="{name}" data-healthy="1"' in page, name
    assert 'data-service="node-customs" data-healthy="0"' in page
    assert "Ledger entries" in page and "SERVING" in page
    assert "服务状态" in visitor.get("/operator/health?lang=zh").text


@pytest.mark.parametrize(
    ("path", "role"),
    [("/department", "operator"), ("/department", "bank"), ("/operator/health", "department"),
     ("/operator/health", "enterprise")],
)  # fmt: skip
def test_other_roles_are_refused(federation: Federation, visitor: Visitor, watched: Any, path: str, role: str) -> None:  # fmt: skip
    org = {"operator": "operator", "bank": BANK, "department": BY_ID["tax"].org_id}.get(role)
    if org is None:
        from fedcredit.common import uscc

        org = uscc.generate(__import__("random").Random(77))
    enrolled(federation, visitor, org, role)
    r = visitor.get(path)
    assert r.status_code == 303 and r.headers["location"] == "/home"
    assert "Disclosures" not in r.text and "service health" not in r.text


def test_signed_out_is_sent_to_sign_in(visitor: Visitor) -> None:
    for path in ("/department", "/operator/health"):
        r = visitor.get(path)
        assert r.status_code == 303 and r.headers["location"] == "/signin"


def test_every_metric_column_has_words() -> None:
    for col in ESSENTIALS.values():
        assert f"m_{col}" in i18n.T, col

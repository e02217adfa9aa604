"""Every route of the portal, hostile requests from every role (issue 17's "no tracebacks",
for the web): never a 500, never a traceback or a class name, and a refusal a person or a
script can read (an error page, a JSON error, a redirect with a flash).

The routes are the application's own (``federation.app.routes``) and the field names are
read from the portal's templates and handlers, so a new page or form field is covered by
being added. Each signed-in role sends, to each route: hostile values in every field (JSON
objects and lists where text belongs, integers at 2^31 and 2^63 and negative, 100k
characters, unicode controls), form bodies that are not UTF-8, broken multipart bodies,
content types it does not take, a body over the limit, and path parameters that try to
leave their folder.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from starlette.routing import Route

from fedcredit.common import uscc
from fedcredit.portal.security import MAX_BODY_BYTES
from tests.consent.softkey import SoftKey
from tests.portal.conftest import BANK, Federation
from tests.portal.webclient import Visitor

PORTAL = Path(__file__).resolve().parents[2] / "portal"
LEAKS = re.compile(
    r"Traceback|File \"|<class |\b[A-Z][a-z]\w*(?:Error|Exception)\b|sqlite3|SELECT "
)


def _field_names() -> list[str]:
    names: set[str] = set()
    for f in (PORTAL / "templates").rglob("*.html"):
        names.update(re.findall(r'name="([a-z_]+)"', f.read_text()))
    for f in PORTAL.glob("*.py"):
        text = f.read_text()
        names.update(re.findall(r'(?:data|query_params|form)\.get\("([a-z_]+)"', text))
        names.update(re.findall(r'(?:data|query_params|form)\["([a-z_]+)"\]', text))
        names.update(re.findall(r'\(data, "([a-z_]+)"', text))
    names -= {"csrf", "viewport"}
    return sorted(names)


FIELDS = _field_names()
HOSTILE_VALUES: list[object] = [
    {"a": [1, {"b": None}]}, [1, 2], 2**31, 2**63, -(2**63) - 1, -1, 1e308, None, True,
    "x" * 100_000, "é\u202e\u0000\U0001f600", "../../../etc/passwd", "9223372036854775808",
    "-1", "nan", "",
]  # fmt: skip
HOSTILE_PATHS = ["..%2F..%2Fetc%2Fpasswd", "x" * 5_000, "%FF%FE", "%C3%A9%E2%80%AE", "a.csv%00"]
ROLES = [("enterprise", None), ("bank", BANK), ("department", "dept-tax"),
         ("auditor", "auditor-pboc-weihai"), ("operator", "operator")]  # fmt: skip


def _routes(federation: Federation) -> list[Route]:
    assert federation.app is not None
    routes = [r for r in federation.app.routes if isinstance(r, Route)]
    return sorted(routes, key=lambda r: r.path == "/signout")  # signing out: the last


@pytest.fixture(params=[r for r, _ in ROLES])
def signed_in(request: pytest.FixtureRequest, federation: Federation) -> Iterator[Visitor]:
    role = request.param
    org = dict(ROLES)[role] or uscc.generate(random.Random(99))
    with httpx.Client(base_url=federation.url.replace("localhost", "127.0.0.1"), timeout=60) as c:
        v = Visitor(c)
        key = SoftKey(federation.url)
        v.enrol(key, org, federation.enrol_code(org, role))
        v.sign_in(key, org)
        yield v


SEEN: Counter[int] = Counter()


def _check(r: httpx.Response, what: str) -> list[str]:
    SEEN[r.status_code] += 1
    out = []
    if r.status_code >= 500 and r.status_code != 503:
        out.append(f"{what}: HTTP {r.status_code} {r.text[:200]!r}")
    if LEAKS.search(r.text):
        out.append(
            f"{what}: the answer leaks internals: {LEAKS.search(r.text)!r} in {r.text[:300]!r}"
        )
    if r.status_code == 503 and "html" not in r.headers.get("content-type", "") and "json" not in r.headers.get("content-type", ""):  # fmt: skip
        out.append(f"{what}: 503 without a page or JSON")
    return out


def _paths(route: Route) -> list[str]:
    if "{" not in route.path:
        return [route.path]
    return [re.sub(r"\{[a-z_]+\}", bad, route.path) for bad in HOSTILE_PATHS]


def _bodies(csrf: str) -> list[tuple[bytes, str]]:
    not_utf8 = b"&".join(n.encode() + b"=%FF\xfe" for n in FIELDS)
    part = b'--b\r\nContent-Disposition: form-data; name="file"\r\n\r\n\xff'
    return [
        (b"csrf=" + csrf.encode() + b"&" + not_utf8, "application/x-www-form-urlencoded"),
        (part, "multipart/form-data; boundary=b"),
        (b"--x\r\n", "multipart/form-data"),
        (b"\xff\xfe{", "application/json"),
        (b"<xml/>", "application/xml"),
        (b"[1, 2]", "application/json"),
    ]


def _get(v: Visitor, path: str) -> list[str]:
    cookie, problems = {"cookie": f"fc_session={v.sid}"}, []
    for value in HOSTILE_VALUES[9:]:
        r = v.http.get(path, params={n: str(value)[:1_000] for n in FIELDS}, headers=cookie)
        problems += _check(r, f"GET {path[:80]}?..={str(value)[:30]!r}")
    r = v.http.get(path + "?lang=%FF&version=%C0%AF&old=%FF", headers=cookie)
    return problems + _check(r, f"GET {path[:80]} with bytes that are not UTF-8")


def _post(v: Visitor, path: str) -> list[str]:
    headers = {"cookie": f"fc_session={v.sid}", "x-csrf-token": v.csrf, "accept": "application/json"}  # fmt: skip
    problems = []
    for value in HOSTILE_VALUES:
        r = v.http.post(path, json={n: value for n in FIELDS}, headers=headers)
        problems += _check(r, f"POST {path[:80]} json {str(value)[:30]!r}")
    for body, ctype in _bodies(v.csrf):
        r = v.http.post(path, content=body, headers={**headers, "content-type": ctype})
        problems += _check(r, f"POST {path[:80]} {ctype} {body[:20]!r}")
    big = b"a" * (MAX_BODY_BYTES + 1)
    r = v.http.post(path, content=big, headers={**headers, "content-type": "application/json"})
    if r.status_code != 413:
        problems.append(f"POST {path[:80]} over the limit: HTTP {r.status_code}")
    return problems


def hostile_requests(v: Visitor, routes: list[Route]) -> list[str]:
    """Every hostile request to each of ``routes`` as visitor ``v``; the problems seen."""
    problems: list[str] = []
    for route in routes:
        for path in _paths(route):
            if "GET" in (route.methods or ()):
                problems += _get(v, path)
            if "POST" in (route.methods or ()):
                problems += _post(v, path)
    return problems


def test_every_route_answers_hostile_requests_without_a_500(
    federation: Federation, signed_in: Visitor
) -> None:
    problems = hostile_requests(signed_in, _routes(federation))
    print(f"statuses: {dict(SEEN)}")
    assert not problems, "\n".join(problems[:40])
    assert SEEN[400] + SEEN[422] > len(FIELDS), "the requests never reach a field's check"

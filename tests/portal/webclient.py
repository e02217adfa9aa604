"""A scripted visitor of the portal without a browser: keeps the session cookie by hand
(it is Secure, and a cookie jar would not send it over http://127.0.0.1), reads the CSRF
token from the page, and runs the WebAuthn ceremonies with a software authenticator."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx

from tests.consent.softkey import SoftKey


class Visitor:
    def __init__(self, client: httpx.Client) -> None:
        self.http = client
        self.sid = ""
        self.csrf = ""
        self.last: httpx.Response | None = None

    def _keep(self, r: httpx.Response) -> httpx.Response:
        for h in r.headers.get_list("set-cookie"):
            m = re.match(r"fc_session=([^;]+)", h)
            if m:
                self.sid = m.group(1)
        m = re.search(r'name="csrf-token" content="([^"]+)"', r.text if "html" in r.headers.get("content-type", "") else "")  # fmt: skip
        if m:
            self.csrf = m.group(1)
        self.last = r
        return r

    def get(self, path: str) -> httpx.Response:
        return self._keep(self.http.get(path, headers={"cookie": f"fc_session={self.sid}"}))

    def post_json(self, path: str, body: dict[str, Any], *, csrf: str | None = None) -> httpx.Response:  # fmt: skip
        headers = {
            "cookie": f"fc_session={self.sid}",
            "accept": "application/json",
            "x-csrf-token": self.csrf if csrf is None else csrf,
        }
        return self._keep(self.http.post(path, json=body, headers=headers))

    def post_form(self, path: str, form: dict[str, str]) -> httpx.Response:
        return self._keep(self.http.post(path, data=form, headers={"cookie": f"fc_session={self.sid}"}))  # fmt: skip

    def ok(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        r = self.post_json(path, body)
        assert r.status_code == 200, r.text
        got: dict[str, Any] = r.json()
        return got

    def enrol(self, key: SoftKey, org: str, code: str) -> None:
        self.get("/enrol")
        c = self.ok("/enrol/begin", {"org": org, "code": code, "label": "office"})
        self.ok("/enrol/finish", {"credential": key.create(c["options"])})

    def sign_in(self, key: SoftKey, org: str) -> dict[str, Any]:
        self.get("/signin")
        c = self.ok("/signin/begin", {"org": org})
        got = self.ok("/signin/finish", {"assertion": key.get(c["options"])})
        self.get(got["redirect"])
        return got

    def decide(self, key: SoftKey, action: str, consent_id: str, **kw: Any) -> dict[str, Any]:
        c = self.ok("/challenge", {"action": action, "consent_id": consent_id, **kw})
        assert json.loads(c["statement"])["consent"]["consent_id"] == consent_id
        return self.ok("/decide", {"assertion": key.get(c["options"])})

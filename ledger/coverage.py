"""Consent coverage: every access in the logs is covered by a consent valid at that moment.

Replays entries (one or more exports: the central ledger's, and the nodes'
disclosure logs) in order and rebuilds each consent from its ``consent_event``
entries: who (enterprise = the entry's subject, bank), what (purpose, scope
categories, nodes), its window (not_before, expires_at), its use limit, and its
state over time (granted, paused, resumed, revoked, expired). Then each access:

* ``score_access`` (central ledger): the consent whose token ``jti`` it names
  must be the enterprise's, the bank's, for that purpose, ACTIVE and inside its
  window at the entry's time; each is one use, and no more than ``max_uses``.
* ``feature_disclosure`` (a node's log): the consent ``consent_jti`` must be the
  enterprise's, for the bank it was served on behalf of, the purpose, and cover
  the node and its category, ACTIVE and inside its window. This is also how a
  training fetch is checked: a bank's fetch for ``model_training`` is a node
  disclosure like any other. Uses are counted on ``score_access`` only: one
  request reaches several nodes, and the node logs do not say which of their
  entries were one use.

Times: consent events carry whole seconds (``at``), entries microseconds. A
state change in the same second as an access is resolved in the access's
favour (the authority's clock cannot order them); one second earlier is not.
Every uncovered entry is reported with one reason; nothing is skipped silently.
"""

from __future__ import annotations

import calendar
import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedcredit.common.departments import BY_ID, BY_ORG
from fedcredit.common.errors import ConfigError
from fedcredit.consent.token import SCORE_ONLY, covers

if TYPE_CHECKING:
    from fedcredit.ledger.audit import Trust
    from fedcredit.ledger.checkpoint import Verifier

ACCESS_KINDS = ("score_access", "feature_disclosure")
_ACCESS_KINDS_B = frozenset(k.encode() for k in ACCESS_KINDS)

# the state a consent is in after each event
_STATE_AFTER = {
    "granted": "ACTIVE",
    "resumed": "ACTIVE",
    "paused": "PAUSED",
    "revoked": "REVOKED",
    "rejected": "REJECTED",
    "expired": "EXPIRED",
    "requested": "PENDING",
}
_LOOSENING = frozenset({"ACTIVE"})  # changes that grant apply from their second on


@dataclass
class Consent:
    consent_id: str
    enterprise: str
    bank: str
    purpose: str
    scope: frozenset[str]
    nodes: frozenset[str]
    not_before: int | None
    expires_at: int | None
    max_uses: int | None
    history: list[tuple[int, str]] = field(default_factory=list)  # (at, state) in log order
    uses: int = 0

    def covers_use_at(self, sec: int) -> bool:
        """Recorded, ACTIVE, inside the window and with a use left at ``sec``."""
        return (
            bool(self.history)
            and self.history[0][0] <= sec
            and (self.not_before is None or self.not_before <= sec)
            and (self.expires_at is None or sec < self.expires_at)
            and (self.max_uses is None or self.uses < self.max_uses)
            and self.state_at(sec) == "ACTIVE"
        )

    def state_at(self, second: int) -> str:
        state = "UNKNOWN"
        for at, new in self.history:
            if at < second or (at == second and new in _LOOSENING):
                state = new
        return state


@dataclass(frozen=True)
class Uncovered:
    index: int  # position in its export
    log: str  # the export's origin
    kind: str
    subject: str | None
    jti: str | None
    reason: str  # NO_CONSENT, WRONG_PARTY, OUTSIDE_SCOPE, NOT_ACTIVE, OUTSIDE_WINDOW, BEYOND_USES
    detail: str


@dataclass
class CoverageReport:
    entries: int = 0
    accesses: Counter[str] = field(default_factory=Counter)
    consents: int = 0
    uncovered: list[Uncovered] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.uncovered

    def to_dict(self) -> dict[str, Any]:
        return {
            "covered": self.clean,
            "entries": self.entries,
            "consents": self.consents,
            "accesses": dict(self.accesses),
            "uncovered": [u.__dict__ for u in self.uncovered],
        }


# The coordinator's score_access entry exactly (ledger.log._entry_bytes, RFC 8785 order),
# every string without escapes: then the captured bytes ARE the JSON values, and the
# match is 3x cheaper than json.loads. Anything else (another shape, an escape) is parsed
# with json.loads; the result is the same either way (tested).
_S = rb'"[^"\\\x00-\x1f]*"'
_SCORE_ACCESS = re.compile(
    rb'\{"actor":' + _S + rb',"chain":"[0-9a-f]{64}","index":[0-9]+,"kind":"score_access",'
    rb'"payload":\{"bank":"([^"\\\x00-\x1f]*)","enterprise":'
    + _S
    + rb',"feature_hash":'
    + _S
    + rb',"jti":"([^"\\\x00-\x1f]*)","missing_categories":\[(?:'
    + _S
    + rb"(?:,"
    + _S
    + rb')*)?\],"model_version":'
    + _S
    + rb',"purpose":"([^"\\\x00-\x1f]*)","rating":'
    + _S
    + rb'\},"subject":"([^"\\\x00-\x1f]*)","time":"([^"\\\x00-\x1f]*)","v":1\}'
)

_SECONDS: dict[str, int] = {}


def _second(time_s: str) -> int:
    """Whole seconds of an entry's RFC 3339 UTC time (``2026-12-05T23:03:31.123456Z``);
    entries arrive by the thousand per second, so each second is computed once."""
    key = time_s[:19]
    sec = _SECONDS.get(key)
    if sec is None:
        if len(_SECONDS) > 100_000:
            _SECONDS.clear()
        sec = _SECONDS[key] = _timegm(key)
    return sec


def _timegm(time_s: str) -> int:
    return calendar.timegm(
        (
            int(time_s[0:4]),
            int(time_s[5:7]),
            int(time_s[8:10]),
            int(time_s[11:13]),
            int(time_s[14:16]),
            int(time_s[17:19]),
        )
    )


class CoverageAuditor:
    """Feed entries in log order (:meth:`feed`), then read :attr:`report`."""

    def __init__(self) -> None:
        self.by_id: dict[str, Consent] = {}
        self.by_jti: dict[str, Consent] = {}
        self.report = CoverageReport()
        self._pending: list[tuple[str, int, str, bytes]] = []

    def feed(self, origin: str, entries: Iterable[bytes]) -> None:
        loads = json.loads
        rep = self.report
        for pos, raw in enumerate(entries):
            rep.entries += 1
            # in RFC 8785 bytes '"kind":"' can only be the top-level key (a quote inside a
            # string is escaped); a non-canonical entry is parsed in full instead
            kind_at = raw.find(b'"kind":"') + 8
            if kind_at >= 8:
                kind_b = raw[kind_at : raw.index(b'"', kind_at)]
            else:
                kind_b = str(loads(raw).get("kind", "")).encode()
            if kind_b == b"consent_event":
                self._consent(loads(raw))
            elif kind_b in _ACCESS_KINDS_B:
                kind = kind_b.decode()
                rep.accesses[kind] += 1
                self._pending.append((origin, pos, kind, raw))

    def finish(self) -> CoverageReport:
        """Check every access fed against the consents as the whole log states them: the
        outbox delivers consent events after the change commits, so an access may be
        logged before the event of the grant it relied on; what decides is the time."""
        for c in self.by_id.values():
            c.history.sort(key=lambda h: h[0])  # stable: same-second events keep log order
        loads = json.loads
        match = _SCORE_ACCESS.fullmatch
        by_jti = self.by_jti
        for origin, pos, kind, raw in self._pending:
            m = match(raw) if kind == "score_access" else None
            if m is None:
                self._access(origin, pos, kind, loads(raw))
                continue
            bank, jti, purpose, subject, time_s = (g.decode() for g in m.groups())
            cons = by_jti.get(jti)
            # the common case, covered, in one expression; any doubt takes _access, which
            # repeats every check in order and names the first that fails
            if (
                cons is not None
                and cons.enterprise == subject
                and cons.bank == bank
                and cons.purpose == purpose
                and cons.covers_use_at(_second(time_s))
            ):
                cons.uses += 1
                continue
            e = {"subject": subject, "time": time_s,
                 "payload": {"bank": bank, "jti": jti, "purpose": purpose}}  # fmt: skip
            self._access(origin, pos, kind, e)
        self._pending.clear()
        self.report.consents = len(self.by_id)
        return self.report

    def _consent(self, e: dict[str, Any]) -> None:
        p = e["payload"]
        c = self.by_id.get(p["consent_id"])
        if c is None:
            c = self.by_id[p["consent_id"]] = Consent(
                p["consent_id"], e["subject"], p["bank"], p["purpose"],
                frozenset(p["scope"]), frozenset(p["nodes"]),
                p.get("not_before"), p.get("expires_at"), p.get("max_uses"),
            )  # fmt: skip
        else:  # later events carry the window fixed at approval and the current terms
            c.not_before = p.get("not_before", c.not_before)
            c.expires_at = p.get("expires_at", c.expires_at)
            c.max_uses = p.get("max_uses", c.max_uses)
        if p.get("jti"):
            self.by_jti[p["jti"]] = c
        event = p["event"]
        state = _STATE_AFTER.get(event)
        if event == "granted" and p.get("state") in ("ACTIVE", "PAUSED"):
            state = p["state"]  # a narrowed replacement keeps a paused consent paused
        if state is not None:
            c.history.append((int(p["at"]), state))

    def _access(self, origin: str, pos: int, kind: str, e: dict[str, Any]) -> None:
        p = e["payload"]
        score = kind == "score_access"
        jti = p.get("jti") if score else p.get("consent_jti")
        bank = p.get("bank") if score else p.get("on_behalf_of")
        subject = e.get("subject")

        def fail(reason: str, detail: str) -> None:
            self.report.uncovered.append(Uncovered(pos, origin, kind, subject, jti, reason, detail))

        c = self.by_jti.get(jti) if jti else None
        if c is None:
            fail("NO_CONSENT", f"no consent event names token jti {jti!r}")
            return
        sec = _second(e["time"])
        if not c.history or c.history[0][0] > sec:
            fail("NO_CONSENT", f"consent {c.consent_id} was first recorded after the access")
            return
        if c.enterprise != subject or c.bank != bank:
            fail("WRONG_PARTY", f"consent {c.consent_id} is {c.enterprise}->{c.bank}; "
                 f"the access is {subject}->{bank}")  # fmt: skip
            return
        if c.purpose != p.get("purpose"):
            fail("OUTSIDE_SCOPE", f"consent {c.consent_id} is for purpose {c.purpose!r}; "
                 f"the access is for {p.get('purpose')!r}")  # fmt: skip
            return
        if not score:
            node = p.get("node", "")
            dept = BY_ORG.get(node) or BY_ID.get(node)
            category = dept.category if dept is not None else None
            # The rule the verifiers enforce (consent.token.covers), replayed.
            if not covers(SCORE_ONLY in c.scope, c.scope, c.nodes, category or "", node):
                fail("OUTSIDE_SCOPE", f"consent {c.consent_id} covers nodes {sorted(c.nodes)} "
                     f"and {sorted(c.scope)}; node {node} ({category}) answered")  # fmt: skip
                return
        state = c.state_at(sec)
        if state != "ACTIVE":
            fail("NOT_ACTIVE", f"consent {c.consent_id} was {state} at {e['time']}")
            return
        if (c.not_before is not None and sec < c.not_before) or (
            c.expires_at is not None and sec >= c.expires_at
        ):
            fail("OUTSIDE_WINDOW", f"consent {c.consent_id} is valid [{c.not_before}, "
                 f"{c.expires_at}); the access is at {sec}")  # fmt: skip
            return
        if score:
            c.uses += 1
            if c.max_uses is not None and c.uses > c.max_uses:
                fail("BEYOND_USES", f"use {c.uses} of consent {c.consent_id}, "
                     f"which allows {c.max_uses}")  # fmt: skip


def audit_coverage(logs: Iterable[tuple[str, Iterable[bytes]]]) -> CoverageReport:
    """Audit ``(origin, entries)`` logs: the central ledger's first (its consent events
    precede what the nodes' logs cite), then any node disclosure logs."""
    auditor = CoverageAuditor()
    for origin, entries in logs:
        auditor.feed(origin, entries)
    return auditor.finish()


def audit_exports(
    central: Path, trust: Trust, nodes: Sequence[Path] = (), node_keys: Sequence[Verifier] = ()
) -> CoverageReport:
    """Replay (verify) the central export against ``trust`` and each node export against
    its node's key (matched by origin), then audit coverage over all of them."""
    from fedcredit.ledger.audit import Trust as _Trust
    from fedcredit.ledger.audit import replay
    from fedcredit.ledger.export import read_export

    keys = {k.name: k for k in node_keys}
    logs: list[tuple[str, list[bytes]]] = []
    for path, is_node in [(central, False), *((p, True) for p in nodes)]:
        ex = read_export(path)
        t = trust
        if is_node:
            key = keys.get(ex.origin)
            if key is None:
                raise ConfigError(
                    f"{path} is the log {ex.origin!r}; give its key with --node-key "
                    f"(known: {sorted(keys) or 'none'})"
                )
            t = _Trust(key)
        replay(ex, t, strict=True)  # canonical bytes: what the fast parse relies on
        logs.append((ex.origin, ex.entries))
    return audit_coverage(logs)

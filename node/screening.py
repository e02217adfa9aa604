"""Policy screening at the node: CEL clauses over the node's own data, booleans out.

The platform's policy service splits each eligibility rule into per-department clauses
(``policies.rules``) and asks every node concerned to evaluate its clauses for a list of
enterprises. The node:

1. admits only the roles allowed to screen (the platform's policy service, certificate
   role ``policy``: not the coordinator, which scores with consent) and only under the legal basis ``policy_screening`` — screening is
   not a bank's access and needs no consent token, which is why it is bounded this way;
2. refuses an empty or oversized request, a duplicate or malformed credit code;
3. compiles every clause in an environment that declares *only this node's features*
   (a clause naming another department's data or the platform's does not compile here),
   and refuses a clause that is not a bool or holds a comprehension or a regular
   expression (``celvars.first_unbounded``: a cost per enterprise thousands of times a
   comparison's, a DoS of the node), naming the clause and the position;
4. computes its feature vectors (cache or store) and evaluates the clauses
   (``node.celvars.ClauseSet``; a missing value makes a clause ``false``);
5. appends one ``policy_screening`` entry to its disclosure log — caller, legal basis,
   run id, the clause texts, how many enterprises and the SHA-256 of their list — and
   only once it is durable answers: per clause, one bit per enterprise. No value, no
   count per enterprise, nothing else leaves.
"""

from __future__ import annotations

import hashlib
import re
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedcredit.common import uscc
from fedcredit.common.errors import BatchTooLarge, RoleNotAllowed
from fedcredit.common.tls import Identity
from fedcredit.node import celvars
from fedcredit.node.engine import FeatureEngine
from fedcredit.node.errors import (
    DuplicateEnterprise,
    EmptyBatch,
    LegalBasisRequired,
    ScreeningClauseInvalid,
    ScreeningTooLarge,
)
from fedcredit.node.store import StoreState

LEGAL_BASIS = "policy_screening"
# The bases a boolean evaluation may run under: screening for eligibility, and tracking
# whether a funded enterprise met the targets it pledged (资金跟踪问效).
LEGAL_BASES = frozenset({LEGAL_BASIS, "subsidy_tracking"})
KIND = "policy_screening"
SCREENING_ROLES = frozenset({"policy"})
MAX_CLAUSES = 256
MAX_CLAUSE_TEXT = 8_192  # all clause texts of one request: they go into one log entry
MAX_ENTERPRISES = 50_000
_POSITION = re.compile(r"<input>:(\d+):(\d+): (.*?)(?:\n|$)")
_ID = re.compile(r"[A-Za-z0-9_.:#-]{1,64}")


@dataclass(frozen=True, slots=True)
class Screening:
    """An admitted request: the enterprises, the clauses and their compiled set."""

    run_id: str
    legal_basis: str
    codes: list[str]
    ids: list[str]
    texts: list[str]
    clauses: celvars.ClauseSet


class Screener:
    """Checks and evaluates screening requests for one node (compiled clause sets cached)."""

    def __init__(self, engine: FeatureEngine, *, roles: frozenset[str] = SCREENING_ROLES) -> None:
        self.engine = engine
        self.roles = roles
        self.env = celvars.new_env(celvars.declarations(engine.department))
        self._compiled: OrderedDict[tuple[str, ...], celvars.ClauseSet] = OrderedDict()

    def admit(self, caller: Identity, request: Any) -> Screening:
        """Steps 1-3, or the precise refusal."""
        if caller.role not in self.roles:
            raise RoleNotAllowed(
                f"{caller.org_id} has role {caller.role!r}; policy screening is answered "
                f"only to {', '.join(sorted(self.roles))}",
                role=caller.role,
            )
        if request.legal_basis not in LEGAL_BASES:
            raise LegalBasisRequired(
                f"screening needs legal_basis {' or '.join(map(repr, sorted(LEGAL_BASES)))}; "
                f"got {request.legal_basis!r}"
            )
        if not _ID.fullmatch(request.run_id):
            raise ScreeningTooLarge("run_id must be 1-64 of A-Z a-z 0-9 _ . : # -")
        codes = self._codes(list(request.enterprises))
        ids = [c.id for c in request.clauses]
        texts = [c.cel for c in request.clauses]
        if not ids or len(ids) > MAX_CLAUSES:
            raise ScreeningTooLarge(f"expected 1 to {MAX_CLAUSES} clauses, got {len(ids)}")
        if sum(len(t) for t in texts) > MAX_CLAUSE_TEXT:
            raise ScreeningTooLarge(f"the clauses hold more than {MAX_CLAUSE_TEXT} characters")
        bad = next((i for i in ids if not _ID.fullmatch(i)), None)
        if bad is not None or len(set(ids)) != len(ids):
            raise ScreeningClauseInvalid("clause ids must be unique, 1-64 of A-Z a-z 0-9 _ . : # -")
        return Screening(
            request.run_id, request.legal_basis, codes, ids, texts, self._compile(ids, texts)
        )

    def _codes(self, codes: list[str]) -> list[str]:
        if not codes:
            raise EmptyBatch("the request lists no enterprise; send at least one")
        if len(codes) > MAX_ENTERPRISES:
            raise BatchTooLarge(
                f"the request lists {len(codes)} enterprises; at most {MAX_ENTERPRISES}",
                max_batch=MAX_ENTERPRISES,
                got=len(codes),
            )
        if len(set(codes)) != len(codes):
            seen: set[str] = set()
            dup = next(c for c in codes if c in seen or seen.add(c))  # type: ignore[func-returns-value]
            raise DuplicateEnterprise(f"enterprise {dup} is listed twice", enterprise=dup)
        for c in codes:
            uscc.validate(c)
        return codes

    def _compile(self, ids: Sequence[str], texts: Sequence[str]) -> celvars.ClauseSet:
        key = tuple(texts)
        hit = self._compiled.get(key)
        if hit is not None:
            self._compiled.move_to_end(key)
            return hit
        for cid, text in zip(ids, texts, strict=True):
            try:
                program = self.env.compile(text)
            except RuntimeError as exc:
                m = _POSITION.search(str(exc))
                where = f"line {m.group(1)}, column {m.group(2)}: {m.group(3)}" if m else str(exc)
                raise ScreeningClauseInvalid(
                    f"clause {cid} does not compile over the {self.engine.department} node's "
                    f"features: {where}",
                    clause=cid,
                ) from None
            if program.return_type().name() != "BOOL":
                raise ScreeningClauseInvalid(
                    f"clause {cid}: expected a bool, got {program.return_type().name()}",
                    clause=cid,
                )
            costly = celvars.first_unbounded(celvars.checked_ast(program))
            if costly is not None:
                line, col = celvars.position(text, costly[0])
                raise ScreeningClauseInvalid(
                    f"clause {cid}: line {line}, column {col}: {costly[1]} is not evaluated "
                    "in screening: its cost per enterprise is unbounded",
                    clause=cid,
                )
        try:
            compiled = celvars.ClauseSet(self.env, texts)
        except (RuntimeError, TypeError) as exc:  # each compiled alone: never expected
            raise ScreeningClauseInvalid(
                f"the clauses do not compile together: {str(exc)[:200]}", clause=ids[0]
            ) from None
        self._compiled[key] = compiled
        while len(self._compiled) > 32:
            self._compiled.popitem(last=False)
        return compiled

    def evaluate(self, s: Screening, st: StoreState) -> np.ndarray:
        """Step 4: (n enterprises, k clauses) booleans."""
        used = [j for j, f in enumerate(self.engine.features)
                if any(celvars.variable(f) in t for t in s.texts)]  # fmt: skip
        values, _ = self.engine.vectors(s.codes, st)
        feats = [self.engine.features[j] for j in used]
        return s.clauses.evaluate(celvars.rows(feats, values[:, used]))


def log_payload(s: Screening, *, node: str, caller: Identity, st: StoreState) -> dict[str, Any]:
    """What the node's disclosure log records: who, why, which clauses, over whom (by count
    and the SHA-256 of the newline-joined credit codes) — never a value or a result."""
    return {
        "node": node,
        "caller": caller.org_id,
        "caller_role": caller.role,
        "legal_basis": s.legal_basis,
        "run_id": s.run_id,
        "clauses": [{"id": i, "cel": t} for i, t in zip(s.ids, s.texts, strict=True)],
        "enterprises": len(s.codes),
        "enterprises_sha256": enterprises_digest(s.codes),
        "data_version": st.data_version,
        "as_of": st.as_of_text,
    }


def enterprises_digest(codes: Sequence[str]) -> str:
    """SHA-256 (hex) of the credit codes joined by newlines, in request order."""
    return hashlib.sha256("\n".join(codes).encode()).hexdigest()

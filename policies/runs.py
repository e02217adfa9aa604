"""免申即享 ("no application needed") runs: screen, budget, notify, wait, pay.

A scheduled run:

1. takes every automatic policy open today and plans its clauses (``policies.screening``);
2. screens all registered enterprises inside the nodes (booleans only) and the platform
   attributes here;
3. ledgers the run (``policy_screening_run``: policies, the clauses by count and SHA-256
   per namespace, which node disclosure-log entries hold the evaluations; in parts of at
   most ``IDS_PER_ENTRY`` policies) and, per enterprise, one ``policy_screening`` entry under
   the ``policy_screening`` legal basis naming the run and the policies it qualified for —
   so every enterprise sees each screening of it in its own audit view;
4. per policy, in the registry's order, commits the benefit of each newly eligible
   enterprise while the budget allows and notifies it (``policy_award_notified``, with the
   end of its decline window); the rest are reported unfunded;
5. later, :meth:`PolicyStore.pay_due` pays each award whose window passed undeclined.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Protocol

from fedcredit.policies import rules, screening
from fedcredit.policies.store import Append, PolicyStore

LEDGER_BATCH = 1_000


class Ledger(Protocol):
    def append_many(self, items: Sequence[tuple[str, str | None, Mapping[str, Any]]]) -> Any: ...


@dataclass
class RunSummary:
    run_id: str
    enterprises: int
    policies: int
    clauses: int
    evaluations: int
    screening_seconds: float
    ledger_seconds: float
    eligible: dict[str, int] = field(default_factory=dict)
    notified: dict[str, int] = field(default_factory=dict)
    unfunded: dict[str, int] = field(default_factory=dict)
    disclosures: dict[str, list[int]] = field(default_factory=dict)
    department: str = ""  # the department that ran it for its own policies; "" = operator

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def batched(append: Callable[[Sequence[Any]], Any]) -> Append:
    """An append that writes in durable batches of ``LEDGER_BATCH`` entries."""

    def run(items: Sequence[Any]) -> None:
        for i in range(0, len(items), LEDGER_BATCH):
            append(list(items[i : i + LEDGER_BATCH]))

    return run


def _formula_awards(
    store: PolicyStore, p: rules.Policy, codes: list[str], run_id: str,
    nodes: Mapping[str, screening.NodeScreener], rows_of: Mapping[str, Mapping[str, Any]],
    summary: RunSummary, now: float, append: Append,
) -> tuple[int, int]:  # fmt: skip
    """Notify the newly eligible ``codes`` of a formula policy, in order, while the budget
    allows; (notified, unfunded). The department is asked for amounts in batches no
    larger than the budget left can surely fund (``left // cap``, at least one), so the
    platform learns the amount of at most one enterprise it does not pay per run — not
    of every eligible enterprise once the budget is spent. An undefined or zero amount
    is unfunded (nothing to pay). Each notice names the node's disclosure-log indexes."""
    formula = rules.check_formula(p.benefit_formula, p.amount_cap_yuan)
    notified = unfunded = 0
    todo = list(codes)
    while todo:
        books = store.books(p.id)
        left = books.budget_yuan - books.committed_yuan
        if left <= 0:
            break
        batch, todo = (
            todo[: max(1, left // formula.cap_yuan)],
            todo[max(1, left // formula.cap_yuan) :],
        )
        got, disclosed = screening.benefit_amounts(
            f"{run_id}:{p.id}"[:64], formula, batch, nodes, [rows_of[c] for c in batch]
        )
        summary.disclosures.setdefault(formula.namespace, []).extend(disclosed)
        keep = [(c, a) for c, a in zip(batch, got, strict=True) if a]
        unfunded += len(batch) - len(keep)
        tagged = _tag(append, {"benefit_evaluated_by": formula.namespace, "node_disclosures": disclosed})  # fmt: skip
        done, left_out = store.notify(p, [c for c, _ in keep], run_id, now, tagged,
                                      [a for _, a in keep])  # fmt: skip
        notified += len(done)
        if left_out:  # the next amount did not fit: the rest stay unfunded, unasked
            unfunded += len(left_out)
            break
    return notified, unfunded + len(todo)


def _tag(append: Append, extra: Mapping[str, Any]) -> Append:
    return lambda items: append([(k, sub, {**pl, **extra}) for k, sub, pl in items])


# Policy ids per ledger entry: a payload holds at most 16 KiB (ledger max_payload_bytes) and
# an id up to 64 characters, so a run over many policies, or an enterprise eligible for
# many, is ledgered in parts instead of failing after every node has screened.
IDS_PER_ENTRY = 100


def _parts(ids: list[str]) -> list[tuple[list[str], dict[str, int]]]:
    """``ids`` in entry-sized parts: one part with no marker, or each with part/parts."""
    if len(ids) <= IDS_PER_ENTRY:
        return [(ids, {})]
    chunks = [ids[i : i + IDS_PER_ENTRY] for i in range(0, len(ids), IDS_PER_ENTRY)]
    return [(c, {"part": k + 1, "parts": len(chunks)}) for k, c in enumerate(chunks)]


def _run_entries(
    run_id: str, enterprises: int, policies: list[str], plan: screening.RunPlan,
    disclosures: Mapping[str, list[int]],
) -> list[tuple[str, str | None, dict[str, Any]]]:  # fmt: skip
    """The run's ``policy_screening_run`` entries. Clauses by count and SHA-256 per
    namespace (the texts are in each policy's ``policy_published`` entry and in the nodes'
    disclosure logs): their texts together grew past the ledger's payload limit, and any
    department's long rules then failed every run after the screening."""
    clauses = {ns: {"count": len(t), "sha256": hashlib.sha256(
        json.dumps(t, sort_keys=True, ensure_ascii=False).encode()).hexdigest()}
        for ns, t in plan.texts.items()}  # fmt: skip
    head = {"run_id": run_id, "legal_basis": "policy_screening", "enterprises": enterprises,
            "clauses": clauses,
            "node_disclosures": {k: sorted(v) for k, v in disclosures.items()}}  # fmt: skip
    return [("policy_screening_run", None, {**head, "policies": part, **more})
            for part, more in _parts(policies)]  # fmt: skip


def run_automatic(
    store: PolicyStore,
    ledger: Ledger,
    nodes: Mapping[str, screening.NodeScreener],
    enterprises: Sequence[str],
    platform_rows: Sequence[Mapping[str, Any]],
    *,
    run_id: str,
    today: date,
    now: float | None = None,
    chunk: int = screening.DEFAULT_CHUNK,
    workers: int = 8,
    department: str | None = None,
) -> RunSummary:
    """One run; ``department``: only the automatic policies that department issues."""
    now = time.time() if now is None else now
    policies = [p for p in store.policies(mode="automatic", on=today)
                if department is None or p.department == department]  # fmt: skip
    checked = {p.id: rules.check_rule(p.rule) for p in policies}
    plan = screening.plan(checked)
    store.claim_run(
        run_id, now, department or ""
    )  # RunExists: a retry screens, ledgers, notifies nothing
    try:
        result = screening.screen(
            run_id, plan, enterprises, nodes, platform_rows, chunk=chunk, workers=workers
        )
    except BaseException:
        store.release_run(run_id)  # nothing ledgered yet: the same id may be retried
        raise
    summary = RunSummary(run_id, len(enterprises), len(policies), plan.clause_count(),
                         result.evaluations, result.seconds, 0.0, disclosures=result.disclosures,
                         department=department or "")  # fmt: skip
    t0 = time.perf_counter()
    append = batched(ledger.append_many)
    append(_run_entries(run_id, len(enterprises), sorted(checked), plan, result.disclosures))
    qualified: list[list[str]] = [[] for _ in enterprises]
    for pid in sorted(checked):
        for i in result.eligible[pid].nonzero()[0].tolist():
            qualified[i].append(pid)
    append([("policy_screening", code, {"run_id": run_id, "eligible": part, **more})
            for code, q in zip(enterprises, qualified, strict=True)
            for part, more in _parts(q)])  # fmt: skip
    rows_of = dict(zip(enterprises, platform_rows, strict=True))
    for p in policies:
        done = store.awarded(p.id)
        mask = result.eligible[p.id]
        new = [c for c, ok in zip(enterprises, mask.tolist(), strict=True) if ok and c not in done]
        if p.benefit_formula:
            n_notified, n_unfunded = _formula_awards(store, p, new, run_id, nodes, rows_of,
                                                     summary, now, append)  # fmt: skip
        else:
            notified, unfunded = store.notify(p, new, run_id, now, append)
            n_notified, n_unfunded = len(notified), len(unfunded)
        summary.eligible[p.id] = int(mask.sum())
        summary.notified[p.id] = n_notified
        summary.unfunded[p.id] = n_unfunded
    summary.ledger_seconds = time.perf_counter() - t0
    store.record_run(run_id, now, summary.to_dict())
    return summary

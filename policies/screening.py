"""Screening all enterprises against many policies: fan the clauses out, combine booleans.

Each published policy's rule is split into clauses (``policies.rules``). A run:

1. collects the distinct clause texts per namespace (a clause shared by several policies
   is evaluated once) and names them ``<namespace>:<n>``;
2. asks every department node concerned, in parallel, to evaluate its clauses for the
   enterprises, in chunks of ``chunk`` enterprises and batches of clauses that fit one
   disclosure-log entry (``node.screening.MAX_CLAUSE_TEXT``): only bits come back;
3. evaluates the platform's own clauses (rating, registry attributes) here;
4. combines, per policy, the clause booleans with the rule's ``&&`` / ``||`` structure.

What each party learns: a node learns which clauses were asked about which enterprises
(it logs exactly that); the platform learns one boolean per enterprise and clause — for a
clause like ``tax.revenue_12m >= 5e6`` that is the answer to that question and nothing
finer; nobody else learns anything.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from fedcredit.node.celvars import BoolMatrix
from fedcredit.policies import rules

DEFAULT_CHUNK = 20_000
MAX_CLAUSE_TEXT = 8_192  # the node's bound on one request's clause text
MAX_CLAUSES = 256


class Screened(Protocol):
    bits: Mapping[str, BoolMatrix]
    disclosure_index: int


class NodeScreener(Protocol):
    """A node that screens (``node.client.NodeClient.screen``)."""

    def screen(
        self,
        run_id: str,
        clauses: Sequence[tuple[str, str]],
        enterprises: Sequence[str],
        *,
        legal_basis: str = ...,
    ) -> Screened: ...


@dataclass
class RunPlan:
    """Distinct clauses per namespace, and each policy's clause ids in rule order."""

    texts: dict[str, dict[str, str]] = field(default_factory=dict)  # ns -> id -> text
    policies: dict[str, tuple[rules.CheckedRule, list[str]]] = field(default_factory=dict)

    def clause_count(self) -> int:
        return sum(len(v) for v in self.texts.values())


def plan(policies: Mapping[str, rules.CheckedRule]) -> RunPlan:
    out = RunPlan()
    by_text: dict[tuple[str, str], str] = {}
    for pid, checked in policies.items():
        ids = []
        for c in checked.clauses:
            key = (c.namespace, c.text)
            if key not in by_text:
                space = out.texts.setdefault(c.namespace, {})
                by_text[key] = f"{c.namespace}:{len(space)}"
                space[by_text[key]] = c.text
            ids.append(by_text[key])
        out.policies[pid] = (checked, ids)
    return out


def _batches(texts: Mapping[str, str]) -> list[list[tuple[str, str]]]:
    """Clauses grouped so each request stays within the node's bounds."""
    out: list[list[tuple[str, str]]] = [[]]
    size = 0
    for cid, text in texts.items():
        if out[-1] and (size + len(text) > MAX_CLAUSE_TEXT or len(out[-1]) >= MAX_CLAUSES):
            out.append([])
            size = 0
        out[-1].append((cid, text))
        size += len(text)
    return out


@dataclass
class RunResult:
    eligible: dict[str, BoolMatrix]  # policy id -> one boolean per enterprise
    disclosures: dict[str, list[int]]  # namespace -> the node's disclosure-log indexes
    seconds: float
    evaluations: int  # enterprise x clause evaluations, all evaluators together


def screen(
    run_id: str,
    run: RunPlan,
    enterprises: Sequence[str],
    nodes: Mapping[str, NodeScreener],
    platform_rows: Sequence[Mapping[str, Any]],
    *,
    chunk: int = DEFAULT_CHUNK,
    workers: int = 8,
    progress: Callable[[int], None] | None = None,
    legal_basis: str = "policy_screening",
) -> RunResult:
    """Steps 2-4 of a run over ``enterprises`` (``platform_rows[i]`` holds enterprise
    i's ``platform.*`` and ``registry.*`` variables)."""
    t0 = time.perf_counter()
    missing = sorted(set(run.texts) - set(nodes) - {rules.PLATFORM})
    if missing:
        raise ValueError(f"no node client for {', '.join(missing)}")
    n = len(enterprises)
    bits: dict[str, BoolMatrix] = {}
    disclosures: dict[str, list[int]] = {}
    jobs = [
        (space, start, batch)
        for space, texts in run.texts.items()
        if space != rules.PLATFORM
        for start in range(0, n, chunk)
        for batch in _batches(texts)
    ]

    def one(job: tuple[str, int, list[tuple[str, str]]]) -> tuple[str, int, Screened]:
        space, start, batch = job
        part = enterprises[start : start + chunk]
        return space, start, nodes[space].screen(run_id, batch, part, legal_basis=legal_basis)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = [pool.submit(one, j) for j in jobs]
        if rules.PLATFORM in run.texts:
            own = run.texts[rules.PLATFORM]
            got = rules.evaluate_clauses(rules.PLATFORM, list(own.values()), platform_rows)
            for j, cid in enumerate(own):
                bits[cid] = got[:, j]
        for fut in futures:
            space, start, answer = fut.result()
            disclosures.setdefault(space, []).append(answer.disclosure_index)
            for cid, b in answer.bits.items():
                bits.setdefault(cid, np.zeros(n, dtype=np.bool_))[start : start + len(b)] = b
            if progress is not None:
                progress(1)
    eligible = {
        pid: checked.combine([bits[cid] for cid in ids])
        for pid, (checked, ids) in run.policies.items()
    }
    return RunResult(eligible, disclosures, time.perf_counter() - t0, n * run.clause_count())


def benefit_amounts(
    run_id: str,
    formula: rules.Formula,
    enterprises: Sequence[str],
    nodes: Mapping[str, NodeScreener],
    platform_rows: Sequence[Mapping[str, Any]],
    *,
    legal_basis: str = "policy_screening",
) -> tuple[list[int | None], list[int]]:
    """A benefit formula's amount for each of ``enterprises`` (None where it is undefined),
    evaluated by its namespace's node as booleans (``rules.Formula``), and the node's
    disclosure-log indexes. Ask only for enterprises already found eligible."""
    if not enterprises:
        return [], []
    space = formula.namespace
    ids = [f"{space}:{i}" for i in range(len(formula.clauses))]
    run = RunPlan(texts={space: dict(zip(ids, formula.clauses, strict=True))})
    for i, (cid, text) in enumerate(zip(ids, formula.clauses, strict=True)):
        run.policies[f"bit{i}"] = (rules.CheckedRule(text, (rules.Clause(space, text, ()),), 0), [cid])  # fmt: skip
    got = screen(run_id, run, enterprises, nodes, platform_rows, legal_basis=legal_basis)
    bits = np.stack([got.eligible[f"bit{i}"] for i in range(len(ids))], axis=1)
    amounts = formula.amounts(bits).tolist()
    return [None if a < 0 else int(a) for a in amounts], got.disclosures.get(space, [])

"""Policies as data, their CEL eligibility rules, and how a rule is split between nodes.

A policy's eligibility rule is a CEL expression (https://github.com/google/cel-spec),
parsed and type-checked by Google's C++ implementation (``cel-expr-python``) against:

- every derived feature of the catalog, as ``<department>.<feature>``
  (``tax.revenue_12m``; types in :mod:`node.celvars`);
- the platform's own attributes: ``platform.rating`` (string ``"A"``..``"D"``) and the
  registry's ``registry.industry`` (GB/T 4754 section letter), ``registry.district``,
  ``registry.size_class``, ``registry.enterprise_type`` (strings) and
  ``registry.founded_year`` (int).

A rule that does not parse, names an unknown variable or compares the wrong types is
refused with the line and column of the first error (:class:`RuleInvalid`), as is a rule
whose value is not a bool.

**Splitting.** Raw departmental data never leaves its department, so a rule is cut into
*clauses*, each the largest sub-expression that reads only one department's features (or
only platform attributes). Each node evaluates its clauses over its own data and returns
one boolean per enterprise and clause; the platform combines the booleans with the
``&&`` / ``||`` structure above the clauses. Only ``&&`` and ``||`` may join clauses of
different departments: anything else (``!``, ``==``, arithmetic, ``?:`` over two
departments' data) would need values from two nodes in one place and is refused at
publish time with its position (:class:`RuleNotSplittable`) — write the negation inside
one department's clause instead.

Missing values: a clause whose data is missing evaluates to a CEL error, which a node
reports as ``false``. Because ``&&`` and ``||`` are monotone and CEL's logical operators
absorb errors commutatively (``err || true == true``, ``err && false == false``), the
combined result is ``true`` exactly when the whole rule, evaluated centrally on the same
data, is ``true`` — tested as a property in tests/policies.

Money is integer yuan throughout (no float ever touches an amount).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Literal, TypeAlias

import numpy as np
import numpy.typing as npt
from cel_expr_python import cel

from fedcredit.common.departments import BY_ID
from fedcredit.node import celvars
from fedcredit.node.celvars import BoolMatrix
from fedcredit.policies.errors import (
    ClauseNotComparison,
    InvalidPolicy,
    RuleInvalid,
    RuleNotSplittable,
    RuleUnbounded,
    ThresholdBudget,
)
from fedcredit.v1 import celast_pb2

PLATFORM = "platform"  # the namespace the policy service evaluates itself
PLATFORM_VARIABLES: dict[str, cel.Type] = {
    "platform.rating": cel.Type.STRING,
    "registry.industry": cel.Type.STRING,
    "registry.district": cel.Type.STRING,
    "registry.size_class": cel.Type.STRING,
    "registry.enterprise_type": cel.Type.STRING,
    "registry.founded_year": cel.Type.INT,
}
MAX_RULE_CHARS = 4_096
# each bit clause repeats the formula three times (the clamp), and one node request holds
# at most 8 KiB of clause text (policies.screening.MAX_CLAUSE_TEXT)
MAX_FORMULA_CHARS = 512
RATINGS = ("A", "B", "C", "D")
Mode = Literal["automatic", "application"]
MODES: tuple[Mode, ...] = ("automatic", "application")
POLICY_ID = re.compile(r"[a-z0-9][a-z0-9-]{2,63}")
_ORG = re.compile(r"[a-z][a-z0-9_-]{1,63}")  # a department's organisation id
_ERROR = re.compile(r"ERROR: <input>:(\d+):(\d+): (.*?)(?:\n|$)")
_JOIN = {"_&&_": "and", "_||_": "or"}


def namespace_of(variable: str) -> str:
    """The evaluator of a variable: its department, or the platform."""
    head = variable.split(".", 1)[0]
    return PLATFORM if head in ("platform", "registry") else head


def all_variables() -> dict[str, cel.Type]:
    return {**celvars.declarations(), **PLATFORM_VARIABLES}


@functools.cache
def environment(namespace: str | None = None) -> Any:
    """The CEL environment of the whole catalog (or of one namespace's variables)."""
    if namespace is None:
        return celvars.new_env(all_variables())
    if namespace == PLATFORM:
        return celvars.new_env(PLATFORM_VARIABLES)
    return celvars.new_env(celvars.declarations(namespace))


# -- the split plan ------------------------------------------------------------------------

# A plan node: a clause index, or (operator, left, right) with operator "and" | "or".
PlanNode: TypeAlias = "int | tuple[str, PlanNode, PlanNode]"


@dataclass(frozen=True, slots=True)
class Clause:
    """One department's (or the platform's) part of a rule: CEL text over its variables."""

    namespace: str
    text: str
    variables: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class CheckedRule:
    text: str
    clauses: tuple[Clause, ...]
    tree: PlanNode

    def namespaces(self) -> list[str]:
        return sorted({c.namespace for c in self.clauses})

    def combine(self, results: Sequence[BoolMatrix]) -> BoolMatrix:
        """Combine per-clause booleans (``results[i]`` for clause ``i``, shape (n,))."""
        return _combine(self.tree, results)

    def describe(self) -> str:
        """The combination, e.g. ``(c0 && (c1 || c2))``."""
        return _describe(self.tree)


def _combine(node: PlanNode, results: Sequence[BoolMatrix]) -> BoolMatrix:
    if isinstance(node, int):
        return np.asarray(results[node], dtype=np.bool_)
    op, left, right = node
    a, b = _combine(left, results), _combine(right, results)
    return a & b if op == "and" else a | b


def _describe(node: PlanNode) -> str:
    if isinstance(node, int):
        return f"c{node}"
    op, left, right = node
    return f"({_describe(left)} {'&&' if op == 'and' else '||'} {_describe(right)})"


_position = celvars.position


def _refuse_compile(text: str, exc: Exception) -> RuleInvalid:
    m = _ERROR.search(str(exc))
    if m is None:
        return RuleInvalid(f"the rule does not compile: {exc}", line=1, column=1)
    line, col, msg = int(m.group(1)), int(m.group(2)), m.group(3)
    return RuleInvalid(f"line {line}, column {col}: {msg}", line=line, column=col)


def compile_rule(text: str) -> Any:
    """Parse and type-check ``text`` against the catalog; the compiled CEL expression."""
    if not isinstance(text, str) or not text.strip():
        raise RuleInvalid("the eligibility rule is empty; write a CEL expression", line=1, column=1)
    if len(text) > MAX_RULE_CHARS:
        raise RuleInvalid(
            f"the rule has {len(text)} characters; at most {MAX_RULE_CHARS}", line=1, column=1
        )
    try:
        compiled = environment().compile(text)
    except RuntimeError as exc:
        raise _refuse_compile(text, exc) from None
    if compiled.return_type() != cel.Type.BOOL:
        raise RuleInvalid(
            f"line 1, column 1: expected the rule to be a bool, got {compiled.return_type().name()}",
            line=1,
            column=1,
        )
    _refuse_unbounded(text, compiled, "the rule")
    return compiled


_ast = celvars.checked_ast


def _refuse_unbounded(text: str, compiled: Any, what: str, **extra: str) -> None:
    """Refuse a comprehension or a regular expression anywhere in ``text``
    (:class:`RuleUnbounded`; ``celvars.first_unbounded``)."""
    costly = celvars.first_unbounded(_ast(compiled))
    if costly is not None:
        line, col = _position(text, costly[0])
        raise RuleUnbounded(
            f"line {line}, column {col}: {what} uses {costly[1]}, whose cost per enterprise "
            "is unbounded; compare with '==', 'in [...]', startsWith or join comparisons "
            "with && and ||",
            line=line, column=col, **extra,
        )  # fmt: skip


def check_rule(text: str) -> CheckedRule:
    """Type-check ``text`` and split it into per-namespace clauses (refusals with position)."""
    compiled = compile_rule(text)
    splitter = _Splitter(text, _ast(compiled))
    tree = splitter.split(splitter.checked.expr, 0, len(text))
    return CheckedRule(text, tuple(splitter.clauses), tree)


def _children(e: celast_pb2.CelExpr) -> list[celast_pb2.CelExpr]:
    kind = e.WhichOneof("expr_kind")
    if kind == "select_expr":
        return [e.select_expr.operand]
    if kind == "call_expr":
        call = e.call_expr
        return ([call.target] if call.HasField("target") else []) + list(call.args)
    if kind == "list_expr":
        return list(e.list_expr.elements)
    if kind == "struct_expr":
        out = []
        for en in e.struct_expr.entries:
            out += ([en.map_key] if en.HasField("map_key") else []) + [en.value]
        return out
    if kind == "comprehension_expr":
        comp = e.comprehension_expr
        return [comp.iter_range, comp.accu_init, comp.loop_condition, comp.loop_step, comp.result]
    return []


def _shape(e: celast_pb2.CelExpr) -> Any:
    """The expression without its node ids (to compare a clause with its subtree)."""
    kind = e.WhichOneof("expr_kind")
    own: Any = None
    if kind == "const_expr":
        own = e.const_expr.SerializeToString(deterministic=True)
    elif kind == "ident_expr":
        own = e.ident_expr.name
    elif kind == "select_expr":
        own = (e.select_expr.field, e.select_expr.test_only)
    elif kind == "call_expr":
        own = (e.call_expr.function, e.call_expr.HasField("target"))
    elif kind == "comprehension_expr":
        own = (e.comprehension_expr.iter_var, e.comprehension_expr.accu_var)
    elif kind == "struct_expr":
        own = (e.struct_expr.message_name, tuple(en.field_key for en in e.struct_expr.entries))
    return (kind, own, tuple(_shape(c) for c in _children(e)))


@dataclass
class _Splitter:
    text: str
    checked: celast_pb2.CelCheckedExpr
    clauses: list[Clause] = field(default_factory=list)

    def variables(self, e: celast_pb2.CelExpr) -> set[str]:
        ref = self.checked.reference_map.get(e.id)
        found = {ref.name} if ref is not None and ref.name in _KNOWN else set()
        for c in _children(e):
            found |= self.variables(c)
        return found

    def strip(self, e: celast_pb2.CelExpr, start: int, end: int) -> tuple[int, int]:
        """Narrow [start, end) past whitespace and the parentheses that enclose all of
        ``e``. A pair is dropped only when the text inside still parses to ``e``: scanning
        for the matching parenthesis by hand misread triple-quoted and raw strings and
        ``//`` comments (a rule holding ``''')('''`` was cut mid-string and failed
        INTERNAL)."""
        text = self.text
        while True:
            while start < end and text[start].isspace():
                start += 1
            while end > start and text[end - 1].isspace():
                end -= 1
            if end - start < 2 or text[start] != "(" or text[end - 1] != ")":
                return start, end
            try:
                inner = environment().compile(text[start + 1 : end - 1])
            except RuntimeError:
                return start, end
            if _shape(_ast(inner).expr) != _shape(e):
                return start, end
            start, end = start + 1, end - 1

    def split(self, e: celast_pb2.CelExpr, start: int, end: int) -> PlanNode:
        start, end = self.strip(e, start, end)
        names = self.variables(e)
        spaces = {namespace_of(v) for v in names}
        if len(spaces) <= 1:
            return self.clause(e, spaces.pop() if spaces else PLATFORM, names, start, end)
        kind = e.WhichOneof("expr_kind")
        pos = self.checked.source_info.positions.get(e.id, start)
        if kind == "call_expr" and e.call_expr.function in _JOIN and start <= pos < end:
            left = self.split(e.call_expr.args[0], start, pos)
            right = self.split(e.call_expr.args[1], pos + 2, end)
            return (_JOIN[e.call_expr.function], left, right)
        line, col = _position(self.text, pos)
        what = e.call_expr.function if kind == "call_expr" else kind
        raise RuleNotSplittable(
            f"line {line}, column {col}: {what!r} combines data of "
            f"{', '.join(sorted(spaces))}; only && and || may join clauses of different "
            "departments (write a negation or comparison inside one department's clause)",
            line=line,
            column=col,
        )

    def clause(
        self, e: celast_pb2.CelExpr, space: str, names: set[str], start: int, end: int
    ) -> int:
        text = self.text[start:end]
        # The clause's own text must compile, in its department's environment alone, to
        # exactly this subtree: what a node evaluates is what the rule says.
        try:
            alone = environment(space).compile(text)
            same = _shape(_ast(alone).expr) == _shape(e)
        except RuntimeError:
            same = False
        if not same:  # a cut this splitter cannot make: refused, never evaluated otherwise
            line, col = _position(self.text, start)
            raise RuleNotSplittable(
                f"line {line}, column {col}: the part {text[:60]!r} cannot be cut out of the "
                "rule as one department's clause; put each department's part in parentheses",
                line=line, column=col,
            )  # fmt: skip
        if space != PLATFORM:
            self.comparisons_only(e, space)
        self.clauses.append(Clause(space, text, tuple(sorted(names))))
        return len(self.clauses) - 1

    def comparisons_only(self, e: celast_pb2.CelExpr, space: str) -> None:
        """Refuse a department's clause that is more than its features compared with
        literal constants, joined by ``&&``, ``||``, ``!`` (:class:`ClauseNotComparison`):
        each clause's boolean per enterprise reaches the platform and the ledger, so it
        must be a threshold question, never a function that encodes the value."""
        stack = [e]
        while stack:
            x = stack.pop()
            kind = x.WhichOneof("expr_kind")
            ref = self.checked.reference_map.get(x.id)
            if kind == "const_expr" or (ref is not None and ref.name in _KNOWN):
                continue
            call = x.call_expr
            if kind == "call_expr" and call.function in _COMPARE and not call.HasField("target"):
                stack.extend(call.args)
                continue
            if kind == "list_expr" and all(
                el.WhichOneof("expr_kind") == "const_expr" for el in x.list_expr.elements
            ):
                continue
            what = repr(call.function) if kind == "call_expr" else str(kind).removesuffix("_expr")
            line, col = _position(self.text, self.checked.source_info.positions.get(x.id, 0))
            raise ClauseNotComparison(
                f"line {line}, column {col}: {what} in the clause over {space}'s data; a "
                "department's clause may only compare its features with literal constants "
                "(==, !=, <, <=, >, >=, in [...]) joined by &&, || and !: its boolean per "
                "enterprise is disclosed, so arithmetic or a function over a value could "
                "disclose the value itself",
                line=line, column=col,
            )  # fmt: skip


_KNOWN = frozenset(all_variables())
_COMPARE = frozenset({"_&&_", "_||_", "!_", "_==_", "_!=_", "_<_", "_<=_", "_>_", "_>=_", "@in"})


# -- evaluation (central reference, and the platform's own clauses) -----------------------


def evaluate_central(rule: str, activations: Sequence[Mapping[str, Any]]) -> BoolMatrix:
    """The whole rule evaluated in one place over all of an enterprise's variables (an
    error is ``false``): the reference the per-node split must agree with. Only tests and
    the platform's own namespace use it; screening never gathers feature values."""
    return celvars.ClauseSet(environment(), [rule]).evaluate(activations)[:, 0]


def evaluate_clauses(
    namespace: str, texts: Sequence[str], activations: Sequence[Mapping[str, Any]]
) -> BoolMatrix:
    """(n, k) booleans of ``texts`` over ``activations`` in ``namespace``'s environment."""
    return celvars.ClauseSet(environment(namespace), texts).evaluate(activations)


# -- policies as data ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Policy:
    """A support policy as published by its issuing department.

    ``mode`` "automatic" (免申即享): the platform screens, notifies and pays unless the
    enterprise declines within ``decline_days``; "application": the enterprise applies and
    the ``reviewers`` approve jointly, then a ``notice_days`` public notice (公示).
    ``amount_yuan`` is paid per enterprise (or, with ``benefit_formula``, the formula's
    amount up to ``amount_cap_yuan``); ``budget_yuan`` is never exceeded.
    """

    id: str
    title: str
    department: str
    mode: Mode
    amount_yuan: int
    budget_yuan: int
    opens: date
    closes: date
    rule: str
    decline_days: int = 7
    reviewers: tuple[str, ...] = ()
    notice_days: int = 5
    review_days: int = 10
    fields: tuple[str, ...] = ()
    # A benefit computed per enterprise (see :func:`check_formula`): CEL of type int over
    # one namespace's variables, in integer yuan, clamped to [0, amount_cap_yuan]. With a
    # formula, ``amount_yuan`` must equal the cap (the most one enterprise can receive,
    # what the budget books commit at most); "" = the fixed ``amount_yuan``.
    benefit_formula: str = ""
    amount_cap_yuan: int = 0
    # The performance a funded enterprise pledges (资金跟踪问效), a CEL rule like the
    # eligibility rule, checked in the nodes under the subsidy_tracking basis; "" = none.
    target: str = ""


def _need(ok: bool, field_name: str, why: str) -> None:
    if not ok:
        raise InvalidPolicy(f"{field_name}: {why}", field=field_name)


def validate(p: Policy) -> CheckedRule:
    """Check every field of ``p`` and its rule; the checked rule (or a precise refusal)."""
    _need(bool(POLICY_ID.fullmatch(p.id)), "id", f"expected 3-64 of a-z 0-9 -, got {p.id!r}")
    _need(bool(p.title.strip()) and len(p.title) <= 200, "title", "expected 1-200 characters")
    _need(bool(_ORG.fullmatch(p.department)), "department",
          f"expected an organisation id, got {p.department!r}")  # fmt: skip
    _need(p.mode in MODES, "mode", f"expected one of {', '.join(MODES)}, got {p.mode!r}")
    for name in ("amount_yuan", "budget_yuan"):
        v = getattr(p, name)
        _need(
            type(v) is int and 0 < v <= 10**12, name, f"expected integer yuan 1..10^12, got {v!r}"
        )
    _need(p.amount_yuan <= p.budget_yuan, "budget_yuan",
          f"expected at least one benefit ({p.amount_yuan}), got {p.budget_yuan}")  # fmt: skip
    _need(p.opens <= p.closes, "closes", f"expected on or after opens {p.opens}, got {p.closes}")
    for name in ("decline_days", "notice_days", "review_days"):
        v = getattr(p, name)
        _need(type(v) is int and 1 <= v <= 90, name, f"expected 1..90 days, got {v!r}")
    if p.mode == "application":
        _need(len(p.reviewers) >= 1 and len(set(p.reviewers)) == len(p.reviewers), "reviewers",
              "an application policy needs one or more distinct reviewing departments")  # fmt: skip
    # reviewers are organisations that must be able to sign in and review; a free-form name
    # (any 1,024 characters passed) left every application waiting on nobody
    _need(len(p.reviewers) <= 12, "reviewers", f"expected at most 12, got {len(p.reviewers)}")
    for r in p.reviewers:
        _need(bool(_ORG.fullmatch(r)), "reviewers",
              f"expected organisation ids (a-z 0-9 _ -), got {r[:70]!r}")  # fmt: skip
    _need(len(p.fields) <= 20 and len(set(p.fields)) == len(p.fields), "fields",
          f"expected at most 20 distinct field names, got {len(p.fields)}")  # fmt: skip
    for f in p.fields:
        _need(bool(re.fullmatch(r"[a-z][a-z0-9_]{0,39}", f)), "fields", f"bad field name {f!r}")
    if p.benefit_formula or p.amount_cap_yuan:
        _need(p.amount_cap_yuan == p.amount_yuan, "amount_cap_yuan",
              f"expected the cap to equal amount_yuan ({p.amount_yuan}) for a formula "
              f"benefit, got {p.amount_cap_yuan!r}")  # fmt: skip
        check_formula(p.benefit_formula, p.amount_cap_yuan)
    if p.target:
        check_rule(p.target)
    return check_rule(p.rule)


# -- threshold budget (what all of a department's policies say about one feature) ---------

# Distinct constants one department's policies may compare one feature with, over all of
# their rules and targets: 9 intervals at most, about 3 bits of any value, however many
# near-duplicate policies are published (the city's 129 policies use at most 6).
MAX_THRESHOLDS = 8
_COMPARISONS = frozenset({"_==_", "_!=_", "_<_", "_<=_", "_>_", "_>=_", "@in"})


def _constant(e: celast_pb2.CelExpr) -> str:
    c = e.const_expr
    kind = c.WhichOneof("constant_kind")
    return repr(getattr(c, kind)) if kind else "null"


def thresholds(text: str) -> dict[str, set[str]]:
    """Per department feature, the literal constants ``text`` compares it with."""
    return {name: set(consts) for name, consts in _thresholds(text)}


@functools.lru_cache(maxsize=8_192)  # publishing checks every policy of the department again
def _thresholds(text: str) -> tuple[tuple[str, frozenset[str]], ...]:
    if not text:
        return ()
    checked = _ast(compile_rule(text))
    out: dict[str, set[str]] = {}
    stack = [checked.expr]
    while stack:
        e = stack.pop()
        stack.extend(_children(e))
        if e.WhichOneof("expr_kind") != "call_expr" or e.call_expr.function not in _COMPARISONS:
            continue
        names = [checked.reference_map[a.id].name for a in e.call_expr.args
                 if a.id in checked.reference_map]  # fmt: skip
        names = [n for n in names if n in _KNOWN and namespace_of(n) != PLATFORM]
        consts = [a for a in e.call_expr.args if a.WhichOneof("expr_kind") == "const_expr"]
        for a in e.call_expr.args:
            if a.WhichOneof("expr_kind") == "list_expr":
                consts += list(a.list_expr.elements)
        for n in names:
            out.setdefault(n, set()).update(_constant(c) for c in consts)
    return tuple((n, frozenset(v)) for n, v in sorted(out.items()))


def check_thresholds(p: Policy, published: Sequence[Policy]) -> None:
    """Refuse ``p`` when it would take its department's policies past ``MAX_THRESHOLDS``
    distinct constants for a feature (:class:`ThresholdBudget`)."""
    used: dict[str, set[str]] = {}
    for q in [*published, p]:
        if q.department != p.department:
            continue
        for text in (q.rule, q.target):
            for name, consts in thresholds(text).items():
                used.setdefault(name, set()).update(consts)
    mine = {**thresholds(p.rule), **thresholds(p.target)}
    over = sorted(n for n in mine if len(used[n]) > MAX_THRESHOLDS)
    if over:
        raise ThresholdBudget(
            f"{over[0]} would be compared with {len(used[over[0]])} distinct constants across "
            f"{p.department}'s policies, at most {MAX_THRESHOLDS}: each policy's boolean per "
            "enterprise is disclosed, and thresholds that bisect a value would disclose it; "
            "reuse a threshold already published",
            feature=over[0], department=p.department,
        )  # fmt: skip


# -- benefit formulas (integer yuan, exact) -----------------------------------------------


@dataclass(frozen=True, slots=True)
class Formula:
    """A checked benefit formula: the namespace that evaluates it and its clauses.

    A node answers booleans only, so the amount comes back as booleans too: clause 0 says
    whether the formula evaluates at all (no missing value, no overflow, no division by
    zero); clause ``1 + i`` is bit ``i`` of the clamped amount. The platform learns the
    amount (which it pays anyway) and nothing finer; it asks only for the enterprises a
    screening found eligible. All integer arithmetic: no float touches the amount.
    """

    text: str
    cap_yuan: int
    namespace: str
    clauses: tuple[str, ...]

    def amounts(self, bits: BoolMatrix) -> npt.NDArray[np.int64]:
        """Amounts from (n, len(clauses)) booleans: -1 where the formula is undefined."""
        b = np.asarray(bits, dtype=np.bool_)
        weights = np.array([1 << i for i in range(len(self.clauses) - 1)], dtype=np.int64)
        out = (b[:, 1:].astype(np.int64) * weights).sum(axis=1) if len(weights) else np.zeros(
            b.shape[0], dtype=np.int64)  # fmt: skip
        return np.where(b[:, 0], out, -1)


def check_formula(text: str, cap_yuan: int) -> Formula:
    """Type-check a benefit formula (CEL of type int) against the catalog and cut it into
    its definedness and bit clauses; refusals name the position (:class:`RuleInvalid`)."""
    if type(cap_yuan) is not int or not 0 < cap_yuan <= 10**12:
        raise InvalidPolicy(f"amount_cap_yuan: expected integer yuan 1..10^12, got {cap_yuan!r}",
                            field="amount_cap_yuan")  # fmt: skip
    if not isinstance(text, str) or not text.strip():
        raise RuleInvalid("the benefit formula is empty; write a CEL int expression", line=1, column=1, field="benefit_formula")  # fmt: skip
    if len(text) > MAX_FORMULA_CHARS:
        raise RuleInvalid(f"the formula has {len(text)} characters; at most {MAX_FORMULA_CHARS}",
                          line=1, column=1, field="benefit_formula")  # fmt: skip
    try:
        compiled = environment().compile(text)
    except RuntimeError as exc:
        e = _refuse_compile(text, exc)
        raise RuleInvalid(f"benefit formula: {e.message}", **e.metadata, field="benefit_formula") from None  # fmt: skip
    if compiled.return_type() != cel.Type.INT:
        raise RuleInvalid(
            "line 1, column 1: expected the benefit formula to be an int (integer yuan; "
            f"convert a double with int(...)), got {compiled.return_type().name()}",
            line=1, column=1, field="benefit_formula",
        )  # fmt: skip
    _refuse_unbounded(text, compiled, "the benefit formula", field="benefit_formula")
    checked = _ast(compiled)
    names = _Splitter(text, checked).variables(checked.expr)
    spaces = sorted({namespace_of(v) for v in names}) or [PLATFORM]
    if len(spaces) > 1:
        raise RuleNotSplittable(
            f"line 1, column 1: the benefit formula reads data of {', '.join(spaces)}; a "
            "formula is evaluated by one department (or the platform) alone",
            line=1, column=1, field="benefit_formula",
        )  # fmt: skip
    f = f"({text}\n)"  # the newline ends a trailing // comment before the parenthesis
    clamped = f"({f} < 0 ? 0 : ({f} > {cap_yuan} ? {cap_yuan} : {f}))"
    bits = [f"{clamped} / {1 << i} % 2 == 1" for i in range(cap_yuan.bit_length())]
    return Formula(text, cap_yuan, spaces[0], (f"{f} >= 0 || {f} < 0", *bits))


def evaluate_formula_central(formula: Formula, activations: Sequence[Mapping[str, Any]]) -> list[int | None]:  # fmt: skip
    """The formula evaluated in one place (the reference the bits must agree with; tests
    and the platform's own namespace only): the clamped amount, None where undefined."""
    bits = celvars.ClauseSet(environment(), list(formula.clauses)).evaluate(activations)
    return [None if a < 0 else int(a) for a in formula.amounts(bits).tolist()]


def clause_departments(rule: CheckedRule) -> list[str]:
    """The nodes a rule's screening asks (every namespace but the platform's)."""
    return [s for s in rule.namespaces() if s != PLATFORM and s in BY_ID]


# -- budgets (integer yuan) ---------------------------------------------------------------


def fundable(budget_yuan: int, committed_yuan: int, amount_yuan: int, wanted: int) -> int:
    """How many of ``wanted`` benefits of ``amount_yuan`` still fit in the budget."""
    if amount_yuan <= 0 or wanted <= 0:
        return 0
    return max(0, min(wanted, (budget_yuan - committed_yuan) // amount_yuan))


def platform_row(
    *,
    rating: str | None,
    industry: str,
    district: str,
    size_class: str,
    enterprise_type: str,
    founded_year: int,
) -> dict[str, Any]:
    """An enterprise's ``platform.*`` and ``registry.*`` variables (an unrated enterprise
    has no ``platform.rating``: a clause on it is then false)."""
    row: dict[str, Any] = {
        "registry.industry": industry,
        "registry.district": district,
        "registry.size_class": size_class,
        "registry.enterprise_type": enterprise_type,
        "registry.founded_year": int(founded_year),
    }
    if rating is not None:
        row["platform.rating"] = rating
    return row

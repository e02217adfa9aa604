"""The catalog's derived features as CEL variables, and batch evaluation of CEL clauses.

Eligibility rules of the policy funds are written in CEL (Common Expression Language,
https://github.com/google/cel-spec), compiled, type-checked and evaluated by Google's
C++ implementation (``cel-expr-python``). Every derived feature is the variable
``<department>.<feature>`` (``tax.revenue_12m``), typed from the catalog:

==========  ======  ==========================================================
catalog     CEL     value
==========  ======  ==========================================================
``int``     int     the count, months or persons (an integer)
``float``   double  the released value (amounts already rounded, see catalog)
``bool``    bool    ``true`` when the flag is set
``ordinal`` int     the grade's rank (e.g. tax credit A=5 ... D=1)
==========  ======  ==========================================================

A missing value (no records, not covered) is an *absent* variable: CEL then evaluates
the expression to an error unless the logic short-circuits past it (``x || true``).
Screening maps an error to ``false`` — an enterprise is never found eligible on data
that is not there. This module is pure (no store, no network): a node evaluates its own
clauses with it and the policy service evaluates whole rules with it in tests.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from cel_expr_python import cel
from google.protobuf import any_pb2

from fedcredit.node import catalog
from fedcredit.v1 import celast_pb2

BoolMatrix = npt.NDArray[np.bool_]

_CEL_TYPE = {"int": cel.Type.INT, "float": cel.Type.DOUBLE, "bool": cel.Type.BOOL,
             "ordinal": cel.Type.INT}  # fmt: skip


def variable(f: catalog.Feature) -> str:
    """The CEL name of a feature: ``<department>.<feature>``."""
    return f"{f.department}.{f.name}"


def declarations(department: str | None = None) -> dict[str, cel.Type]:
    """CEL variable declarations of every feature (or of one department's)."""
    feats = catalog.FEATURES if department is None else catalog.for_department(department)
    return {variable(f): _CEL_TYPE[f.type] for f in feats}


def converter(f: catalog.Feature) -> Any:
    """The Python type a feature's float value is given to CEL as (int, float or bool)."""
    return {"int": int, "ordinal": int, "bool": bool, "float": float}[f.type]


def rows(
    features: Sequence[catalog.Feature], values: npt.NDArray[np.float64]
) -> list[dict[str, Any]]:
    """One CEL activation per enterprise (row of ``values``, columns ``features``): the
    present values, typed; a NaN (missing) value is left out of the activation."""
    names = [variable(f) for f in features]
    convs = [converter(f) for f in features]
    out: list[dict[str, Any]] = [{} for _ in range(values.shape[0])]
    for j, (name, conv) in enumerate(zip(names, convs, strict=True)):
        col = values[:, j]
        present = ~np.isnan(col)
        typed = [conv(v) for v in col[present].tolist()]
        for i, v in zip(np.flatnonzero(present).tolist(), typed, strict=True):
            out[i][name] = v
    return out


class ClauseSet:
    """Boolean CEL clauses compiled once, evaluated for many enterprises.

    All clauses are also compiled as one list expression, so an enterprise whose
    activation holds every variable costs one evaluation; an enterprise for which that
    fails (a missing value turned one clause into an error) is evaluated clause by
    clause, each error counting as ``false``.
    """

    def __init__(self, env: Any, texts: Sequence[str]) -> None:
        self.env = env
        self.texts = list(texts)
        self.programs = [env.compile(t) for t in self.texts]
        for t, p in zip(self.texts, self.programs, strict=True):
            if p.return_type() != cel.Type.BOOL:
                raise TypeError(f"expected a bool clause, got {p.return_type().name()}: {t}")
        # the newline ends a trailing ``//`` comment of a clause before its parenthesis
        joined = "[" + ", ".join(f"({t}\n)" for t in self.texts) + "]"
        self.joined = env.compile(joined) if self.texts else None

    def evaluate(self, activations: Sequence[Mapping[str, Any]]) -> BoolMatrix:
        """(n enterprises, k clauses) booleans; an error is ``false``."""
        out = np.zeros((len(activations), len(self.texts)), dtype=np.bool_)
        joined = self.joined
        if joined is None:
            return out
        for i, data in enumerate(activations):
            # An error (a missing variable) comes back as an error *value*, not raised:
            # only a real list of bools is taken as it is.
            # The activation is built once per enterprise, whichever path evaluates it.
            act = self.env.Activation(data=data)
            got = _plain(joined, act)
            if isinstance(got, list) and all(type(b) is bool for b in got):
                out[i] = got
            else:
                out[i] = [_plain(p, act) is True for p in self.programs]
        return out


def _plain(program: Any, activation: Any) -> Any:
    """The evaluation's plain value, or None when it is a CEL error or unknown."""
    try:
        v = program.eval(activation)
    except RuntimeError:
        return None
    if v.type() in (cel.Type.ERROR, cel.Type.UNKNOWN):
        return None
    return v.plain_value()


def checked_ast(compiled: Any) -> celast_pb2.CelCheckedExpr:
    """The type-checked AST of a compiled expression (what cel-cpp serialises)."""
    wrapped = any_pb2.Any()
    wrapped.ParseFromString(compiled.serialize())
    checked = celast_pb2.CelCheckedExpr()
    checked.ParseFromString(wrapped.value)
    return checked


_COSTLY_CALLS = {
    # RE2 is linear in the input, but the pattern is compiled per evaluation: a 3 KB
    # '^(a|aa|aaa){1,500}$' costs ~57 ms per enterprise where a comparison costs ~9 us
    "matches": "'matches' (a regular expression, compiled per evaluation; ~57 ms for a 3 KB "
    "pattern)",
}
_COMPREHENSION = (
    "a comprehension (all, exists, exists_one, map, filter: nested ones multiply their "
    "iterations, ~2.5 ms per enterprise for two lists of 99)"
)


def first_unbounded(checked: celast_pb2.CelCheckedExpr) -> tuple[int, str] | None:
    """The source offset and a description of the first construct in ``checked`` whose
    cost per evaluation is not bounded by a small multiple of its text, or None.

    Screening refuses them: one short clause could otherwise hold a node (or the policy
    service, for the platform's own clauses) for an hour over the city, where without them
    a clause costs at most linear time in its own text, which is bounded."""
    stack = [checked.expr]
    while stack:
        e = stack.pop()
        kind = e.WhichOneof("expr_kind")
        if kind == "comprehension_expr":
            return int(checked.source_info.positions.get(e.id, 0)), _COMPREHENSION
        if kind == "select_expr":
            stack.append(e.select_expr.operand)
        elif kind == "call_expr":
            if e.call_expr.function in _COSTLY_CALLS:
                at = int(checked.source_info.positions.get(e.id, 0))
                return at, _COSTLY_CALLS[e.call_expr.function]
            if e.call_expr.HasField("target"):
                stack.append(e.call_expr.target)
            stack.extend(e.call_expr.args)
        elif kind == "list_expr":
            stack.extend(e.list_expr.elements)
        elif kind == "struct_expr":
            for en in e.struct_expr.entries:
                stack.extend([en.map_key, en.value] if en.HasField("map_key") else [en.value])
    return None


def position(text: str, offset: int) -> tuple[int, int]:
    """(line, column), both from 1, of ``offset`` in ``text``."""
    line = text.count("\n", 0, offset) + 1
    return line, offset - (text.rfind("\n", 0, offset) + 1) + 1


def new_env(variables: Mapping[str, cel.Type]) -> Any:
    """A CEL environment (standard library) declaring ``variables``."""
    return cel.NewEnv(variables=dict(variables))


def pack(bits: npt.NDArray[np.bool_]) -> bytes:
    """One bit per enterprise, little-endian within each byte (the ScreenResponse layout)."""
    return np.packbits(np.asarray(bits, dtype=np.bool_), bitorder="little").tobytes()


def unpack(data: bytes, n: int) -> npt.NDArray[np.bool_]:
    """The ``n`` booleans :func:`pack` wrote; a wrong length is refused."""
    if len(data) != (n + 7) // 8:
        raise ValueError(f"expected {(n + 7) // 8} bytes for {n} enterprises, got {len(data)}")
    return np.unpackbits(np.frombuffer(data, np.uint8), count=n, bitorder="little").astype(np.bool_)

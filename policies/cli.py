"""`fedcredit policy ...`: check a policy (its fields and CEL rule) against the catalog.

``fedcredit policy check FILE.toml`` validates a policy file offline and shows how its rule
is split: which department evaluates which clause, and how the platform combines the
booleans. ``fedcredit policy rule 'CEL'`` does the same for a bare rule. A refused rule
exits 3 (INVALID_ARGUMENT) with the line and column of the error.
"""

from __future__ import annotations

import tomllib
from datetime import date
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from fedcredit.common.cliutil import output, user_errors
from fedcredit.policies import rules
from fedcredit.policies.errors import InvalidPolicy

JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]

policy_app = typer.Typer()
GROUPS: dict[str, typer.Typer] = {"policy": policy_app}


def _plan(checked: rules.CheckedRule) -> dict[str, Any]:
    return {
        "rule": checked.text,
        "combination": checked.describe(),
        "clauses": [
            {"id": f"c{i}", "evaluated_by": c.namespace, "clause": c.text,
             "variables": list(c.variables)}
            for i, c in enumerate(checked.clauses)
        ],
    }  # fmt: skip


def _table(plan: dict[str, Any]) -> Table:
    table = Table(title=f"combination {plan['combination']}")
    for col in ("clause", "evaluated by", "CEL"):
        table.add_column(col)
    for c in plan["clauses"]:
        table.add_row(c["id"], c["evaluated_by"], c["clause"])
    return table


def load_policy(path: Path) -> rules.Policy:
    """A policy from a TOML file (keys as :class:`policies.rules.Policy` fields)."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise InvalidPolicy(f"cannot read {path}: {exc}", field="file") from None
    return policy_from_dict(data)


def policy_from_dict(data: dict[str, Any]) -> rules.Policy:
    known = set(rules.Policy.__dataclass_fields__)
    unknown = sorted(set(data) - known)
    if unknown:
        raise InvalidPolicy(f"unknown field(s) {', '.join(unknown)}", field=unknown[0])
    try:
        for k in ("opens", "closes"):
            if isinstance(data.get(k), str):
                data[k] = date.fromisoformat(data[k])
        for k in ("reviewers", "fields"):
            if k in data:
                data[k] = tuple(data[k])
        return rules.Policy(**data)
    except (TypeError, ValueError) as exc:
        raise InvalidPolicy(f"bad policy: {exc}", field="file") from None


@policy_app.command("check")
def check_cmd(
    path: Annotated[Path, typer.Argument(help="Policy file (TOML).")], as_json: JsonOpt = False
) -> None:
    """Validate a policy file and show how its rule is split between the nodes."""
    with user_errors(as_json):
        policy = load_policy(path)
        plan = {"policy": policy.id, **_plan(rules.validate(policy))}
    output(plan, as_json, _table(plan))


@policy_app.command("rule")
def rule_cmd(
    rule: Annotated[str, typer.Argument(help="A CEL eligibility rule.")], as_json: JsonOpt = False
) -> None:
    """Type-check a CEL rule against the catalog and show its per-department clauses."""
    with user_errors(as_json):
        plan = _plan(rules.check_rule(rule))
    output(plan, as_json, _table(plan))

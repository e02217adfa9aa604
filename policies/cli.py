"""`fedcredit policy ...`: policy funds, offline checks and the running service.

Offline: ``fedcredit policy check FILE.toml`` validates a policy file and shows how its rule
is split: which department evaluates which clause, and how the platform combines the
booleans. ``fedcredit policy rule 'CEL'`` does the same for a bare rule.

The service: ``fedcredit policy serve --config CFG`` runs it (``fedcredit up`` starts it
when the deployment has ``[services.policies]``). Against it, with ``--config CFG --as
ORG`` (the caller's certificate from the deployment's PKI):

* departments: ``publish FILE.toml``, ``list``, ``review APP --approve|--reject``,
  ``show APP``;
* the operator: ``screen --today DATE`` (a 免申即享 run), ``pay`` (awards whose decline
  window passed), ``resolve APP --upheld|--dismissed``, ``advance APP close|pay``;
* enterprises (``--as`` their credit code): ``benefits`` (awards), ``apply POLICY``,
  ``decline POLICY``, ``object APP --reason``, ``show APP``, and once paid
  ``report-progress POLICY --period YYYY-MM --indicator NAME=VALUE`` (a monthly
  self-evaluation) and ``progress`` (a department or the operator: ``progress --policy P``);
* the operator: ``track --round 2026-06 [--report DIR]`` (a tracking round; the report's
  PNGs and report.json are written on the caller's machine).

Every command prints a table or ``--json``. Errors are one line, ``error: REASON:
sentence``, with the exit code of their kind: 2 usage, 3 invalid argument (a refused rule,
with the line and column of the error), 4 not found, 5 already exists, 6 permission denied
(a role not allowed), 8 failed precondition (an illegal approval step, a budget spent),
10 service unavailable.
"""

from __future__ import annotations

import contextlib
import signal
import threading
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


# ---------------------------------------------------------------- the running service

ConfigOpt = Annotated[Path, typer.Option("--config", help="The deployment file (deployment.toml).")]
AsOpt = Annotated[
    str, typer.Option("--as", help="Your organisation id (an enterprise: its credit code).")
]
AppArg = Annotated[str, typer.Argument(help="The application id.")]


def _client(config: Path, who: str) -> Any:
    from fedcredit.common.config import load_config
    from fedcredit.policies.client import PolicyClient

    dep = load_config(config)
    svc = dep.service("policies")
    return PolicyClient(svc.address, dep.tls(who), server_org=svc.org_id)


def _dict(msg: Any) -> dict[str, Any]:
    from google.protobuf.json_format import MessageToDict

    return MessageToDict(msg, preserving_proto_field_name=True)


def _rows(title: str, rows: list[dict[str, Any]], cols: tuple[str, ...]) -> Table:
    table = Table(title=title)
    for col in cols:
        table.add_column(col)
    for r in rows:
        table.add_row(*(str(r.get(c, "")) for c in cols))
    return table


def _show_app(app: Any, as_json: bool) -> None:
    d = _dict(app)
    parts = ", ".join(f"{k}={v}" for k, v in sorted(d.get("parts", {}).items()))
    output(d, as_json, _rows(f"application {d.get('id', '')}", [{**d, "parts": parts}],
                             ("policy_id", "enterprise", "state", "parts")))  # fmt: skip


@policy_app.command("serve")
def serve_cmd(config: ConfigOpt) -> None:
    """Run the policy-fund service ([services.policies]) until SIGTERM/SIGINT."""
    with user_errors():
        from fedcredit.common import metrics
        from fedcredit.common.config import load_config
        from fedcredit.policies.daemon import build_all

        dep = load_config(config)
        metrics.start(dep.service("policies").metrics, "policies")
        server, store, (monthly, every) = build_all(dep)
        server.start()
        typer.echo(f"policy service serving on port {server.port}")
        stop = threading.Event()
        # the monthly tracking round (policies.daemon.MonthlyTracking), beside the server
        tracker = threading.Thread(target=monthly.run, args=(stop, every), daemon=True)
        tracker.start()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        with contextlib.suppress(KeyboardInterrupt):
            stop.wait()
        stop.set()
        tracker.join(timeout=10)
        server.stop(5)
        store.close()


@policy_app.command("publish")
def publish_cmd(
    path: Annotated[Path, typer.Argument(help="Policy file (TOML).")], config: ConfigOpt,
    who: AsOpt, as_json: JsonOpt = False,
) -> None:  # fmt: skip
    """Publish a policy (a department or the operator); its rule is checked first."""
    from fedcredit.policies.service import policy_to_pb

    with user_errors(as_json):
        policy = load_policy(path)
        rules.validate(policy)
        with _client(config, who) as c:
            resp = c.publish(policy_to_pb(policy))
        plan = {"policy": policy.id, "combination": resp.combination,
                "clauses": [{"id": x.id, "evaluated_by": x.evaluated_by, "clause": x.cel}
                            for x in resp.clauses]}  # fmt: skip
    output(plan, as_json, _table(plan))


@policy_app.command("list")
def list_cmd(
    config: ConfigOpt, who: AsOpt,
    mode: Annotated[str, typer.Option(help="automatic or application (default: all).")] = "",
    as_json: JsonOpt = False,
) -> None:  # fmt: skip
    """The published policies."""
    with user_errors(as_json), _client(config, who) as c:
        rows = [_dict(p) for p in c.policies(mode)]
    cols = ("id", "title", "department", "mode", "amount_yuan", "budget_yuan", "closes")
    output(rows, as_json, _rows("policies", rows, cols))


@policy_app.command("screen")
def screen_cmd(
    config: ConfigOpt, who: AsOpt,
    today: Annotated[str, typer.Option("--today", help="The run's date, YYYY-MM-DD.")],
    run_id: Annotated[str, typer.Option("--run-id", help="Run id (default: from the time).")] = "",
    as_json: JsonOpt = False,
) -> None:  # fmt: skip
    """Run a 免申即享 screening of every enterprise against the open automatic policies."""
    with user_errors(as_json), _client(config, who) as c:
        d = _dict(c.run_screening(today, run_id))
    rows = [{"policy": p, "eligible": n, "notified": d.get("notified", {}).get(p, 0),
             "unfunded": d.get("unfunded", {}).get(p, 0)}
            for p, n in sorted(d.get("eligible", {}).items())]  # fmt: skip
    output(d, as_json, _rows(f"run {d.get('run_id', '')}: {d.get('enterprises', 0)} "
                             f"enterprises", rows, ("policy", "eligible", "notified", "unfunded")))  # fmt: skip


@policy_app.command("pay")
def pay_cmd(config: ConfigOpt, who: AsOpt, as_json: JsonOpt = False) -> None:
    """Pay every award whose decline window has passed (the operator)."""
    with user_errors(as_json), _client(config, who) as c:
        d = _dict(c.pay_due())
    output({"paid": d.get("paid", 0), "amount_yuan": int(d.get("amount_yuan", 0))}, as_json)


@policy_app.command("benefits")
def benefits_cmd(config: ConfigOpt, who: AsOpt, as_json: JsonOpt = False) -> None:
    """The benefits awarded to you (an enterprise), with their decline windows."""
    with user_errors(as_json), _client(config, who) as c:
        rows = [_dict(a) for a in c.awards()]
    cols = ("policy_id", "amount_yuan", "state", "decline_until", "run_id")
    output(rows, as_json, _rows("benefits", rows, cols))


@policy_app.command("decline")
def decline_cmd(
    policy_id: Annotated[str, typer.Argument(help="The policy whose benefit you decline.")],
    config: ConfigOpt, who: AsOpt, as_json: JsonOpt = False,
) -> None:  # fmt: skip
    """Decline a benefit awarded to you (within its decline window)."""
    with user_errors(as_json), _client(config, who) as c:
        d = _dict(c.decline(policy_id))
    output(d, as_json)


def _pairs(items: list[str], what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise InvalidPolicy(f"{what}: expected NAME=VALUE, got {item!r}", field=what)
        if name in out:
            raise InvalidPolicy(f"{what}: {name!r} given twice", field=what)
        out[name] = value
    return out


@policy_app.command("apply")
def apply_cmd(
    policy_id: Annotated[str, typer.Argument(help="The application policy.")],
    config: ConfigOpt, who: AsOpt,
    app_id: Annotated[str, typer.Option("--id", help="Your application id.")],
    field: Annotated[list[str], typer.Option("--field", help="A form field, NAME=VALUE.")] = [],  # noqa: B006
    attach: Annotated[list[str], typer.Option("--attach", help="An attachment, NAME=FILE.")] = [],  # noqa: B006
    as_json: JsonOpt = False,
) -> None:  # fmt: skip
    """Apply for a policy (an enterprise): form fields and attachments (stored by SHA-256)."""
    with user_errors(as_json):
        fields = _pairs(field, "field")
        docs = {k: Path(v).read_bytes() for k, v in _pairs(attach, "attach").items()}
        with _client(config, who) as c:
            app = c.apply(app_id, policy_id, fields, docs)
    _show_app(app, as_json)


@policy_app.command("review")
def review_cmd(
    app_id: AppArg, config: ConfigOpt, who: AsOpt,
    approve: Annotated[bool, typer.Option("--approve/--reject", help="Your department's decision.")],
    as_json: JsonOpt = False,
) -> None:  # fmt: skip
    """Review your department's part of an application."""
    with user_errors(as_json), _client(config, who) as c:
        app = c.review(app_id, approve)
    _show_app(app, as_json)


@policy_app.command("show")
def show_cmd(app_id: AppArg, config: ConfigOpt, who: AsOpt, as_json: JsonOpt = False) -> None:
    """An application, its department parts and its history."""
    with user_errors(as_json), _client(config, who) as c:
        app = c.application(app_id)
    _show_app(app, as_json)


@policy_app.command("object")
def object_cmd(
    app_id: AppArg, config: ConfigOpt, who: AsOpt,
    reason: Annotated[str, typer.Option("--reason", help="Why you object.")],
    as_json: JsonOpt = False,
) -> None:  # fmt: skip
    """Lodge an objection against a decision during its public notice."""
    with user_errors(as_json), _client(config, who) as c:
        app = c.object(app_id, reason)
    _show_app(app, as_json)


@policy_app.command("resolve")
def resolve_cmd(
    app_id: AppArg, config: ConfigOpt, who: AsOpt,
    upheld: Annotated[bool, typer.Option("--upheld/--dismissed", help="The objection's fate.")],
    as_json: JsonOpt = False,
) -> None:  # fmt: skip
    """Resolve an objection (the operator)."""
    with user_errors(as_json), _client(config, who) as c:
        app = c.resolve(app_id, upheld)
    _show_app(app, as_json)


@policy_app.command("advance")
def advance_cmd(
    app_id: AppArg, step: Annotated[str, typer.Argument(help="close (the notice) or pay.")],
    config: ConfigOpt, who: AsOpt, as_json: JsonOpt = False,
) -> None:  # fmt: skip
    """Close an application's public notice, or pay it (the operator)."""
    with user_errors(as_json), _client(config, who) as c:
        app = c.advance(app_id, step)
    _show_app(app, as_json)


@policy_app.command("report-progress")
def report_progress_cmd(
    policy_id: Annotated[str, typer.Argument(help="The policy you were paid under.")],
    config: ConfigOpt, who: AsOpt,
    period: Annotated[str, typer.Option("--period", help="The month reported, YYYY-MM.")],
    indicator: Annotated[list[str], typer.Option(
        "--indicator", help="NAME=VALUE: revenue_yuan, employees, tax_yuan, rnd_yuan.")] = [],  # noqa: B006
    narrative: Annotated[str, typer.Option("--narrative", help="Your own account.")] = "",
    as_json: JsonOpt = False,
) -> None:  # fmt: skip
    """File your self-evaluation for one month of a funded policy (an enterprise; once a month)."""
    with user_errors(as_json):
        values: dict[str, float] = {}
        for name, text in _pairs(indicator, "indicator").items():
            try:
                values[name] = float(text)
            except ValueError:
                raise InvalidPolicy(f"indicator {name}: expected a number, got {text!r}",
                                    field="indicator") from None  # fmt: skip
        with _client(config, who) as c:
            d = _dict(c.report_progress(policy_id, period, values, narrative))
    output(d, as_json, _rows("self-evaluation filed", [d], ("policy_id", "period", "digest")))


@policy_app.command("progress")
def progress_cmd(
    config: ConfigOpt, who: AsOpt,
    policy_id: Annotated[str, typer.Option("--policy", help="The policy (required unless "
                                           "you are an enterprise).")] = "",
    plot: Annotated[Path | None, typer.Option(
        "--plot", help="Write one PNG per enterprise listed into this folder.")] = None,
    as_json: JsonOpt = False,
) -> None:  # fmt: skip
    """Self-evaluations: your own (an enterprise), or a policy's (its department, the operator)."""
    with user_errors(as_json), _client(config, who) as c:
        reports = c.progress(policy_id)
    if plot is not None:
        with user_errors(as_json):
            plot_progress(plot, reports)
    rows = [_dict(r) for r in reports]
    flat = [{**r, "indicators": ", ".join(f"{k}={v:g}" for k, v in sorted(
        r.get("indicators", {}).items()))} for r in rows]  # fmt: skip
    output(rows, as_json, _rows("self-evaluations", flat,
                                ("policy_id", "enterprise", "period", "indicators")))  # fmt: skip


def _evaluations(reports: list[Any]) -> list[Any]:
    from fedcredit.policies import progress

    return [progress.SelfEvaluation(r.policy_id, r.enterprise, r.period, dict(r.indicators),
                                    r.narrative, r.submitted_at) for r in reports]  # fmt: skip


def plot_progress(out: Path, reports: list[Any]) -> list[Path]:
    """One PNG per enterprise of ``reports`` (its own indicators month by month)."""
    from fedcredit.policies.report import enterprise_png

    out.mkdir(parents=True, exist_ok=True)
    evs = _evaluations(reports)
    return [enterprise_png(out / f"enterprise-{code}.png", code,
                           [e for e in evs if e.enterprise == code])
            for code in sorted({e.enterprise for e in evs})]  # fmt: skip


@policy_app.command("track")
def track_cmd(
    config: ConfigOpt, who: AsOpt,
    round_id: Annotated[str, typer.Option("--round", help="The round, e.g. 2026-06.")],
    report: Annotated[Path | None, typer.Option(
        "--report", help="Write report.json and PNG plots per policy into this folder.")] = None,
    as_json: JsonOpt = False,
) -> None:  # fmt: skip
    """Run a tracking round (the operator): targets met, cohort aggregates, proposals."""
    with user_errors(as_json), _client(config, who) as c:
        resp = c.tracking_round(round_id)
        reports = [r for p in resp.policies for r in c.progress(p.policy_id)] if report else []
    rows = [_dict(p) for p in resp.policies]
    if report is not None:
        with user_errors(as_json):
            _write_report(report, resp, reports)
    flat = [{**r, "flagged": len(r.get("flagged", []))} for r in rows]
    output(rows, as_json, _rows(f"tracking round {resp.round_id}", flat,
                                ("policy_id", "funded", "target_met", "flagged", "cohort_status")))  # fmt: skip


def _write_report(out: Path, resp: Any, reports: list[Any]) -> None:
    from fedcredit.policies.cohort import CohortRow
    from fedcredit.policies.report import write_report
    from fedcredit.policies.tracking import PolicyTracking

    targets = [PolicyTracking(p.policy_id, p.funded, p.target_met, list(p.flagged),
                              [{"enterprise": x.enterprise, "action": x.action,
                                "amount_yuan": x.amount_yuan} for x in p.proposals])
               for p in resp.policies if p.has_target]  # fmt: skip
    cohorts = [CohortRow(p.policy_id, p.funded, p.cohort_status, {
        i.name: {"present": i.present, "sum": i.sum, "suppressed": i.suppressed,
                 "mean": i.sum / i.present if i.present and not i.suppressed else None}
        for i in p.cohort}) for p in resp.policies]  # fmt: skip
    write_report(out, targets, cohorts, _evaluations(reports))

"""Coordinator commands: `coordinator serve`, the bank's scoring and guarantee commands,
`fund status` and `model list|show|activate|publish`.

Bank, operator and auditor commands read the deployment file (``--config``)
for the coordinator's address and their own certificate (``--org``).
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from fedcredit.common.cliutil import (
    console,
    err_console,
    fail,
    output,
    read_token_file,
    user_errors,
)
from fedcredit.common.errors import FedcreditError, InvalidArgument
from fedcredit.coordinator.batchfile import (
    InputRowError,
    Journal,
    csv_from_journal,
    journal_path,
    read_rows,
)

if TYPE_CHECKING:
    from fedcredit.coordinator.client import CoordinatorClient
    from fedcredit.v1 import coordinator_pb2 as pb

ConfigOpt = Annotated[Path, typer.Option("--config", help="The deployment file (deployment.toml).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
BankOpt = Annotated[
    str, typer.Option("--bank", help="Your bank's organisation id (its certificate is used).")
]
OrgOpt = Annotated[
    str, typer.Option("--org", help="Your organisation id (its certificate is used).")
]

# The command groups this module adds to (clients.cli merges them into the root's groups).
coordinator = typer.Typer()
bank = typer.Typer()
guarantee = typer.Typer(help="Guarantees from the credit guarantee fund.", no_args_is_help=True)
bank.add_typer(guarantee, name="guarantee")
fund = typer.Typer()
model = typer.Typer()
GROUPS: dict[str, typer.Typer] = {
    "bank": bank,
    "fund": fund,
    "model": model,
    "coordinator": coordinator,
}


def _client(config: Path, org: str, timeout: float = 30.0) -> CoordinatorClient:
    from fedcredit.common.config import load_config
    from fedcredit.coordinator.client import CoordinatorClient

    dep = load_config(config)
    svc = dep.service("coordinator")
    return CoordinatorClient(svc.address, dep.tls(org), server_org=svc.org_id, timeout=timeout)


_read_token = read_token_file  # the one reader (common.cliutil), also the market's


def decision_dict(d: pb.GuaranteeDecision) -> dict[str, Any]:
    return {
        "application_id": d.application_id,
        "approved": d.approved,
        "reason": d.reason,
        "explanation": d.explanation,
        "status": d.status,
        "enterprise": d.enterprise,
        "amount_yuan": d.amount_yuan,
        "term_months": d.term_months,
        "rating": d.rating,
        "probability_of_default": d.probability_of_default,
        "model_version": d.model_version,
        "fund_share_pct": d.fund_share_bp / 100,
        "bank_share_pct": d.bank_share_bp / 100,
        "fund_amount_yuan": d.fund_amount_yuan,
        "collateral_required_yuan": d.collateral_required_yuan,
        "reasons": [x.description for x in d.reasons],
        "missing_categories": list(d.missing_categories),
        "ledger_index": d.ledger_index,
        "replayed": d.replayed,
    }


def score_dict(r: pb.ScoreResult) -> dict[str, Any]:
    # one mapping, with the SDK (the portal's pages use it too); imported lazily as below
    from fedcredit.coordinator.client import score_dict as mapping

    return mapping(r)


def model_dict(m: pb.ModelVersion) -> dict[str, Any]:
    # the mapping lives with the SDK (the portal shows it too); imported here lazily so
    # the CLI starts without gRPC
    from fedcredit.coordinator.client import model_dict as mapping

    return mapping(m)


def _privacy_line(p: dict[str, Any] | None) -> str:
    if p is None:
        return "none: trained without differential privacy"
    return (
        f"epsilon {p['epsilon']:.3g}, delta {p['delta']:g} per training run "
        "(one borrower's row at one bank)"
    )


def _kv_table(title: str, data: dict[str, Any]) -> Table:
    t = Table(title=title, show_header=False)
    t.add_column("", style="bold")
    t.add_column("")
    for k, v in data.items():
        if isinstance(v, list | dict):
            v = json.dumps(v, ensure_ascii=False) if v else "-"
        t.add_row(k.replace("_", " "), str(v))
    return t


def _score_table(d: dict[str, Any]) -> Table:
    t = Table(title=f"Score for {d['enterprise']}")
    t.add_column("rating", style="bold")
    t.add_column("probability of default", justify="right")
    t.add_column("model")
    t.add_column("top reasons")
    t.add_column("missing")
    t.add_column("ledger #", justify="right")
    reasons = "\n".join(f"{i + 1}. {r['description']}" for i, r in enumerate(d["reasons"])) or "-"
    t.add_row(
        d["rating"],
        f"{d['probability_of_default']:.4f}",
        d["model_version"],
        reasons,
        ", ".join(d["missing_categories"]) or "-",
        str(d["ledger_index"]),
    )
    return t


def _watch_list(path: Path) -> list[tuple[str, str]]:
    """The watch list (the score-batch input format): every row usable, or the first that is
    not named with its line; nothing is watched from a list with a bad row."""
    subs = []
    for row in read_rows(path, _read_token):
        if isinstance(row, InputRowError):
            raise InvalidArgument(f"{path}:{row.row}: {row.message}", reason="INVALID_INPUT_ROW")
        subs.append((row[0], row[1]))
    return subs


# ---------------------------------------------------------------- coordinator


@coordinator.command("serve")
def serve_cmd(
    config: ConfigOpt,
    insecure: Annotated[bool, typer.Option(help="Plaintext gRPC (debugging only).")] = False,
) -> None:
    """Run the coordinator (scoring, guarantees, model registry) until interrupted."""
    import asyncio

    from fedcredit.common import metrics
    from fedcredit.common.config import load_config
    from fedcredit.common.gctune import tune_for_service
    from fedcredit.coordinator.daemon import serve

    with user_errors(), contextlib.suppress(KeyboardInterrupt):
        metrics.start(load_config(config).service("coordinator").metrics, "coordinator")
        asyncio.run(serve(config, insecure=insecure, on_ready=tune_for_service))


# ---------------------------------------------------------------- bank: scores


@bank.command("score")
def score_cmd(
    config: ConfigOpt,
    bank_org: BankOpt,
    enterprise: Annotated[str, typer.Option("--enterprise", help="The enterprise's credit code.")],
    consent: Annotated[Path, typer.Option("--consent", help="File with the consent token.")],
    as_json: JsonOpt = False,
) -> None:
    """Score one enterprise with its consent: rating, probability of default, top reasons."""
    with user_errors(as_json), _client(config, bank_org) as c:
        d = score_dict(c.score(enterprise, _read_token(consent)))
    output(d, as_json, _score_table(d))


class _RateColumn(ProgressColumn):
    """Enterprises per second over the run so far."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("-/s" if speed is None else f"{speed:,.0f}/s", style="progress.data.speed")


def _batch_row(item: pb.ScoreBatchItem, batch_id: str) -> dict[str, Any]:
    if item.HasField("result"):
        row = score_dict(item.result)
        row["request_id"] = item.request_id
        if item.replayed:
            row["replayed"] = True
    else:
        row = {
            "enterprise": item.enterprise,
            "request_id": item.request_id,
            "error": {"reason": item.error.reason, "message": item.error.message},
        }
    row["batch_id"] = batch_id
    return row


def _score_all(
    c: CoordinatorClient,
    items: list[tuple[str, str, str]],
    batch_id: str,
    journal: Journal | None,
    as_json: bool,
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Every item's result or refusal, each written to the journal as it arrives (a
    progress bar with rate and ETA on stderr), and the counts per rating."""
    from fedcredit.coordinator.client import batch_deadline

    results: list[dict[str, Any]] = []
    counts: dict[str, int] = {}
    columns = (
        TextColumn("scoring"), BarColumn(), MofNCompleteColumn(), _RateColumn(),
        TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
    )  # fmt: skip
    # the bar on a terminal only: a log or a pipe gets whole lines (the error's, one)
    with Progress(
        *columns, console=err_console, disable=as_json or not err_console.is_terminal
    ) as bar:
        task = bar.add_task("score", total=len(items))
        stream = c.score_batch(items, batch_id=batch_id, timeout=batch_deadline(len(items)))
        for item in stream:
            row = _batch_row(item, batch_id)
            key = "refused" if "error" in row else row["rating"]
            counts[key] = counts.get(key, 0) + 1
            if journal is not None:
                journal.write(row)
            results.append(row)
            bar.advance(task)
    return results, counts


def _batch_table(results: list[dict[str, Any]], counts: dict[str, int]) -> Table:
    t = Table(title=f"{len(results)} enterprises scored")
    t.add_column("enterprise")
    t.add_column("rating / refusal")
    t.add_column("PD", justify="right")
    t.add_column("top reason")
    for r in results[:50]:
        if "error" in r:
            t.add_row(
                r.get("enterprise") or f"row {r.get('input_row', '?')}",
                f"[red]{r['error']['reason']}[/]",
                "-",
                r["error"]["message"],
            )
        else:
            t.add_row(
                r["enterprise"],
                r["rating"],
                f"{r['probability_of_default']:.4f}",
                r["reasons"][0]["description"] if r["reasons"] else "-",
            )
    if len(results) > 50:
        t.caption = f"first 50 of {len(results)}; totals: {counts}"
    else:
        t.caption = f"totals: {counts}"
    return t


def _new_batch_id() -> str:
    import secrets
    import time

    return f"sb-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{secrets.token_hex(4)}"


def _open_journal(
    out: Path | None, resume: bool, batch_id: str | None
) -> tuple[str, Journal | None, dict[str, dict[str, Any]]]:
    """The batch id, the journal to append to, and the rows a resumed run has already."""
    from fedcredit.coordinator.batches import check_batch_id
    from fedcredit.coordinator.batchfile import JournalExists, JournalMismatch, read_journal

    if batch_id is not None:  # refused here, before a line names it or a journal holds it
        check_batch_id(batch_id)
    if out is None:
        if resume:
            raise InvalidArgument("--resume continues the batch in --out; give --out")
        return batch_id or _new_batch_id(), None, {}
    path = journal_path(out)
    had, rows = read_journal(path)
    if resume:
        if had is None:
            raise JournalMismatch(f"{path} holds no answers of a batch; nothing to resume")
        if batch_id is not None and batch_id != had:
            raise JournalMismatch(f"{path} holds batch {had!r}, not --batch-id {batch_id!r}")
        return had, Journal(path, append=True), rows
    if had is not None:
        raise JournalExists(
            f"{path} holds {len(rows)} answer(s) of batch {had!r}; "
            "pass --resume to continue that batch, or choose another --out"
        )
    return batch_id or _new_batch_id(), Journal(path, append=False), {}


@bank.command("score-batch")
def score_batch_cmd(
    config: ConfigOpt,
    bank_org: BankOpt,
    input: Annotated[
        Path,
        typer.Option(
            "--input",
            help="CSV with columns enterprise,token (or consent=file)[,request_id] or JSON lines "
            "with the same keys; a row that cannot be used is reported and skipped.",
        ),
    ],
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Results: JSON lines written as each answer arrives; for a .csv name the "
            "lines go to <name>.jsonl and the CSV is written at the end.",
        ),
    ] = None,
    batch_id: Annotated[
        str | None,
        typer.Option(
            "--batch-id",
            help="Name the batch (default: a new id). Sending a batch id again returns what "
            "was scored already, with no new disclosure, ledger entry or consent use.",
        ),
    ] = None,
    resume: Annotated[
        bool,
        typer.Option("--resume", help="Continue the interrupted batch whose answers are in --out."),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Score a portfolio, one consent per enterprise (streaming, resumable)."""
    with user_errors(as_json):
        parsed = list(read_rows(input, _read_token))
        items = [r for r in parsed if not isinstance(r, InputRowError)]
        bad = [r for r in parsed if isinstance(r, InputRowError)]
        if not items and bad:
            raise InvalidArgument(f"{input}: no usable row; row {bad[0].row}: {bad[0].message}")
        bid, journal, done = _open_journal(out, resume, batch_id)
        try:
            results, counts = _run_batch(config, bank_org, items, bad, bid, journal, done, as_json)
        finally:
            if journal is not None:
                journal.close()
        if out is not None and out.suffix == ".csv":
            csv_from_journal(journal_path(out), out)
    t = _batch_table(results, counts)
    t.title = f"batch {bid}: {len(results)} rows"
    data = {"batch_id": bid, "results": results, "counts": counts}
    output(data if as_json else results, as_json, t)


def _run_batch(
    config: Path,
    bank_org: str,
    items: list[tuple[str, str, str]],
    bad: list[InputRowError],
    bid: str,
    journal: Journal | None,
    done: dict[str, dict[str, Any]],
    as_json: bool,
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Report the unusable rows, send the rest (a resumed run: what is not answered yet)."""
    client = _client(config, bank_org)  # a deployment that does not load: its line alone
    kept = [r for rid, r in done.items() if "error" not in r]
    counts: dict[str, int] = {}
    for r in kept:
        counts[r["rating"]] = counts.get(r["rating"], 0) + 1
    bad_rows = [
        b.to_dict(bid) for b in bad if b.request_id not in done or "error" in done[b.request_id]
    ]
    for b in bad:
        if not as_json:
            err_console.print(f"[yellow]{input_name(b)}[/]: INVALID_INPUT_ROW: {b.message}", highlight=False, soft_wrap=True)  # fmt: skip
    for row in bad_rows:
        if journal is not None:
            journal.write(row)
    if bad:
        counts["invalid_row"] = len(bad)
    todo = [it for it in items if it[2] not in done or "error" in done[it[2]]]
    if not as_json and err_console.is_terminal:
        err_console.print(f"batch {bid}: {len(todo)} to score" + (f", {len(kept)} answered before" if kept else ""), highlight=False, soft_wrap=True)  # fmt: skip
    results: list[dict[str, Any]] = [*kept, *bad_rows]
    with client as c:
        try:
            got, more = _score_all(c, todo, bid, journal, as_json)
        except FedcreditError as exc:
            where = f" in {journal.path}" if journal is not None else ""
            exc.message += (
                f" (batch {bid} interrupted; the answers received are{where}: "
                + ("continue with --resume)" if journal is not None else f"send it again with --batch-id {bid})")
            )  # fmt: skip
            raise
    for k, v in more.items():
        counts[k] = counts.get(k, 0) + v
    return [*results, *got], counts


def input_name(b: InputRowError) -> str:
    return f"row {b.row} (request id {b.request_id})"


def _watch_row(ev: pb.RatingEvent, kind: str) -> dict[str, Any]:
    row: dict[str, Any] = {"round": ev.round, "kind": kind, "enterprise": ev.enterprise}
    if ev.HasField("result"):
        row.update(previous_rating=ev.previous_rating or None, **score_dict(ev.result))
    if ev.HasField("error"):
        row["error"] = {"reason": ev.error.reason, "message": ev.error.message}
    return row


def _print_event(ev: pb.RatingEvent, kind: str) -> None:
    if kind == "DOWNGRADE":
        console.print(
            f"[bold red]WARNING[/] {ev.enterprise}: rating fell {ev.previous_rating} -> "
            f"{ev.result.rating} (PD {ev.result.probability_of_default:.4f}); "
            f"reasons: {'; '.join(r.description for r in ev.result.reasons)}"
        )
    elif kind == "ERROR":
        console.print(f"[yellow]{ev.enterprise}[/]: {ev.error.reason}: {ev.error.message}")
    else:
        console.print(
            f"round {ev.round} {kind.lower()}: {ev.enterprise} rated {ev.result.rating} "
            f"(PD {ev.result.probability_of_default:.4f})"
        )


@bank.command("watch")
def watch_cmd(
    config: ConfigOpt,
    bank_org: BankOpt,
    input: Annotated[
        Path,
        typer.Option(
            "--input", help="Enterprises and post_loan_monitoring tokens (as score-batch)."
        ),
    ],
    interval: Annotated[
        int, typer.Option(help="Rescoring interval in seconds (0: server default).")
    ] = 0,
    rounds: Annotated[
        int, typer.Option(help="Stop after this many rounds (0: until interrupted).")
    ] = 0,
    as_json: JsonOpt = False,
) -> None:
    """Post-loan monitoring: print each enterprise's rating, then a warning whenever one falls."""
    with user_errors(as_json), _client(config, bank_org) as c:
        subs = _watch_list(input)
        from fedcredit.v1 import coordinator_pb2 as pbm

        names = {v: k for k, v in pbm.RatingEvent.Kind.items()}
        try:
            for ev in c.watch(subs, interval_seconds=interval, max_rounds=rounds):
                kind = names.get(ev.kind, str(ev.kind))
                if as_json:
                    sys.stdout.write(json.dumps(_watch_row(ev, kind), ensure_ascii=False) + "\n")
                    sys.stdout.flush()
                else:
                    _print_event(ev, kind)
        except KeyboardInterrupt:
            pass


# ---------------------------------------------------------------- bank: guarantees


@guarantee.command("apply")
def apply_cmd(
    config: ConfigOpt,
    bank_org: BankOpt,
    application_id: Annotated[
        str,
        typer.Option("--application-id", help="Your id for this application (idempotency key)."),
    ],
    enterprise: Annotated[str, typer.Option("--enterprise", help="The enterprise's credit code.")],
    consent: Annotated[
        Path, typer.Option("--consent", help="File with the consent token (purpose guarantee).")
    ],
    amount: Annotated[int, typer.Option("--amount", help="Loan amount in yuan.")],
    term: Annotated[int, typer.Option("--term", help="Loan term in months.")],
    collateral: Annotated[
        int, typer.Option("--collateral", help="Value of the collateral offered, yuan.")
    ] = 0,
    as_json: JsonOpt = False,
) -> None:
    """Apply for a guarantee; the fund decides by its published rules."""
    with user_errors(as_json), _client(config, bank_org) as c:
        d = decision_dict(
            c.apply(
                application_id=application_id,
                enterprise=enterprise,
                token=_read_token(consent),
                amount_yuan=amount,
                term_months=term,
                collateral_yuan=collateral,
            )
        )
    output(d, as_json, _kv_table("Guarantee decision", d))


@guarantee.command("report")
def report_cmd(
    config: ConfigOpt,
    bank_org: BankOpt,
    application_id: Annotated[
        str, typer.Option("--application-id", help="The guaranteed application.")
    ],
    outcome: Annotated[str, typer.Option("--outcome", help="repaid or defaulted.")],
    loss: Annotated[
        int, typer.Option("--loss", help="Defaulted: the loss in yuan (0 = full amount).")
    ] = 0,
    as_json: JsonOpt = False,
) -> None:
    """Report a guaranteed loan repaid (exposure released) or defaulted (the fund pays its share)."""
    if outcome not in ("repaid", "defaulted"):
        fail(
            InvalidArgument(f"--outcome must be repaid or defaulted, got {outcome!r}"),
            as_json=as_json,
        )
    with user_errors(as_json), _client(config, bank_org) as c:
        r = c.report_outcome(application_id, defaulted=outcome == "defaulted", loss_yuan=loss)
    d = {
        "application_id": r.application_id,
        "status": r.status,
        "payout_yuan": r.payout_yuan,
        "ledger_index": r.ledger_index,
        "replayed": r.replayed,
    }
    output(d, as_json, _kv_table("Outcome recorded", d))


@guarantee.command("list")
def list_cmd(
    config: ConfigOpt,
    bank_org: BankOpt,
    enterprise: Annotated[str, typer.Option("--enterprise", help="Only this enterprise.")] = "",
    as_json: JsonOpt = False,
) -> None:
    """Your bank's guarantees."""
    with user_errors(as_json), _client(config, bank_org) as c:
        rows = [decision_dict(g) for g in c.list_guarantees(enterprise=enterprise)]
    t = Table(title="Guarantees")
    for col in (
        "application",
        "enterprise",
        "amount",
        "rating",
        "status",
        "fund share",
        "fund amount",
    ):
        t.add_column(col)
    for r in rows:
        t.add_row(
            r["application_id"],
            r["enterprise"],
            f"{r['amount_yuan']:,}",
            r["rating"],
            r["status"],
            f"{r['fund_share_pct']:.0f} %",
            f"{r['fund_amount_yuan']:,}",
        )
    output(rows, as_json, t)


# ---------------------------------------------------------------- fund


@fund.command("status")
def fund_status_cmd(config: ConfigOpt, org: OrgOpt, as_json: JsonOpt = False) -> None:
    """The fund's size, balance, exposure, remaining capacity and payouts."""
    with user_errors(as_json), _client(config, org) as c:
        s = c.fund_status()
    d = {
        "fund_size_yuan": s.fund_size_yuan,
        "balance_yuan": s.balance_yuan,
        "exposure_yuan": s.exposure_yuan,
        "capacity_yuan": s.capacity_yuan,
        "max_leverage": s.max_leverage,
        "paid_out_yuan": s.paid_out_yuan,
        "active": s.active,
        "approved": s.approved,
        "refused": s.refused,
        "released": s.released,
        "defaulted": s.defaulted,
        "policy": json.loads(s.policy_json or "{}"),
    }
    shown = {k: (f"{v:,}" if isinstance(v, int) else v) for k, v in d.items() if k != "policy"}
    output(d, as_json, _kv_table("Credit guarantee fund", shown))


# ---------------------------------------------------------------- model registry


@model.command("list")
def model_list_cmd(config: ConfigOpt, org: OrgOpt, as_json: JsonOpt = False) -> None:
    """Every registered model version."""
    with user_errors(as_json), _client(config, org) as c:
        rows = [model_dict(m) for m in c.list_models()]
    t = Table(title="Model registry")
    for col in (
        "version",
        "active",
        "trainer",
        "created",
        "sha256",
        "features",
        "epsilon, delta",
        "metrics",
    ):
        t.add_column(col)
    for r in rows:
        t.add_row(
            r["version"],
            "yes" if r["active"] else "",
            r["trainer"],
            str(r["created_at"]),
            r["sha256"][:16] + "…",
            str(len(r["features"])),
            f"{r['privacy']['epsilon']:.3g}, {r['privacy']['delta']:g}" if r["privacy"] else "-",
            json.dumps(r["metrics"])[:60],
        )
    output(rows, as_json, t)


@model.command("show")
def model_show_cmd(
    config: ConfigOpt,
    org: OrgOpt,
    version: Annotated[
        str, typer.Option("--version", help="Version (default: the active one).")
    ] = "",
    as_json: JsonOpt = False,
) -> None:
    """One model version: hash, features, metrics, thresholds, ledger entries."""
    with user_errors(as_json), _client(config, org) as c:
        d = model_dict(c.get_model(version))
    shown = d | {"privacy": _privacy_line(d["privacy"])}
    output(d, as_json, _kv_table(f"Model {d['version']}", shown))


@model.command("activate")
def model_activate_cmd(
    config: ConfigOpt,
    org: OrgOpt,
    version: Annotated[
        str, typer.Option("--version", help="The version to make the scoring model.")
    ],
    as_json: JsonOpt = False,
) -> None:
    """Make a version the scoring model (operators); thresholds are re-calibrated."""
    with user_errors(as_json), _client(config, org) as c:
        d = model_dict(c.activate(version))
    output(d, as_json, _kv_table(f"Activated {d['version']}", d))


@model.command("publish")
def model_publish_cmd(
    config: ConfigOpt,
    org: OrgOpt,
    model_file: Annotated[Path, typer.Option("--model", help="LightGBM text model file.")],
    calibration: Annotated[
        Path,
        typer.Option(
            "--calibration",
            help="File with the rated population's probabilities of default, one per line.",
        ),
    ],
    version: Annotated[
        str, typer.Option("--version", help="Version name (default: from the hash).")
    ] = "",
    metrics: Annotated[
        Path | None, typer.Option("--metrics", help="JSON file with training metrics.")
    ] = None,
    activate: Annotated[bool, typer.Option(help="Also activate it.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Register a model version (its hash goes to the ledger)."""
    with user_errors(as_json), _client(config, org, timeout=120) as c:
        try:
            text = model_file.read_text()
            pds = [float(x) for x in calibration.read_text().split() if x.strip()]
            metrics_json = metrics.read_text() if metrics else ""
        except (OSError, ValueError) as exc:
            raise InvalidArgument(
                f"cannot read the model, calibration or metrics file: {exc}"
            ) from exc
        d = model_dict(
            c.publish(
                text,
                calibration_pds=pds,
                version=version,
                metrics_json=metrics_json,
                activate=activate,
            )
        )
    output(d, as_json, _kv_table(f"Published {d['version']}", d))

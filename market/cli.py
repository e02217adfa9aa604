"""Marketplace commands.

* ``fedcredit market serve --config deployment.toml`` (its ``[services.market]``), or
  ``fedcredit market serve --db URL --pki DIR --ledger HOST:PORT [--coordinator HOST:PORT]``,
  runs the MarketService (mTLS, org ``market``); every change goes to the central ledger;
* ``fedcredit bank market products|publish|needs|claim|offer|reveal|loan|loans`` (``--as BANK``);
* ``fedcredit enterprise market post|need|release|accept|decline|withdraw|loans`` (``--as CODE``).

Every command takes ``--address`` (default 127.0.0.1:7450) and ``--pki`` (the deployment's
PKI folder: the caller's certificate is ``<pki>/<org>.crt``), prints a table or ``--json``,
and on failure prints ``error: REASON: sentence`` and exits 1.
"""

from __future__ import annotations

import contextlib
import json
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from fedcredit.common.cliutil import output, read_token_file, user_errors
from fedcredit.common.errors import ConfigError, InvalidArgument
from fedcredit.common.pki import org_files
from fedcredit.common.tls import TlsFiles

DEFAULT_ADDRESS = "127.0.0.1:7450"

serve_app = typer.Typer(no_args_is_help=True)
bank_app = typer.Typer(no_args_is_help=True, help="The marketplace, as a bank.")
ent_app = typer.Typer(no_args_is_help=True, help="The marketplace, as an enterprise.")
bank_root = typer.Typer()
ent_root = typer.Typer()
bank_root.add_typer(bank_app, name="market")
ent_root.add_typer(ent_app, name="market")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
AsOpt = Annotated[str, typer.Option("--as", help="Your organisation id (bank) or credit code.")]
PkiOpt = Annotated[Path, typer.Option("--pki", help="The deployment's PKI folder.")]
AddrOpt = Annotated[str, typer.Option("--address", help="The marketplace's host:port.")]
RidOpt = Annotated[str, typer.Option("--request-id", help="Idempotency key (default: fresh).")]


def _client(who: str, pki: Path, address: str) -> Any:
    from fedcredit.market.client import MarketClient

    return MarketClient(address, org_files(pki, who))


def _show(data: Any, as_json: bool) -> None:
    output(data, as_json)


@serve_app.command("serve")
def serve(
    config: Annotated[
        Path | None,
        typer.Option("--config", help="The deployment file: its [services.market] (org, "
                     "address, database), the ledger's, the coordinator's and the consent "
                     "service's addresses (and the consent issuer)."),
    ] = None,
    db: Annotated[
        str, typer.Option("--db", help="Database URL (sqlite:///... or postgresql://...).")
    ] = "",
    pki: Annotated[Path | None, typer.Option("--pki", help="The deployment's PKI folder.")] = None,
    ledger: Annotated[str, typer.Option("--ledger", help="The central ledger's host:port.")] = "",
    coordinator: Annotated[
        str, typer.Option("--coordinator", help="The coordinator's host:port.")
    ] = "",
    address: AddrOpt = DEFAULT_ADDRESS,
    org: Annotated[str, typer.Option("--org", help="This service's organisation id.")] = "market",
    consent: Annotated[
        str,
        typer.Option(
            "--consent",
            help="The consent service's host:port: the portal may then act for a signed-in "
            "enterprise or bank with a delegation ticket (without it, for no one).",
        ),
    ] = "",
    issuer: Annotated[
        str, typer.Option("--consent-issuer", help="The consent service's issuer (iss).")
    ] = "",
    consent_org: Annotated[
        str, typer.Option("--consent-org", help="The consent service's organisation id.")
    ] = "consent-service",
) -> None:  # fmt: skip
    """Run the marketplace until SIGTERM/SIGINT: from the deployment file (``--config``), or
    from ``--db``, ``--pki`` and ``--ledger``."""
    with user_errors():
        from fedcredit.coordinator.client import CoordinatorClient
        from fedcredit.ledger.client import LedgerClient
        from fedcredit.market.client import CoordinatorGuarantees
        from fedcredit.market.service import Marketplace
        from fedcredit.market.servicer import serve as start
        from fedcredit.market.store import MarketStore

        s = _settings(config, _Serve(db, pki, ledger, coordinator, address, org, consent,
                                     issuer, consent_org))  # fmt: skip
        tls = s.tls()
        guarantees = (
            CoordinatorGuarantees(CoordinatorClient(s.coordinator, tls)) if s.coordinator else None
        )
        market = Marketplace(MarketStore(s.db), LedgerClient(s.ledger, tls), guarantees=guarantees)
        market.flush()  # events a crash or an outage left unpublished
        delegation = None
        if s.consent:
            from fedcredit.consent.passkey_client import RemoteDelegationVerifier
            from fedcredit.consent.settings import default_issuer

            delegation = RemoteDelegationVerifier(
                consent_address=s.consent, tls=tls, server_org=s.consent_org,
                issuer=s.issuer or default_issuer(s.consent_org), audience=s.org,
            )  # fmt: skip
        server, port = start(
            market, s.address, tls, delegation=delegation.verifier if delegation else None
        )
        typer.echo(f"marketplace serving on port {port}")
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        with contextlib.suppress(KeyboardInterrupt):
            stop.wait()
        server.stop(5).wait()


@dataclass(frozen=True)
class _Serve:
    """What `market serve` runs with (the flags, or the deployment file's values)."""

    db: str
    pki: Path | None
    ledger: str
    coordinator: str
    address: str
    org: str
    consent: str
    issuer: str
    consent_org: str
    files: TlsFiles | None = None

    def tls(self) -> TlsFiles:
        if self.files is not None:
            return self.files
        assert self.pki is not None  # _settings checked it
        return org_files(self.pki, self.org)


def _settings(config: Path | None, flags: _Serve) -> _Serve:
    """With ``--config``: the deployment's [services.market], the ledger, and when the
    deployment has them the coordinator and the consent service (its issuer from
    [consent]). Without it the flags, of which --db, --pki and --ledger are required."""
    if config is None:
        missing = [f for f, v in (("--db", flags.db), ("--pki", flags.pki),
                                  ("--ledger", flags.ledger)) if not v]  # fmt: skip
        if missing:
            raise ConfigError(f"expected --config, or {', '.join(missing)} with the other flags")
        return flags
    from fedcredit.common.config import load_config
    from fedcredit.consent.settings import ConsentSettings

    dep = load_config(config)
    me = dep.service("market")
    coord = dep.services.get("coordinator")
    cons = dep.services.get("consent")
    return _Serve(
        me.database, None, dep.service("ledger").address, coord.address if coord else "",
        me.address, me.org_id, cons.address if cons else "",
        ConsentSettings.from_deployment(dep).issuer if cons else "",
        cons.org_id if cons else "consent-service", dep.tls(me.org_id),
    )  # fmt: skip


def _spec(path: Path) -> dict[str, Any]:
    """A product spec file: one JSON object (the market checks its fields)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidArgument(f"cannot read the product spec {path}: {exc.strerror}") from exc
    if len(data) > 1_000_000:
        raise InvalidArgument(
            f"{path}: expected a product spec of at most 1 MB, got {len(data):,} bytes"
        )
    try:
        spec = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        why = (
            f"{exc.msg} at line {exc.lineno}"
            if isinstance(exc, json.JSONDecodeError)
            else "not UTF-8"
        )
        raise InvalidArgument(
            f"{path} is not a product spec: expected a JSON object ({why})"
        ) from None
    if not isinstance(spec, dict):
        raise InvalidArgument(f"{path}: expected a JSON object, got {type(spec).__name__}")
    return spec


@bank_app.command("publish")
def publish(spec: Annotated[Path, typer.Argument(help="The product spec (JSON file).")],
            who: AsOpt, pki: PkiOpt, address: AddrOpt = DEFAULT_ADDRESS,
            request_id: RidOpt = "", as_json: JsonOpt = False) -> None:  # fmt: skip
    """Publish a credit product."""
    with user_errors(as_json), _client(who, pki, address) as m:
        _show(m.publish_product(_spec(spec), request_id=request_id or None), as_json)


@bank_app.command("needs")
def needs(who: AsOpt, pki: PkiOpt, address: AddrOpt = DEFAULT_ADDRESS,
          limit: int = 100, as_json: JsonOpt = False) -> None:  # fmt: skip
    """Open needs, in bands (no identity, no score)."""
    from google.protobuf.json_format import MessageToDict

    with user_errors(as_json), _client(who, pki, address) as m:
        _show(
            [MessageToDict(n, preserving_proto_field_name=True) for n in m.open_needs(limit)],
            as_json,
        )


@bank_app.command("claim")
def claim(need_id: str, who: AsOpt, pki: PkiOpt, address: AddrOpt = DEFAULT_ADDRESS,
          request_id: RidOpt = "", as_json: JsonOpt = False) -> None:  # fmt: skip
    """Grab a need (one bank wins)."""
    with user_errors(as_json), _client(who, pki, address) as m:
        _show(m.claim(need_id, request_id=request_id or None), as_json)


@bank_app.command("offer")
def offer(need_id: str, product_id: str, rate_bp: int, who: AsOpt, pki: PkiOpt,
          address: AddrOpt = DEFAULT_ADDRESS, request_id: RidOpt = "", as_json: JsonOpt = False) -> None:  # fmt: skip
    """Offer a product on a need you claimed."""
    with user_errors(as_json), _client(who, pki, address) as m:
        _show(m.offer(need_id, product_id, rate_bp, request_id=request_id or None), as_json)


@bank_app.command("reveal")
def reveal(need_id: str, token_file: Path, who: AsOpt, pki: PkiOpt, address: AddrOpt = DEFAULT_ADDRESS,
           as_json: JsonOpt = False) -> None:  # fmt: skip
    """Identity and score behind a claimed need, with your marketplace consent token
    (`fedcredit bank consent token` for the consent id the enterprise released)."""
    with user_errors(as_json), _client(who, pki, address) as m:
        _show(m.reveal(need_id, read_token_file(token_file)), as_json)


@bank_app.command("loan")
def loan(loan_id: str, event: str, who: AsOpt, pki: PkiOpt, amount: int = 0,
         application_id: str = "", address: AddrOpt = DEFAULT_ADDRESS, request_id: RidOpt = "",
         as_json: JsonOpt = False) -> None:  # fmt: skip
    """Move a loan: guarantee, disburse, repay, default, claim, recover, write_off, cancel."""
    with user_errors(as_json), _client(who, pki, address) as m:
        _show(m.loan_step(loan_id, event, amount=amount, application_id=application_id,
                          request_id=request_id or None), as_json)  # fmt: skip


@bank_app.command("loans")
def bank_loans(
    who: AsOpt, pki: PkiOpt, address: AddrOpt = DEFAULT_ADDRESS, as_json: JsonOpt = False
) -> None:
    """Your loan book."""
    with user_errors(as_json), _client(who, pki, address) as m:
        _show(m.loans(), as_json)


@ent_app.command("post")
def post(amount: int, term_months: int, purpose: str, who: AsOpt, pki: PkiOpt,
         address: AddrOpt = DEFAULT_ADDRESS, request_id: RidOpt = "", as_json: JsonOpt = False) -> None:  # fmt: skip
    """Post a financing need."""
    with user_errors(as_json), _client(who, pki, address) as m:
        _show(m.post_need(amount, term_months, purpose, request_id=request_id or None), as_json)


@ent_app.command("need")
def need(
    need_id: str,
    who: AsOpt,
    pki: PkiOpt,
    address: AddrOpt = DEFAULT_ADDRESS,
    as_json: JsonOpt = False,
) -> None:
    """Your need, its claim and its offer."""
    with user_errors(as_json), _client(who, pki, address) as m:
        _show(m.need(need_id), as_json)


@ent_app.command("release")
def release(need_id: str, consent_id: str, who: AsOpt, pki: PkiOpt, address: AddrOpt = DEFAULT_ADDRESS,
            request_id: RidOpt = "", as_json: JsonOpt = False) -> None:  # fmt: skip
    """Name the marketplace consent (from `enterprise consent grant --purpose marketplace`)
    the claiming bank may use."""
    with user_errors(as_json), _client(who, pki, address) as m:
        _show(m.release_consent(need_id, consent_id, request_id=request_id or None), as_json)


@ent_app.command("answer")
def answer(need_id: str, accept: Annotated[bool, typer.Option("--accept/--decline")], who: AsOpt,
           pki: PkiOpt, why: str = "", address: AddrOpt = DEFAULT_ADDRESS, request_id: RidOpt = "",
           as_json: JsonOpt = False) -> None:  # fmt: skip
    """Accept (a loan is opened) or decline (the need reopens) the offer."""
    with user_errors(as_json), _client(who, pki, address) as m:
        _show(m.answer(need_id, accept, why, request_id=request_id or None), as_json)


@ent_app.command("withdraw")
def withdraw(need_id: str, who: AsOpt, pki: PkiOpt, address: AddrOpt = DEFAULT_ADDRESS,
             request_id: RidOpt = "", as_json: JsonOpt = False) -> None:  # fmt: skip
    """Withdraw your need."""
    with user_errors(as_json), _client(who, pki, address) as m:
        _show(m.withdraw(need_id, request_id=request_id or None), as_json)


GROUPS: dict[str, typer.Typer] = {"market": serve_app, "bank": bank_root, "enterprise": ent_root}

"""Marketplace commands.

* ``fedcredit market serve --db URL --pki DIR --ledger HOST:PORT [--coordinator HOST:PORT]``
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
from pathlib import Path
from typing import Annotated, Any

import typer

from fedcredit.common.cliutil import output, user_errors
from fedcredit.common.pki import org_files

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
    db: Annotated[
        str, typer.Option("--db", help="Database URL (sqlite:///... or postgresql://...).")
    ],
    pki: PkiOpt,
    ledger: Annotated[str, typer.Option("--ledger", help="The central ledger's host:port.")],
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
) -> None:
    """Run the marketplace until SIGTERM/SIGINT."""
    with user_errors():
        from fedcredit.coordinator.client import CoordinatorClient
        from fedcredit.ledger.client import LedgerClient
        from fedcredit.market.client import CoordinatorGuarantees
        from fedcredit.market.service import Marketplace
        from fedcredit.market.servicer import serve as start
        from fedcredit.market.store import MarketStore

        tls = org_files(pki, org)
        guarantees = (
            CoordinatorGuarantees(CoordinatorClient(coordinator, tls)) if coordinator else None
        )
        market = Marketplace(MarketStore(db), LedgerClient(ledger, tls), guarantees=guarantees)
        market.flush()  # events a crash or an outage left unpublished
        delegation = None
        if consent:
            from fedcredit.consent.passkey_client import RemoteDelegationVerifier
            from fedcredit.consent.settings import default_issuer

            delegation = RemoteDelegationVerifier(
                consent_address=consent, tls=tls, server_org=consent_org,
                issuer=issuer or default_issuer(consent_org), audience=org,
            )  # fmt: skip
        server, port = start(
            market, address, tls, delegation=delegation.verifier if delegation else None
        )
        typer.echo(f"marketplace serving on port {port}")
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        with contextlib.suppress(KeyboardInterrupt):
            stop.wait()
        server.stop(5).wait()


@bank_app.command("publish")
def publish(spec: Annotated[Path, typer.Argument(help="The product spec (JSON file).")],
            who: AsOpt, pki: PkiOpt, address: AddrOpt = DEFAULT_ADDRESS,
            request_id: RidOpt = "", as_json: JsonOpt = False) -> None:  # fmt: skip
    """Publish a credit product."""
    with user_errors(as_json), _client(who, pki, address) as m:
        _show(
            m.publish_product(json.loads(spec.read_text()), request_id=request_id or None), as_json
        )


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
        _show(m.reveal(need_id, token_file.read_text().strip()), as_json)


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

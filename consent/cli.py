"""Consent commands.

* ``fedcredit enterprise consent grant|approve|reject|list|pause|resume|revoke|narrow``
  (``--as CODE``: the enterprise's credit code; its certificate from the deployment's PKI);
* ``fedcredit bank consent request|list|token`` (``--bank ORG``);
* ``fedcredit consent serve --config FILE`` and ``fedcredit consent rotate-keys``.

All with ``--json``; errors print ``error: REASON: sentence`` and exit non-zero.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from fedcredit.common.cliutil import console, output, user_errors
from fedcredit.common.config import Deployment, load_config
from fedcredit.common.departments import BY_ID
from fedcredit.common.tls import TlsFiles

if TYPE_CHECKING:
    from fedcredit.common.evidence import EvidenceSink
    from fedcredit.consent.authority import ConsentAuthority
    from fedcredit.consent.client import ConsentClient
    from fedcredit.consent.keys import KeyRecord
    from fedcredit.consent.passkeys import PasskeyAuthority
    from fedcredit.consent.terms import ConsentTerms, ConsentView

log = logging.getLogger(__name__)

ConfigOpt = Annotated[Path, typer.Option("--config", help="The deployment file (deployment.toml).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
AsOpt = Annotated[
    str,
    typer.Option(
        "--as", help="Your credit code; your certificate is read from the deployment's PKI folder."
    ),
]
BankOpt = Annotated[
    str, typer.Option("--bank", help="Your bank's organisation id (its certificate is used).")
]
IdArg = Annotated[str, typer.Argument(help="The consent id (c_...).")]
CertOpt = Annotated[
    Path | None,
    typer.Option("--cert", help="Your certificate (default: from the deployment's PKI)."),
]
KeyOpt = Annotated[
    Path | None, typer.Option("--key", help="Your private key (default: from the PKI).")
]


def _when(ts: int | None) -> str:
    if not ts:
        return "-"
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M")


def consent_table(views: list[ConsentView], title: str, *, party: str) -> Table:
    t = Table(title=title)
    for col in ("consent", party, "purpose", "scope", "state", "uses", "expires", "replaces"):
        t.add_column(col)
    for v in views:
        t.add_row(
            v.consent_id,
            v.bank if party == "bank" else v.enterprise,
            v.purpose,
            ", ".join(v.scope),
            v.state,
            f"{v.uses}/{v.max_uses}",
            _when(v.expires_at),
            v.replaces or "",
        )
    return t


def _client(dep: Deployment, tls: TlsFiles) -> ConsentClient:
    from fedcredit.consent.client import ConsentClient

    svc = dep.service("consent")
    return ConsentClient(svc.address, tls, server_org=svc.org_id)


def _enterprise_client(
    config: Path, code: str, cert: Path | None, key: Path | None
) -> ConsentClient:
    from fedcredit.common import pki
    from fedcredit.common.uscc import validate

    validate(code)
    dep = load_config(config)
    files = pki.org_files(dep.pki_dir, code)
    if cert is not None or key is not None:
        files = TlsFiles(ca=files.ca, cert=cert or files.cert, key=key or files.key)
    return _client(dep, files)


def _bank_client(config: Path, bank: str) -> ConsentClient:
    dep = load_config(config)
    return _client(dep, dep.tls(bank))


def _one(view: ConsentView, as_json: bool, title: str, party: str) -> None:
    output(view, as_json, consent_table([view], title, party=party))


def _bank_cert(dep: Deployment, bank: str) -> bytes | None:
    """The SHA-256 of ``bank``'s certificate in the deployment's PKI (None if not there)."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    try:
        pem = dep.tls(bank).cert.read_bytes()
    except Exception:
        return None
    return hashlib.sha256(x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER)).digest()


def build_authority(dep: Deployment) -> ConsentAuthority:
    """The authority of a deployment: its store, settings, banks, nodes and evidence sink."""
    from fedcredit.consent.authority import ConsentAuthority
    from fedcredit.consent.settings import ConsentSettings
    from fedcredit.consent.store import ConsentStore

    settings = ConsentSettings.from_deployment(dep)
    svc = dep.service("consent")
    store = ConsentStore(svc.database)
    sink: EvidenceSink | None = None
    if settings.evidence == "ledger" or (settings.evidence == "auto" and "ledger" in dep.services):
        from fedcredit.ledger.client import LedgerClient

        sink = LedgerClient.from_deployment(dep, svc.org_id)

    nodes = {n.org_id: BY_ID[n.department].category for n in dep.nodes} or None
    return ConsentAuthority(
        store,
        settings,
        sink=sink,
        banks=dep.banks or None,
        bank_certs=lambda bank: _bank_cert(dep, bank),
        node_categories=nodes,
    )


def passkeys_of(authority: ConsentAuthority, dep: Deployment) -> PasskeyAuthority | None:
    """The passkey authority when the deployment has a portal (``[portal]``), else None."""
    from fedcredit.consent.passkeys import SESSION_IDLE_S, PasskeyAuthority, portal_origins

    got = portal_origins(dep.raw.get("portal"))
    if got is None:
        return None
    rp_id, origins = got
    # the consent service ends an idle session on its own, after the portal's idle timeout
    idle = float(dep.raw["portal"].get("idle_timeout_s", SESSION_IDLE_S))
    return PasskeyAuthority(authority, rp_id=rp_id, origins=origins, session_idle_s=idle)


# --- the command groups ------------------------------------------------------------

enterprise_app = typer.Typer()
enterprise_consent = typer.Typer(
    help="Grant, approve, list, pause, resume, narrow and revoke consents.",
    no_args_is_help=True,
)
enterprise_app.add_typer(enterprise_consent, name="consent")
bank_app = typer.Typer()
bank_consent = typer.Typer(
    help="Request consents, list them, fetch their tokens.", no_args_is_help=True
)
bank_app.add_typer(bank_consent, name="consent")
consent_app = typer.Typer()
GROUPS: dict[str, typer.Typer] = {
    "enterprise": enterprise_app,
    "bank": bank_app,
    "consent": consent_app,
}

PurposeOpt = Annotated[
    str,
    typer.Option(help="credit_assessment, guarantee, post_loan_monitoring or model_training."),
]
NodeOpt = Annotated[list[str] | None, typer.Option("--node", help="Limit to these nodes (repeat).")]
ReasonOpt = Annotated[str, typer.Option(help="Why (kept with the event).")]
StateOpt = Annotated[list[str] | None, typer.Option("--state", help="Only this state (repeat).")]


def _terms(
    *,
    enterprise: str,
    bank: str,
    purpose: str,
    scope: list[str] | None,
    score_only: bool,
    node: list[str] | None,
    days: int,
    uses: int,
    retention_days: int,
    loan_term_days: int | None,
) -> ConsentTerms:
    """The terms a grant or a request asks for: categories or score-only, never both."""
    from fedcredit.consent.errors import InvalidScope
    from fedcredit.consent.terms import ConsentTerms
    from fedcredit.consent.token import SCORE_ONLY

    if score_only == bool(scope):
        raise InvalidScope("give either --scope CATEGORY (one or more) or --score-only")
    return ConsentTerms(
        enterprise=enterprise,
        bank=bank,
        purpose=purpose,
        scope=[SCORE_ONLY] if score_only else list(scope or []),
        nodes=list(node or []),
        validity_days=days,
        max_uses=uses,
        retention_days=retention_days,
        loan_term_days=loan_term_days,
    )


# --- enterprise ---------------------------------------------------------------


@enterprise_consent.command("grant")
def grant(
    config: ConfigOpt,
    code: AsOpt,
    to_bank: Annotated[str, typer.Option("--bank", help="The bank the consent is for.")],
    purpose: PurposeOpt,
    scope: Annotated[
        list[str] | None, typer.Option("--scope", help="A category the bank may see (repeat).")
    ] = None,
    score_only: Annotated[
        bool,
        typer.Option("--score-only", help="All categories may feed a score; nothing is released."),
    ] = False,
    node: NodeOpt = None,
    days: Annotated[int, typer.Option("--days", help="How long the consent lasts.")] = 30,
    uses: Annotated[int, typer.Option("--uses", help="Maximum number of uses.")] = 1,
    retention_days: Annotated[int, typer.Option(help="How long the bank may keep results.")] = 30,
    loan_term_days: Annotated[
        int | None, typer.Option(help="Loan term (post-loan monitoring lasts at most this).")
    ] = None,
    cert: CertOpt = None,
    key: KeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Grant a bank consent directly (ACTIVE at once)."""
    with user_errors(as_json):
        terms = _terms(
            enterprise=code, bank=to_bank, purpose=purpose, scope=scope, score_only=score_only,
            node=node, days=days, uses=uses, retention_days=retention_days,
            loan_term_days=loan_term_days,
        )  # fmt: skip
        with _enterprise_client(config, code, cert, key) as c:
            view = c.grant(terms)
    _one(view, as_json, "granted", "bank")


def _act(
    name: str,
    call: Callable[[ConsentClient], ConsentView],
    config: Path,
    code: str,
    cert: Path | None,
    key: Path | None,
    as_json: bool,
) -> None:
    """One enterprise action on one consent, shown as its consent afterwards."""
    with user_errors(as_json), _enterprise_client(config, code, cert, key) as c:
        view = call(c)
    _one(view, as_json, name, "bank")


@enterprise_consent.command("approve")
def approve(
    consent_id: IdArg,
    config: ConfigOpt,
    code: AsOpt,
    reason: ReasonOpt = "",
    cert: CertOpt = None,
    key: KeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Approve a bank's pending request."""
    _act("approve", lambda c: c.approve(consent_id), config, code, cert, key, as_json)


@enterprise_consent.command("reject")
def reject(
    consent_id: IdArg,
    config: ConfigOpt,
    code: AsOpt,
    reason: ReasonOpt = "",
    cert: CertOpt = None,
    key: KeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Reject a bank's pending request."""
    _act("reject", lambda c: c.reject(consent_id, reason), config, code, cert, key, as_json)


@enterprise_consent.command("pause")
def pause(
    consent_id: IdArg,
    config: ConfigOpt,
    code: AsOpt,
    reason: ReasonOpt = "",
    cert: CertOpt = None,
    key: KeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Pause a consent (tokens refused until resumed)."""
    _act("pause", lambda c: c.pause(consent_id), config, code, cert, key, as_json)


@enterprise_consent.command("resume")
def resume(
    consent_id: IdArg,
    config: ConfigOpt,
    code: AsOpt,
    reason: ReasonOpt = "",
    cert: CertOpt = None,
    key: KeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Resume a paused consent."""
    _act("resume", lambda c: c.resume(consent_id), config, code, cert, key, as_json)


@enterprise_consent.command("revoke")
def revoke(
    consent_id: IdArg,
    config: ConfigOpt,
    code: AsOpt,
    reason: ReasonOpt = "",
    cert: CertOpt = None,
    key: KeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Revoke a consent for good."""
    _act("revoke", lambda c: c.revoke(consent_id, reason), config, code, cert, key, as_json)


@enterprise_consent.command("narrow")
def narrow(
    consent_id: IdArg,
    config: ConfigOpt,
    code: AsOpt,
    category: Annotated[
        list[str] | None,
        typer.Option("--remove-category", help="A category to take back (repeat)."),
    ] = None,
    node: Annotated[
        list[str] | None, typer.Option("--remove-node", help="A node to take back (repeat).")
    ] = None,
    cert: CertOpt = None,
    key: KeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Take back one category or node: the consent is replaced by a narrower one."""
    with user_errors(as_json), _enterprise_client(config, code, cert, key) as c:
        old, new = c.narrow(consent_id, remove_categories=category or [], remove_nodes=node or [])
    output(
        {"revoked": old, "replacement": new},
        as_json,
        consent_table([old, new], "narrowed: revoked and replacement", party="bank"),
    )


@enterprise_consent.command("list")
def enterprise_list(
    config: ConfigOpt,
    code: AsOpt,
    state: StateOpt = None,
    expiring_within: Annotated[
        int | None, typer.Option("--expiring-within", help="Only consents ending within DAYS.")
    ] = None,
    cert: CertOpt = None,
    key: KeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Your consents (all, by state, or those expiring soon)."""
    with user_errors(as_json), _enterprise_client(config, code, cert, key) as c:
        views = c.list(
            states=[s.upper() for s in state or []], expiring_within_days=expiring_within or 0
        )
    output(views, as_json, consent_table(views, f"consents of {code}", party="bank"))


# --- bank ------------------------------------------------------------------------


@bank_consent.command("request")
def request(
    config: ConfigOpt,
    me: BankOpt,
    enterprise: Annotated[str, typer.Option("--enterprise", help="The enterprise's credit code.")],
    purpose: PurposeOpt,
    scope: Annotated[list[str] | None, typer.Option("--scope", help="A category (repeat).")] = None,
    score_only: Annotated[bool, typer.Option("--score-only", help="Ask for a score only.")] = False,
    node: NodeOpt = None,
    days: Annotated[int, typer.Option("--days")] = 30,
    uses: Annotated[int, typer.Option("--uses")] = 1,
    retention_days: Annotated[int, typer.Option()] = 30,
    loan_term_days: Annotated[int | None, typer.Option()] = None,
    as_json: JsonOpt = False,
) -> None:
    """Ask an enterprise for consent (PENDING until it approves)."""
    with user_errors(as_json):
        terms = _terms(
            enterprise=enterprise, bank=me, purpose=purpose, scope=scope, score_only=score_only,
            node=node, days=days, uses=uses, retention_days=retention_days,
            loan_term_days=loan_term_days,
        )  # fmt: skip
        with _bank_client(config, me) as c:
            view = c.request(terms)
    _one(view, as_json, "requested", "enterprise")


@bank_consent.command("list")
def bank_list(
    config: ConfigOpt,
    me: BankOpt,
    state: StateOpt = None,
    expiring_within: Annotated[int | None, typer.Option("--expiring-within")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Consents addressed to your bank."""
    with user_errors(as_json), _bank_client(config, me) as c:
        views = c.list(
            states=[s.upper() for s in state or []], expiring_within_days=expiring_within or 0
        )
    output(views, as_json, consent_table(views, f"consents for {me}", party="enterprise"))


@bank_consent.command("token")
def token(
    consent_id: IdArg,
    config: ConfigOpt,
    me: BankOpt,
    out: Annotated[Path | None, typer.Option("--out", help="Write the token to this file.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Fetch the signed token of an active consent (bound to your certificate)."""
    with user_errors(as_json), _bank_client(config, me) as c:
        view = c.token(consent_id)
    if out is not None:
        out.write_text((view.token or "") + "\n")
    if as_json:
        output(view, True)
    elif out is None:
        console.print(view.token, soft_wrap=True, highlight=False)
    else:
        console.print(f"token of {consent_id} written to {out}")


# --- service -----------------------------------------------------------------------


@consent_app.command("serve")
def serve_cmd(
    config: ConfigOpt,
    insecure: Annotated[
        bool, typer.Option("--insecure", help="Plaintext, for debugging only.")
    ] = False,
) -> None:
    """Run the consent service of the deployment (until SIGTERM or Ctrl-C)."""
    from fedcredit.common.gctune import tune_for_service
    from fedcredit.consent.service import serve, stop

    with user_errors():
        dep = load_config(config)
        s = dep.service("consent")
        from fedcredit.common import metrics

        metrics.start(s.metrics, "consent")
        authority = build_authority(dep)
        server, _port = serve(
            authority,
            address=s.address,
            tls=None if insecure else dep.tls(s.org_id),
            insecure=insecure,
            passkeys=passkeys_of(authority, dep),
        )
    console.print(
        f"consent service {s.org_id} listening on {s.address} (issuer {authority.settings.issuer})"
    )
    tune_for_service()
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    done.wait()
    stop(server, authority)


@consent_app.command("rotate")
@consent_app.command("rotate-keys")
def rotate_keys(
    config: ConfigOpt,
    immediate: Annotated[
        bool,
        typer.Option("--immediate", help="Sign with the new key at once (planned, urgent)."),
    ] = False,
    compromised: Annotated[
        bool,
        typer.Option(
            "--compromised",
            help="The old key leaked: withdraw it at once (every token it signed is refused, "
            "whatever its iat), push the change to every verifier, re-issue live tokens.",
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Publish the next signing key; it signs after the publish lead, older keys retire then.

    The running consent service picks up the change within a second and pushes it to every
    subscribed verifier."""
    with user_errors(as_json):
        dep = load_config(config)
        authority = build_authority(dep)
        try:
            new, changed = authority.rotate_keys(immediate=immediate, compromised=compromised)
            now = authority.now()
            records = authority.keys()
        finally:
            authority.store.close()
    output(_rotation(new, changed, records, now), as_json, _keys_table(records, now))


def _rotation(
    new: KeyRecord, changed: list[KeyRecord], records: list[KeyRecord], now: int
) -> dict[str, object]:
    """What a rotation did, for ``--json``."""
    from fedcredit.consent import keys as K

    return {
        "kid": new.kid,
        "activate_at": new.activate_at,
        "retired": [
            {"kid": k.kid, "retired_at": k.retired_at, "expires_at": k.expires_at} for k in changed
        ],
        "keys": [{"kid": k.kid, "state": k.state(now)} for k in records],
        "signing_now": (K.signing_key(records, now) or new).kid,
    }


def _keys_table(records: list[KeyRecord], now: int) -> Table:
    t = Table(title="consent signing keys")
    for col in ("kid", "state", "signs from", "retired at", "leaves JWKS at"):
        t.add_column(col)
    for k in sorted(records, key=lambda k: k.created_at):
        t.add_row(
            k.kid, k.state(now), _when(k.activate_at), _when(k.retired_at), _when(k.expires_at)
        )
    return t

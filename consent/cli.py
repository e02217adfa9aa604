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
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from fedcredit.common.cliutil import console, output, user_errors
from fedcredit.common.config import Deployment, load_config
from fedcredit.common.departments import BY_ID
from fedcredit.common.tls import TlsFiles

if TYPE_CHECKING:
    from fedcredit.clients.cli import Root
    from fedcredit.clients.consent_client import ConsentClient
    from fedcredit.consent.authority import ConsentAuthority, ConsentView

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
    from fedcredit.clients.consent_client import ConsentClient

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


def build_authority(dep: Deployment) -> ConsentAuthority:
    """The authority of a deployment: its store, settings, banks, nodes and evidence sink."""
    from fedcredit.consent.authority import ConsentAuthority
    from fedcredit.consent.settings import ConsentSettings
    from fedcredit.consent.store import ConsentStore

    settings = ConsentSettings.from_deployment(dep)
    svc = dep.service("consent")
    store = ConsentStore(svc.database)
    sink: Any = None
    if settings.evidence == "ledger" or (settings.evidence == "auto" and "ledger" in dep.services):
        from fedcredit.clients.ledger_client import LedgerClient

        sink = LedgerClient.from_deployment(dep, svc.org_id)

    def bank_cert(bank: str) -> bytes | None:
        from cryptography import x509
        from cryptography.hazmat.primitives.serialization import Encoding

        try:
            pem = dep.tls(bank).cert.read_bytes()
        except Exception:
            return None
        return hashlib.sha256(
            x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER)
        ).digest()

    nodes = {n.org_id: BY_ID[n.department].category for n in dep.nodes} or None
    return ConsentAuthority(
        store,
        settings,
        sink=sink,
        banks=dep.banks or None,
        bank_certs=bank_cert,
        node_categories=nodes,
    )


def register(root: Root) -> None:
    ent = typer.Typer(
        help="Grant, approve, list, pause, resume, narrow and revoke consents.",
        no_args_is_help=True,
    )
    root.group("enterprise").add_typer(ent, name="consent")
    bank = typer.Typer(
        help="Request consents, list them, fetch their tokens.", no_args_is_help=True
    )
    root.group("bank").add_typer(bank, name="consent")
    svc = root.group("consent")

    # --- enterprise ---------------------------------------------------------------

    @ent.command("grant")
    def grant(
        config: ConfigOpt,
        code: AsOpt,
        to_bank: Annotated[str, typer.Option("--bank", help="The bank the consent is for.")],
        purpose: Annotated[
            str,
            typer.Option(
                help="credit_assessment, guarantee, post_loan_monitoring or model_training."
            ),
        ],
        scope: Annotated[
            list[str] | None, typer.Option("--scope", help="A category the bank may see (repeat).")
        ] = None,
        score_only: Annotated[
            bool,
            typer.Option(
                "--score-only", help="All categories may feed a score; nothing is released."
            ),
        ] = False,
        node: Annotated[
            list[str] | None, typer.Option("--node", help="Limit to these nodes (repeat).")
        ] = None,
        days: Annotated[int, typer.Option("--days", help="How long the consent lasts.")] = 30,
        uses: Annotated[int, typer.Option("--uses", help="Maximum number of uses.")] = 1,
        retention_days: Annotated[
            int, typer.Option(help="How long the bank may keep results.")
        ] = 30,
        loan_term_days: Annotated[
            int | None, typer.Option(help="Loan term (post-loan monitoring lasts at most this).")
        ] = None,
        cert: CertOpt = None,
        key: KeyOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        """Grant a bank consent directly (ACTIVE at once)."""
        from fedcredit.consent.authority import ConsentTerms
        from fedcredit.consent.token import SCORE_ONLY

        with user_errors(as_json):
            if score_only == bool(scope):
                from fedcredit.consent.errors import InvalidScope

                raise InvalidScope("give either --scope CATEGORY (one or more) or --score-only")
            terms = ConsentTerms(
                enterprise=code,
                bank=to_bank,
                purpose=purpose,
                scope=[SCORE_ONLY] if score_only else list(scope or []),
                nodes=list(node or []),
                validity_days=days,
                max_uses=uses,
                retention_days=retention_days,
                loan_term_days=loan_term_days,
            )
            with _enterprise_client(config, code, cert, key) as c:
                view = c.grant(terms)
        _one(view, as_json, "granted", "bank")

    def _ent_action(
        name: str, doc: str, call: Callable[[ConsentClient, str, str], ConsentView]
    ) -> None:
        def cmd(
            consent_id: IdArg,
            config: ConfigOpt,
            code: AsOpt,
            reason: Annotated[str, typer.Option(help="Why (kept with the event).")] = "",
            cert: CertOpt = None,
            key: KeyOpt = None,
            as_json: JsonOpt = False,
        ) -> None:
            with user_errors(as_json), _enterprise_client(config, code, cert, key) as c:
                view = call(c, consent_id, reason)
            _one(view, as_json, name, "bank")

        cmd.__doc__ = doc
        ent.command(name)(cmd)

    _ent_action("approve", "Approve a bank's pending request.", lambda c, i, r: c.approve(i))
    _ent_action("reject", "Reject a bank's pending request.", lambda c, i, r: c.reject(i, r))
    _ent_action(
        "pause", "Pause a consent (tokens refused until resumed).", lambda c, i, r: c.pause(i)
    )
    _ent_action("resume", "Resume a paused consent.", lambda c, i, r: c.resume(i))
    _ent_action("revoke", "Revoke a consent for good.", lambda c, i, r: c.revoke(i, r))

    @ent.command("narrow")
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
            old, new = c.narrow(
                consent_id, remove_categories=category or [], remove_nodes=node or []
            )
        output(
            {"revoked": old, "replacement": new},
            as_json,
            consent_table([old, new], "narrowed: revoked and replacement", party="bank"),
        )

    @ent.command("list")
    def ent_list(
        config: ConfigOpt,
        code: AsOpt,
        state: Annotated[
            list[str] | None, typer.Option("--state", help="Only this state (repeat).")
        ] = None,
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

    @bank.command("request")
    def request(
        config: ConfigOpt,
        me: BankOpt,
        enterprise: Annotated[
            str, typer.Option("--enterprise", help="The enterprise's credit code.")
        ],
        purpose: Annotated[
            str,
            typer.Option(
                help="credit_assessment, guarantee, post_loan_monitoring or model_training."
            ),
        ],
        scope: Annotated[
            list[str] | None, typer.Option("--scope", help="A category (repeat).")
        ] = None,
        score_only: Annotated[
            bool, typer.Option("--score-only", help="Ask for a score only.")
        ] = False,
        node: Annotated[
            list[str] | None, typer.Option("--node", help="Limit to these nodes (repeat).")
        ] = None,
        days: Annotated[int, typer.Option("--days")] = 30,
        uses: Annotated[int, typer.Option("--uses")] = 1,
        retention_days: Annotated[int, typer.Option()] = 30,
        loan_term_days: Annotated[int | None, typer.Option()] = None,
        as_json: JsonOpt = False,
    ) -> None:
        """Ask an enterprise for consent (PENDING until it approves)."""
        from fedcredit.consent.authority import ConsentTerms
        from fedcredit.consent.token import SCORE_ONLY

        with user_errors(as_json):
            if score_only == bool(scope):
                from fedcredit.consent.errors import InvalidScope

                raise InvalidScope("give either --scope CATEGORY (one or more) or --score-only")
            terms = ConsentTerms(
                enterprise=enterprise,
                bank=me,
                purpose=purpose,
                scope=[SCORE_ONLY] if score_only else list(scope or []),
                nodes=list(node or []),
                validity_days=days,
                max_uses=uses,
                retention_days=retention_days,
                loan_term_days=loan_term_days,
            )
            with _bank_client(config, me) as c:
                view = c.request(terms)
        _one(view, as_json, "requested", "enterprise")

    @bank.command("list")
    def bank_list(
        config: ConfigOpt,
        me: BankOpt,
        state: Annotated[
            list[str] | None, typer.Option("--state", help="Only this state (repeat).")
        ] = None,
        expiring_within: Annotated[int | None, typer.Option("--expiring-within")] = None,
        as_json: JsonOpt = False,
    ) -> None:
        """Consents addressed to your bank."""
        with user_errors(as_json), _bank_client(config, me) as c:
            views = c.list(
                states=[s.upper() for s in state or []], expiring_within_days=expiring_within or 0
            )
        output(views, as_json, consent_table(views, f"consents for {me}", party="enterprise"))

    @bank.command("token")
    def token(
        consent_id: IdArg,
        config: ConfigOpt,
        me: BankOpt,
        out: Annotated[
            Path | None, typer.Option("--out", help="Write the token to this file.")
        ] = None,
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

    @svc.command("serve")
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
            authority = build_authority(dep)
            server, _port = serve(
                authority,
                address=s.address,
                tls=None if insecure else dep.tls(s.org_id),
                insecure=insecure,
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

    @svc.command("rotate-keys")
    def rotate_keys(
        config: ConfigOpt,
        immediate: Annotated[
            bool,
            typer.Option("--immediate", help="Sign with the new key at once (key compromise)."),
        ] = False,
        as_json: JsonOpt = False,
    ) -> None:
        """Publish the next signing key; it signs after the publish lead, older keys retire then."""
        from fedcredit.consent import keys as K

        with user_errors(as_json):
            dep = load_config(config)
            authority = build_authority(dep)
            try:
                new, changed = authority.rotate_keys(immediate=immediate)
                now = authority.now()
                records = authority.keys()
            finally:
                authority.store.close()
        result = {
            "kid": new.kid,
            "activate_at": new.activate_at,
            "retired": [
                {"kid": k.kid, "retired_at": k.retired_at, "expires_at": k.expires_at}
                for k in changed
            ],
            "keys": [{"kid": k.kid, "state": k.state(now)} for k in records],
            "signing_now": (K.signing_key(records, now) or new).kid,
        }
        t = Table(title="consent signing keys")
        for col in ("kid", "state", "signs from", "retired at", "leaves JWKS at"):
            t.add_column(col)
        for k in sorted(records, key=lambda k: k.created_at):
            t.add_row(
                k.kid, k.state(now), _when(k.activate_at), _when(k.retired_at), _when(k.expires_at)
            )
        output(result, as_json, t)

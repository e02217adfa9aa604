"""Ledger and audit commands.

``fedcredit ledger serve|checkpoint|export|bundle|key`` talk to (or run) the
LedgerService; ``fedcredit audit ...`` verifies offline with only files and
public keys. Keys default to the deployment's published ones
(``<deployment dir>/keys/ledger.vkey`` and ``*.witness.vkey``) when
``--config`` is given.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from fedcredit.common.cliutil import (
    EXIT_VERIFICATION_FAILED,
    console,
    err_console,
    fail,
    output,
    user_errors,
)
from fedcredit.common.errors import ConfigError, FedcreditError

if TYPE_CHECKING:
    from fedcredit.ledger.audit import Trust
    from fedcredit.ledger.client import LedgerClient
    from fedcredit.ledger.log import Log

ConfigOpt = Annotated[Path, typer.Option("--config", help="The deployment file (deployment.toml).")]
OptConfigOpt = Annotated[
    Path | None, typer.Option("--config", help="The deployment file (for default keys / fetching).")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
LogKeyOpt = Annotated[
    str | None,
    typer.Option("--log-key", help="The ledger's public key: a vkey or a file holding one."),
]
WitnessKeyOpt = Annotated[
    list[str] | None,
    typer.Option("--witness-key", help="A witness public key (vkey or file); repeatable."),
]
QuorumOpt = Annotated[int, typer.Option("--quorum", help="Witness cosignatures required.", min=0)]


def _org_opt(default: str, what: str) -> Any:
    return typer.Option(
        "--org", help=f"Your organisation id (its certificate is used); default {default} ({what})."
    )


def _client(config: Path, org: str) -> LedgerClient:
    from fedcredit.common.config import load_config
    from fedcredit.ledger.client import LedgerClient

    return LedgerClient.from_deployment(load_config(config), org)


def _trust(
    config: Path | None, log_key: str | None, witness_keys: list[str] | None, quorum: int
) -> Trust:
    from fedcredit.common.config import load_config
    from fedcredit.ledger.audit import Trust
    from fedcredit.ledger.keys import keys_dir, log_verifier, read_vkey

    dep = load_config(config) if config is not None else None
    if log_key is not None:
        lk = read_vkey(log_key)
    elif dep is not None:
        lk = log_verifier(dep)
    else:
        raise ConfigError(
            "give the ledger's public key with --log-key (or --config to use the published one)"
        )
    if witness_keys:
        ws = [read_vkey(w) for w in witness_keys]
    elif dep is not None:
        ws = [read_vkey(p) for p in sorted(keys_dir(dep).glob("*.witness.vkey"))]
    else:
        ws = []
    if quorum > len(ws):
        raise ConfigError(f"--quorum {quorum} is more than the {len(ws)} witness keys known")
    return Trust(lk, ws, quorum)


def _verification_failed(exc: FedcreditError, as_json: bool) -> None:
    from fedcredit.ledger.errors import VerificationError

    if isinstance(exc, VerificationError):
        if as_json:
            print(json.dumps({"verified": False, "error": exc.to_dict()}, indent=2))
        else:
            err_console.print(f"[bold red]FAILED[/]: {exc.reason}: {exc.message}", highlight=False)
        raise SystemExit(EXIT_VERIFICATION_FAILED)
    fail(exc, as_json=as_json)


def _checkpoint_table(title: str, rows: list[tuple[str, str]]) -> Table:
    t = Table(title=title, show_header=False)
    t.add_column("", style="bold")
    t.add_column("")
    for k, v in rows:
        t.add_row(k, v)
    return t


def _serving(port: int, log: Log) -> None:
    """The ledger is up: say so, then tune the garbage collector for serving."""
    from fedcredit.common import metrics
    from fedcredit.common.gctune import tune_for_service

    metrics.gauge_from(metrics.LEDGER_SIZE, lambda: log.size, metrics.service())

    def age() -> float:
        last = log.last_checkpoint()
        return -1.0 if last is None else time.time() - last.signed_at

    metrics.gauge_from(metrics.CHECKPOINT_AGE, age, metrics.service())
    metrics.witness_counts(log.store.witness_status)
    console.print(
        f"ledger {log.origin} serving on port {port}: {log.size} entries, key {log.verifier.vkey}",
        highlight=False,
    )
    tune_for_service()


ledger_app = typer.Typer()
audit_app = typer.Typer()
GROUPS: dict[str, typer.Typer] = {"ledger": ledger_app, "audit": audit_app}


@ledger_app.command("serve")
def serve_cmd(
    config: ConfigOpt,
    address: Annotated[
        str | None, typer.Option(help="Listen address (default from the config).")
    ] = None,
    insecure: Annotated[
        bool, typer.Option("--insecure", help="Plaintext, no client certificates (debug only).")
    ] = False,
) -> None:
    """Run the LedgerService (mTLS) until interrupted."""
    from fedcredit.common import metrics
    from fedcredit.common.config import load_config
    from fedcredit.common.tls import check_address
    from fedcredit.ledger.service import serve as serve_async

    with user_errors():
        if address is not None:  # before anything starts (the metrics endpoint included)
            check_address(address)
        dep = load_config(config)
        metrics.start(dep.service("ledger").metrics, "ledger")
        asyncio.run(serve_async(dep, address=address, insecure=insecure, on_ready=_serving))


@ledger_app.command("checkpoint")
def checkpoint_cmd(
    config: ConfigOpt,
    org: Annotated[str, _org_opt("operator", "role operator")] = "operator",
    as_json: JsonOpt = False,
) -> None:
    """Make the ledger sign a checkpoint now (operator) and show it."""
    with user_errors(as_json), _client(config, org) as c:
        note = c.sign_checkpoint()
    from fedcredit.ledger.checkpoint import Checkpoint, Note

    n = Note.parse(note)
    cp = Checkpoint.parse_text(n.text)
    data = {
        "origin": cp.origin,
        "size": cp.size,
        "root": cp.root.hex(),
        "signers": [s.name for s in n.signatures],
        "note": note,
    }
    output(
        data,
        as_json,
        _checkpoint_table(
            "signed checkpoint", [(k, str(v)) for k, v in data.items() if k != "note"]
        ),
    )


@ledger_app.command("export")
def export_cmd(
    config: ConfigOpt,
    out: Annotated[Path, typer.Option("--out", help="Where to write the export (JSON).")],
    org: Annotated[str, _org_opt("auditor-pboc-weihai", "an auditor")] = "auditor-pboc-weihai",
    as_json: JsonOpt = False,
) -> None:
    """Download entries and checkpoints for offline audit (`fedcredit audit replay`)."""
    with user_errors(as_json), _client(config, org) as c, console.status("exporting"):
        n = c.export(out)
    output({"entries": n, "file": str(out)}, as_json)


@ledger_app.command("bundle")
def bundle_cmd(
    config: ConfigOpt,
    index: Annotated[int, typer.Option("--index", help="The entry index.", min=0)],
    out: Annotated[Path, typer.Option("--out", help="Where to write the proof bundle.")],
    org: Annotated[str, _org_opt("auditor-pboc-weihai", "an auditor")] = "auditor-pboc-weihai",
    as_json: JsonOpt = False,
) -> None:
    """Fetch an offline proof bundle (entry, inclusion path, signed checkpoint) for one entry."""
    from fedcredit.ledger.export import write_atomically

    with user_errors(as_json):
        with _client(config, org) as c:
            b = c.bundle(index)
        write_atomically(out, lambda fp: fp.write(b.to_json()))
    output({"index": b.index, "tree_size": b.tree_size, "file": str(out)}, as_json)


@ledger_app.command("fsck")
def fsck_cmd(
    config: ConfigOpt,
    no_witnesses: Annotated[
        bool, typer.Option("--no-witnesses", help="Do not ask the witnesses what they cosigned.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Recompute every leaf, the chain and the tree from the stored entries; compare them with
    the signed checkpoints and the witnesses' cosigned sizes. Exit 1 names the first bad index."""
    from fedcredit.common.config import load_config
    from fedcredit.ledger.errors import StoreCorrupt, TriggerDisabled, TriggerMissing
    from fedcredit.ledger.fsck_deployment import fsck_deployment

    with user_errors(as_json):
        dep = load_config(config)
        try:
            with console.status("fsck") as st:
                report, down = fsck_deployment(
                    dep,
                    ask_witnesses=not no_witnesses,
                    progress=lambda i: st.update(f"fsck: {i} entries verified"),
                )
        except (StoreCorrupt, TriggerMissing, TriggerDisabled) as exc:
            if as_json:
                print(json.dumps({"verified": False, "error": exc.to_dict()}, indent=2))
            else:
                err_console.print(
                    f"[bold red]FAILED[/]: {exc.reason}: {exc.message}",
                    highlight=False,
                    soft_wrap=True,  # one line, however long
                )
            raise SystemExit(EXIT_VERIFICATION_FAILED) from None
    data = {
        "verified": True,
        "entries": report.size,
        "checkpoints": report.checkpoints,
        "root": report.root.hex(),
        "witnesses": report.witnesses,
        "witnesses_not_answering": down,
        "seconds": round(report.seconds, 3),
    }
    output(
        data,
        as_json,
        _checkpoint_table("ledger store verified", [(k, str(v)) for k, v in data.items()]),
    )


@ledger_app.command("key")
def key_cmd(config: ConfigOpt) -> None:
    """Print the ledger's public key (signed-note vkey), as published in the deployment."""
    from fedcredit.common.config import load_config
    from fedcredit.ledger.keys import log_verifier

    with user_errors():
        print(log_verifier(load_config(config)).vkey)


# --- audit --------------------------------------------------------------------


@audit_app.command("checkpoint")
def audit_checkpoint(
    config: ConfigOpt,
    org: Annotated[str, _org_opt("auditor-pboc-weihai", "an auditor")] = "auditor-pboc-weihai",
    log_key: LogKeyOpt = None,
    witness_key: WitnessKeyOpt = None,
    quorum: QuorumOpt = 0,
    previous: Annotated[
        Path | None,
        typer.Option(
            "--previous", help="A checkpoint saved earlier: prove the new one extends it."
        ),
    ] = None,
    save: Annotated[
        Path | None, typer.Option("--save", help="Write the verified checkpoint here.")
    ] = None,
    max_age: Annotated[
        float | None,
        typer.Option(
            "--max-age",
            help="Seconds the quorum's freshest cosignatures may be old (default: 3 x "
            "(checkpoint_interval + witness_refresh) of the deployment).",
            min=0,
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Fetch the newest checkpoint with --quorum cosignatures; verify its signature, cosignatures,
    freshness (not older than --max-age, not behind a newer one the ledger or a witness reports)
    and (with --previous) consistency."""
    from fedcredit.ledger.audit import check_current, verify_checkpoints
    from fedcredit.ledger.freshness import current_checkpoint

    try:
        trust = _trust(config, log_key, witness_key, quorum)
        with _client(config, org) as c:
            note, sc, newer, limit = current_checkpoint(c, trust, config, org, quorum, max_age)
            age = check_current(sc, quorum=quorum, max_age=limit, newer=newer)
            if previous is not None:
                old_note = previous.read_text()
                old = trust.open(old_note, quorum=0)
                proof = c.consistency_proof(old.size, sc.size) if old.size <= sc.size else []
                verify_checkpoints(old_note, note, proof, trust)
    except FedcreditError as exc:
        _verification_failed(exc, as_json)
    if save is not None:
        save.write_text(note)
    data = {
        "verified": True,
        "origin": sc.checkpoint.origin,
        "size": sc.size,
        "root": sc.root.hex(),
        "cosigned_by": list(sc.cosigned_by),
        "consistent_with_previous": previous is not None,
        "quorum_cosigned_seconds_ago": None if age is None else round(age),
        "newest_reported": newer,
    }
    output(
        data,
        as_json,
        _checkpoint_table("checkpoint verified", [(k, str(v)) for k, v in data.items()]),
    )


@audit_app.command("verify-inclusion")
def verify_inclusion_cmd(
    bundle: Annotated[
        Path, typer.Option("--bundle", help="A proof bundle file (`fedcredit ledger bundle`).")
    ],
    config: OptConfigOpt = None,
    log_key: LogKeyOpt = None,
    witness_key: WitnessKeyOpt = None,
    quorum: QuorumOpt = 0,
    as_json: JsonOpt = False,
) -> None:
    """Verify one entry's inclusion offline: checkpoint signatures, inclusion path, entry format."""
    from fedcredit.ledger.audit import verify_bundle
    from fedcredit.ledger.export import Bundle

    try:
        trust = _trust(config, log_key, witness_key, quorum)
        entry, sc = verify_bundle(Bundle.parse(bundle.read_bytes()), trust)
    except FedcreditError as exc:
        _verification_failed(exc, as_json)
    data = {
        "verified": True,
        "index": entry.index,
        "tree_size": sc.size,
        "kind": entry.kind,
        "actor": entry.actor,
        "subject": entry.subject,
        "time": entry.time,
        "cosigned_by": list(sc.cosigned_by),
    }
    output(
        data,
        as_json,
        _checkpoint_table("entry included", [(k, str(v)) for k, v in data.items()]),
    )


@audit_app.command("verify-consistency")
def verify_consistency_cmd(
    old: Annotated[Path, typer.Option("--old", help="The older signed checkpoint (file).")],
    new: Annotated[Path, typer.Option("--new", help="The newer signed checkpoint (file).")],
    proof: Annotated[
        Path | None,
        typer.Option("--proof", help="A JSON list of base64 hashes; else fetched from the ledger."),
    ] = None,
    config: OptConfigOpt = None,
    org: Annotated[str, _org_opt("auditor-pboc-weihai", "an auditor")] = "auditor-pboc-weihai",
    log_key: LogKeyOpt = None,
    witness_key: WitnessKeyOpt = None,
    quorum: QuorumOpt = 0,
    as_json: JsonOpt = False,
) -> None:
    """Verify that a newer checkpoint extends an older one (RFC 9162 consistency)."""
    import base64

    from fedcredit.ledger.audit import verify_checkpoints
    from fedcredit.ledger.errors import ProofMalformed

    try:
        trust = _trust(config, log_key, witness_key, quorum)
        old_note, new_note = old.read_text(), new.read_text()
        o, n = trust.open(old_note, quorum=0), trust.open(new_note)
        if proof is not None:
            try:
                hashes = [base64.b64decode(h, validate=True) for h in json.loads(proof.read_text())]
            except (ValueError, TypeError) as exc:
                raise ProofMalformed(f"{proof} is not a JSON list of base64 hashes: {exc}") from exc
        elif config is not None:
            with _client(config, org) as c:
                hashes = c.consistency_proof(o.size, n.size) if o.size <= n.size else []
        else:
            raise ConfigError(
                "give --proof FILE or --config to fetch the proof (it is verified, not trusted)"
            )
        verify_checkpoints(old_note, new_note, hashes, trust)
    except FedcreditError as exc:
        _verification_failed(exc, as_json)
    data = {
        "verified": True,
        "old_size": o.size,
        "new_size": n.size,
        "proof_hashes": len(hashes),
    }
    output(data, as_json, _checkpoint_table("consistent", [(k, str(v)) for k, v in data.items()]))


@audit_app.command("replay")
def replay_cmd(
    export: Annotated[
        Path, typer.Option("--export", help="An export file (`fedcredit ledger export`).")
    ],
    config: OptConfigOpt = None,
    log_key: LogKeyOpt = None,
    witness_key: WitnessKeyOpt = None,
    quorum: QuorumOpt = 0,
    checkpoint: Annotated[
        list[Path] | None,
        typer.Option("--checkpoint", help="A checkpoint you trust independently (repeatable)."),
    ] = None,
    fast: Annotated[
        bool,
        typer.Option(
            "--fast",
            help="Skip strict per-entry JSON validation (hashes, chain and roots are still checked).",
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Recompute every leaf, the chain and the tree from an export; compare with the signed checkpoints."""
    from fedcredit.ledger.audit import replay
    from fedcredit.ledger.export import read_export

    try:
        trust = _trust(config, log_key, witness_key, quorum)
        ex = read_export(export)
        with Progress(
            TextColumn("replay"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=err_console,
            transient=True,
            disable=as_json,
        ) as bar:
            task = bar.add_task("replay", total=len(ex.entries))
            report = replay(
                ex,
                trust,
                trusted_checkpoints=[p.read_text() for p in checkpoint or []],
                strict=not fast,
                progress=lambda i: bar.update(task, completed=i),
                workers=None,  # one process per CPU for a big export
            )
    except FedcreditError as exc:
        _verification_failed(exc, as_json)
    data = {
        "verified": True,
        "origin": report.origin,
        "entries": report.entries,
        "checkpoints": report.checkpoints,
        "root": report.root.hex(),
        "cosigned_by": list(report.cosigned_by),
        "strict": report.strict,
        "kinds": report.kinds,
    }
    output(
        data,
        as_json,
        _checkpoint_table("replay verified", [(k, str(v)) for k, v in data.items()]),
    )


@audit_app.command("subject")
def subject_cmd(
    config: ConfigOpt,
    enterprise: Annotated[
        str, typer.Option("--enterprise", help="The enterprise's unified social credit code.")
    ],
    org: Annotated[
        str | None,
        typer.Option("--org", help="Your organisation id; default: the enterprise itself."),
    ] = None,
    log_key: LogKeyOpt = None,
    witness_key: WitnessKeyOpt = None,
    quorum: QuorumOpt = 0,
    as_json: JsonOpt = False,
) -> None:
    """List every ledger entry about one enterprise, each proved against a signed checkpoint."""
    from fedcredit.ledger.audit import verify_subject_entries

    rows: list[Any] = []
    size = 0
    try:
        trust = _trust(config, log_key, witness_key, quorum)
        with _client(config, org or enterprise) as c:
            for page in c.list_by_subject(enterprise, min_cosignatures=quorum):
                sc, entries = verify_subject_entries(
                    enterprise,
                    page.checkpoint,
                    page.tree_size,
                    [
                        (
                            p.entry.index,
                            bytes(p.entry.data),
                            [bytes(h) for h in p.inclusion_proof],
                        )
                        for p in page.entries
                    ],
                    trust,
                )
                size = sc.size
                rows.extend(entries)
    except FedcreditError as exc:
        _verification_failed(exc, as_json)
    data = {
        "enterprise": enterprise,
        "tree_size": size,
        "verified": True,
        "entries": [
            {
                "index": e.index,
                "time": e.time,
                "kind": e.kind,
                "actor": e.actor,
                "payload": e.payload,
            }
            for e in rows
        ],
    }
    t = Table(
        title=f"{len(rows)} ledger entries about {enterprise}, all proved in tree size {size}"
    )
    for col in ("index", "time", "kind", "by", "details"):
        t.add_column(col)
    for e in rows:
        t.add_row(
            str(e.index),
            e.time,
            e.kind,
            e.actor,
            json.dumps(e.payload, ensure_ascii=False)[:80],
        )
    output(data, as_json, t)


@audit_app.command("coverage")
def coverage_cmd(
    export: Annotated[
        Path,
        typer.Option("--export", help="The central ledger's export (`fedcredit ledger export`)."),
    ],
    node_export: Annotated[
        list[Path] | None,
        typer.Option("--node-export", help="A node's disclosure-log export (repeatable)."),
    ] = None,
    node_key: Annotated[
        list[str] | None,
        typer.Option("--node-key", help="A node disclosure log's public key (vkey or file)."),
    ] = None,
    config: OptConfigOpt = None,
    log_key: LogKeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Verify the exports, then prove every access covered by a consent valid at that moment."""
    from fedcredit.ledger.coverage import audit_exports
    from fedcredit.ledger.keys import read_vkey

    try:
        trust = _trust(config, log_key, None, 0)
        keys = [read_vkey(k) for k in node_key or []]
        report = audit_exports(export, trust, node_export or [], keys)
    except FedcreditError as exc:
        _verification_failed(exc, as_json)
    t = Table(
        title=f"{sum(report.accesses.values())} accesses in {report.entries} entries, "
        f"{report.consents} consents: {len(report.uncovered)} not covered"
    )
    for col in ("log", "index", "kind", "enterprise", "reason", "detail"):
        t.add_column(col)
    for u in report.uncovered:
        t.add_row(u.log, str(u.index), u.kind, u.subject or "", u.reason, u.detail)
    output(report.to_dict(), as_json, t)
    if not report.clean:
        raise SystemExit(EXIT_VERIFICATION_FAILED)

"""The auditor's pages: the ledger's newest witnessed checkpoint, its log signature and each
witness's cosignature verified in the browser (``static/portal.js``, WebCrypto Ed25519,
c2sp.org/tlog-cosignature), consistency with a checkpoint the browser saved earlier
(RFC 9162 §2.1.4), and the export download.

What the server sends is only material: the page checks the log's signature with the
log's key, each cosignature with the key the deployment publishes for that witness
(``<deployment dir>/keys/<witness>.witness.vkey``), and shows per witness *verified*
(with the cosignature's time), *failed* (a line under the witness's name and key id whose
signature does not verify: a forged or altered cosignature) or *missing* (no line: the
witness has not cosigned this checkpoint). The keys are shown with their key ids, for an
auditor to compare with the ones it holds from elsewhere.
"""

from __future__ import annotations

import itertools
import logging
import re
from collections.abc import Iterator

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from fedcredit.common.errors import FedcreditError, InvalidArgument, Unavailable
from fedcredit.ledger.checkpoint import Verifier
from fedcredit.ledger.export import export_chunks
from fedcredit.portal.security import Session
from fedcredit.portal.web import Portal, call, delegation, dumps, json_ok, page

log = logging.getLogger(__name__)


class LedgerNotConfigured(Unavailable):
    reason = "LEDGER_NOT_CONFIGURED"


class ExportEmpty(Unavailable):
    reason = "LEDGER_EXPORT_EMPTY"


def witness_rows(vkeys: tuple[str, ...]) -> list[dict[str, str]]:
    """Each published witness key as the page lists it: name, key id, the vkey itself."""
    rows = []
    for vkey in vkeys:
        v = Verifier.parse(vkey)
        rows.append({"name": v.name, "key_id": v.key_id.hex(), "vkey": vkey})
    return rows


def export_filename(origin: str) -> str:
    """``<origin>-export.json`` with only safe characters (``ledger/central`` ->
    ``ledger-central-export.json``)."""
    return (re.sub(r"[^A-Za-z0-9._-]+", "-", origin).strip("-.") or "ledger") + "-export.json"


@page("auditor")
async def audit(portal: Portal, request: Request, s: Session) -> Response:
    got = await call(portal.backend.witnessed_checkpoint)
    doc = dumps(
        {
            "checkpoint": got.note,
            "log_key": got.log_key,
            "witness_keys": list(got.witness_keys),
            "quorum": got.quorum,
            "newest": got.newest,
        }
    )
    return portal.render(
        request,
        s,
        "audit.html",
        checkpoint=doc,
        note=got.note,
        witnesses=witness_rows(got.witness_keys),
        quorum=got.quorum,
        export_file=export_filename(got.note.split("\n", 1)[0]),
    )


@page("auditor")
async def audit_consistency(portal: Portal, request: Request, s: Session) -> Response:
    """The consistency proof from a size the browser saved to a newer one (JSON); the
    browser checks it against the two roots it verified itself."""
    try:
        old = int(request.query_params.get("old", ""))
        new = int(request.query_params.get("new", ""))
    except ValueError:
        raise InvalidArgument("expected whole numbers old and new") from None
    if not 0 < old <= new:
        raise InvalidArgument(f"expected 0 < old <= new, got old={old}, new={new}")
    proof = await call(portal.backend.consistency, old, new)
    return json_ok(portal, s, {"old": old, "new": new, "proof": proof})


@page("auditor")
async def audit_export(portal: Portal, request: Request, s: Session) -> Response:
    """The ledger's export (``fedcredit-ledger-export/v1``, what ``fedcredit ledger export``
    writes and ``fedcredit audit replay`` verifies), streamed to the auditor's browser as
    the ledger sends it. The ledger serves it only under the auditor's delegation ticket;
    a refusal (or any failure before the first byte) is an error page, a failure after it
    breaks the download off (never a shorter file that parses)."""
    ledger = portal.backend.ledger
    if ledger is None:
        raise LedgerNotConfigured("this portal has no ledger configured ([services.ledger])")
    pages = iter(ledger.delegated(await delegation(portal, s, "ledger")).export_pages())
    first = await call(next, pages, None)  # the ledger checks the ticket here
    if first is None:
        raise ExportEmpty("the ledger's export stream sent nothing; try again")
    resp = StreamingResponse(
        _logged(export_chunks(itertools.chain([first], pages)), s.org),
        media_type="application/json",
        headers={"Content-Disposition": f'attachment; filename="{export_filename(first.origin)}"'},
    )
    return portal.finish(resp, s)


def _logged(chunks: Iterator[str], who: str) -> Iterator[str]:
    try:
        yield from chunks
    except FedcreditError as exc:  # headers are sent: the download is cut off, and said so here
        log.warning("the ledger export for %s broke off: %s: %s", who, exc.reason, exc)
        raise


AUDIT_ROUTES = [
    Route("/audit", audit),
    Route("/audit/consistency", audit_consistency),
    Route("/audit/export", audit_export),
]

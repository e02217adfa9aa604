"""The C2SP tlog-witness HTTP protocol (``POST /add-checkpoint``) in front of a Witness.

c2sp.org/tlog-witness: the body is ``old <size>``, one base64 consistency-proof
hash per line, an empty line, then the signed checkpoint; the answer is the
witness's cosignature line(s). Failures, in the protocol's own statuses (v1.0.0):
400 malformed or old size beyond the checkpoint, 404 unknown log, 403 no trusted
signature verifies, 409 with ``text/x.tlog.size`` and the size it last cosigned
when ``old`` is stale, 409 for a different root at the same size, 422 for a
consistency proof that does not verify. Every failure body is one line.

No client certificate: the request carries everything the witness checks (the
log's signature, the proof), which is what lets an outside log or witness operator
use it. The gRPC WitnessService stays for the deployment's own ledger.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
from http.server import BaseHTTPRequestHandler
from typing import Any

from fedcredit.common.httpserve import SideServer
from fedcredit.ledger.errors import (
    CheckpointRollback,
    NoteMalformed,
    ProofSizesInvalid,
    SignatureInvalid,
    UnknownKey,
    VerificationError,
    WitnessConflict,
    WitnessUnknownLog,
)
from fedcredit.ledger.witness import Witness

log = logging.getLogger(__name__)

MAX_BODY = 16 * 1024  # as the Go witness: a checkpoint with its signatures is far smaller
MAX_PROOF_LINES = 63
_OLD = re.compile(r"old (0|[1-9][0-9]{0,19})")


class RequestMalformed(Exception):
    pass


def parse_request(body: bytes) -> tuple[int, list[bytes], str]:
    """(old size, proof hashes, signed checkpoint) of an add-checkpoint body."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RequestMalformed("expected a UTF-8 body") from exc
    head, sep, note = text.partition("\n\n")
    if not sep:
        raise RequestMalformed("expected 'old <size>', proof lines, an empty line, the checkpoint")
    lines = head.split("\n")
    m = _OLD.fullmatch(lines[0])
    if m is None:
        raise RequestMalformed(f"expected the first line 'old <size>'; got {lines[0][:40]!r}")
    if len(lines) - 1 > MAX_PROOF_LINES:
        raise RequestMalformed(
            f"expected at most {MAX_PROOF_LINES} proof lines; got {len(lines) - 1}"
        )
    proof = []
    for n, line in enumerate(lines[1:], 1):
        try:
            h = base64.b64decode(line.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError) as exc:
            raise RequestMalformed(f"proof line {n} is not base64") from exc
        if len(h) != 32:
            raise RequestMalformed(f"proof line {n} is {len(h)} bytes; expected 32")
        proof.append(h)
    return int(m.group(1)), proof, note


class _Handler(BaseHTTPRequestHandler):
    server: WitnessHTTPServer
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # see ledger.tiles_http

    def do_POST(self) -> None:
        if self.path.split("?", 1)[0] != "/add-checkpoint":
            self._send(404, "NOT_FOUND: this witness serves POST /add-checkpoint only\n")
            return
        length = int(self.headers.get("Content-Length") or 0)
        if not 0 < length <= MAX_BODY:
            self._send(400, f"BODY_SIZE: expected 1..{MAX_BODY} bytes; got {length}\n")
            return
        body = self.rfile.read(length)
        try:
            old, proof, note = parse_request(body)
            sig = self.server.witness.add_checkpoint(old, proof, note)
        except RequestMalformed as exc:
            self._send(400, f"REQUEST_MALFORMED: {exc}\n")
        except WitnessConflict as exc:
            size = int(exc.metadata.get("size", "0"))
            self._send(409, f"{size}\n", "text/x.tlog.size")
        except CheckpointRollback as exc:
            self._send(409, f"{exc.reason}: {exc.message}\n")
        except WitnessUnknownLog as exc:
            self._send(404, f"{exc.reason}: {exc.message}\n")
        except (SignatureInvalid, UnknownKey) as exc:
            self._send(403, f"{exc.reason}: {exc.message}\n")
        except (NoteMalformed, ProofSizesInvalid) as exc:
            self._send(400, f"{exc.reason}: {exc.message}\n")
        except VerificationError as exc:  # the consistency proof
            self._send(422, f"{exc.reason}: {exc.message}\n")
        except Exception:
            log.exception("tlog-witness: add-checkpoint failed")
            self._send(500, "INTERNAL: the witness could not record the checkpoint\n")
        else:
            self._send(200, sig.line())

    def _send(self, status: int, text: str, ctype: str = "text/plain; charset=utf-8") -> None:
        data = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("tlog-witness %s " + format, self.client_address[0], *args)


class WitnessHTTPServer(SideServer):
    """Serves ``witness`` at ``host:port`` (port 0 picks one) until :meth:`close`."""

    def __init__(self, witness: Witness, address: str) -> None:
        self.witness = witness
        super().__init__(address, _Handler, name="witness-http")
